"""Installed, the package's plugins appear in tlbench and run in a suite next to the built-ins."""

from __future__ import annotations

import importlib.metadata as md
from pathlib import Path

import pandas as pd
import pytest
from test_csv_images import write_csv, write_image

from tlbench.testing import run_cli

installed = pytest.mark.skipif(
    not any(ep.value.startswith("tlbench_minent") for ep in md.entry_points(group="tlbench")),
    reason="tlbench-minent is not installed (pip install -e plugins/examples/tlbench-minent): "
    "tlbench finds plugins through installed entry points only",
)


@installed
def test_entry_points_register_every_plugin(capsys):
    for kind, name, plugin in (
        ("strategies", "minent", "tlbench_minent.minent"),
        ("datasets", "csv_images", "tlbench_minent.csv_images"),
    ):
        assert run_cli(["list", kind, name]) == 0
        assert capsys.readouterr().out.split()[:2] == [name, plugin]
    assert run_cli(["list", "backbones", "minent_cnn*"]) == 0
    assert capsys.readouterr().out.split() == ["minent_cnn", "minent_nets"]


@installed
def test_a_csv_suite_ranks_minent_next_to_source_only(tmp_path: Path):
    for d, domain in enumerate(("day", "night")):
        rows = []
        for label in ("a", "b", "c"):
            for i in range(6):
                name = f"images/{domain}/{label}{i}.png"
                write_image(tmp_path / "data" / name, (40 * "abc".index(label) + 7 * i + 90 * d) % 256, size=12)
                rows.append((name, label))
        write_csv(tmp_path / "data" / f"{domain}.csv", rows)
    suite = tmp_path / "suite.yaml"
    suite.write_text(f"""\
name: csv_minent
dataset: csv_images
dataset_options: {{path: {tmp_path / "data"}}}
pairs: [day->night]
backbones: [{{name: test_efficientnet, weights: random}}, {{name: minent_cnn, weights: random}}]
strategies: [source_only, minent]
recipe: {{steps: 4, batch_size: 6, image_size: 12, resize_size: 12, hflip: false, log_every: 2,
          timing_warmup_steps: 1, source_holdout: 0.2}}
""")
    out = tmp_path / "out"
    code = run_cli(["run", str(suite), "--out", str(out), "--cache", str(tmp_path / "cache"), "--quiet"])
    assert code == 0
    df = pd.read_csv(out / "results.csv")
    assert sorted(df["strategy"]) == ["minent", "minent", "source_only", "source_only"]
    assert sorted(set(df["backbone"])) == ["minent_cnn", "test_efficientnet"]
    assert (df["status"] == "ok").all() and (df["dataset"] == "csv_images").all()
    assert (df["source"] == "day").all() and (df["target"] == "night").all()
    assert df["target_acc"].between(0, 100).all()
    assert "minent" in (out / "leaderboard.md").read_text()
