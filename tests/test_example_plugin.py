"""The example third-party package (plugins/examples/tlbench-minent), installed, runs next to the built-ins.

CI installs it with ``pip install --no-build-isolation --no-deps -e plugins/examples/tlbench-minent``;
without it these tests skip, saying so.
"""

from __future__ import annotations

import importlib.metadata as md
import json
from pathlib import Path

import pandas as pd
import pytest

from tlbench.cli import main
from tlbench.plugins.registry import get_registry

EXAMPLE = Path(__file__).resolve().parents[1] / "plugins" / "examples" / "tlbench-minent"
SUITE = EXAMPLE / "suites" / "minent_tiny.yaml"

pytestmark = pytest.mark.skipif(
    not any(ep.value.startswith("tlbench_minent") for ep in md.entry_points(group="tlbench")),
    reason="the example package tlbench-minent is not installed; install it with "
    "pip install --no-build-isolation --no-deps -e plugins/examples/tlbench-minent",
)


def test_it_appears_in_plugins_and_lists(capsys):
    main(["plugins"])  # the exit code reflects every installed plugin, not only this one
    lines = capsys.readouterr().out.splitlines()
    ours = [line for line in lines if line.startswith("tlbench_minent.")]
    assert len(ours) == 3 and all(" ok " in line and "tlbench-minent 0.1.0" in line for line in ours)
    assert any("strategy: minent" in line for line in ours) and any("dataset: csv_images" in line for line in ours)
    assert any("backbone: minent_nets" in line for line in ours)  # its third-party backbone provider
    assert main(["list", "strategies", "mi*"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert ["minent", "tlbench_minent.minent"] in [line.split()[:2] for line in listed]
    assert main(["list", "datasets", "csv_*"]) == 0
    assert capsys.readouterr().out.split()[:2] == ["csv_images", "tlbench_minent.csv_images"]


def test_no_installed_package_but_tlbench_registers_coral():
    """Deep CORAL moved from the example package into the built-ins: a third party registering ``coral``
    would take the bare name from the built-in (tests/test_name_clash.py), so none may."""
    registry = get_registry()
    owners = {registry.plugins[entry.plugin].module for entry in registry.registrations("strategy", "coral")}
    assert owners == {"tlbench_builtins.strategies.coral"}


@pytest.mark.slow
def test_its_suite_runs_minent_next_to_source_only(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", str(SUITE), "--out", str(out), "--quiet"]) == 0
    assert "2 cells: 2 run, 0 already done, 0 failed" in capsys.readouterr().out
    df = pd.read_csv(out / "results.csv").set_index("strategy")
    assert sorted(df.index) == ["minent", "source_only"]
    assert (df["status"] == "ok").all() and (df["target"] == "digits+invert").all()
    assert df["target_acc"].between(0, 100).all() and (df["steps"] == 6).all()
    assert df.loc["minent", "trainable_params"] == df.loc["source_only", "trainable_params"]  # no module of its own
    extra = {r["strategy"]: r["extra"] for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert extra["minent"]["target_entropy"] > 0 and "target_entropy" not in extra["source_only"]  # its term was logged
    board = (out / "leaderboard.md").read_text()
    assert "minent" in board and "source_only" in board
