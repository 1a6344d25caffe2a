"""End to end: `tlbench run` of a tiny suite, resume, force, exit codes, the files it leaves."""

from __future__ import annotations

import json
import types

import pandas as pd
import pytest

import tlbench
from tlbench.cli import main
from tlbench.plugins.registry import Registry, set_registry
from tlbench.spec.record import RESULT_COLUMNS


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    from conftest import run_tiny_suite

    return run_tiny_suite(tmp_path_factory.mktemp("e2e"))


@pytest.mark.slow
def test_run_writes_every_cell_once_with_exact_columns(finished_run):
    _, out, code = finished_run
    assert code == 0
    df = pd.read_csv(out / "results.csv")
    assert tuple(df.columns) == RESULT_COLUMNS
    assert sorted(df["strategy"]) == ["dann", "source_only"]
    assert (df["status"] == "ok").all()
    assert df["cell_id"].is_unique
    assert df["target_acc"].between(0, 100).all() and df["source_acc"].between(0, 100).all()
    assert (df["train_img_per_s"] > 0).all() and (df["peak_mem_mb"] > 0).all()
    assert (df["trainable_params"] <= df["total_params"]).all()
    assert (df["steps"] == 6).all() and (df["target"] == "digits+invert").all()
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert {r["extra"]["deterministic"] for r in records} == {True}
    assert (out / "leaderboard.md").read_text().count("source_only") >= 1


@pytest.mark.slow
def test_resume_skips_finished_cells(finished_run, capsys):
    suite, out, _ = finished_run
    before = (out / "results.csv").read_text()
    assert main(["run", str(suite), "--out", str(out), "--quiet"]) == 0
    assert "2 cells: 0 run, 2 already done, 0 failed" in capsys.readouterr().out
    assert (out / "results.csv").read_text() == before


@pytest.mark.slow
def test_narrowing_reruns_nothing_it_has(finished_run, capsys):
    suite, out, _ = finished_run
    assert main(["run", str(suite), "--out", str(out), "--quiet", "--strategies", "dann"]) == 0
    assert "1 cells: 0 run, 1 already done" in capsys.readouterr().out


@pytest.mark.slow
def test_same_seed_same_numbers_on_cpu(finished_run, tmp_path):
    suite, out, _ = finished_run
    again = tmp_path / "again"
    assert main(["run", str(suite), "--out", str(again), "--quiet", "--strategies", "source_only"]) == 0
    a = pd.read_csv(out / "results.csv").set_index("cell_id")
    b = pd.read_csv(again / "results.csv").set_index("cell_id")
    (cid,) = b.index
    assert a.loc[cid, "target_acc"] == b.loc[cid, "target_acc"]
    assert a.loc[cid, "source_acc"] == b.loc[cid, "source_acc"]


class _Overflows(tlbench.Strategy):
    """Source cross-entropy scaled until it overflows float32 (what too large a learning rate does)."""

    name = "overflows"

    def training_step(self, batch, ctx):
        out = self.supervised_step(batch, ctx)
        return tlbench.StepOutput(out.loss * 1e30 * 1e30, out.metrics)


@pytest.fixture
def overflowing_registry():
    registry = Registry()
    registry.add_plugin(
        "overflows", types.SimpleNamespace(register_strategies=tlbench.hookimpl(lambda register: register(_Overflows)))
    )
    set_registry(registry)
    yield
    set_registry(None)


def test_failing_cell_is_recorded_and_exit_code_is_1(overflowing_registry, tiny_suite, tmp_path, capsys):
    out = tmp_path / "o"
    # a loss that overflows: the cell is recorded as diverged, the run goes on (an lr of 1e30, which
    # once did this, is now refused before training: recipe.lr is at most 10)
    code = main(
        [
            "run",
            str(tiny_suite),
            "--out",
            str(out),
            "--quiet",
            "--strategies",
            "overflows",
            "--set",
            "recipe.log_every=1",
        ]
    )
    assert code == 1
    df = pd.read_csv(out / "results.csv")
    assert df.loc[0, "status"] == "diverged"
    assert "non-finite" in df.loc[0, "error"]
    assert "failed" in capsys.readouterr().out


def test_bad_input_is_exit_2_with_one_line(tiny_suite, tmp_path, capsys):
    code = main(["run", str(tiny_suite), "--out", str(tmp_path / "o"), "--strategies", "dnan"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1] == "tlbench: error: unknown strategy 'dnan'; did you mean dann, cdan?"


def test_data_prepare_fills_the_cache(tiny_suite, tmp_path, capsys):
    cache = tmp_path / "cache"
    assert main(["data", "prepare", str(tiny_suite), "--cache", str(cache)]) == 0
    out = capsys.readouterr().out
    assert "digits: 1797 images, 10 classes, 18px" in out
    assert "digits+invert: 1797 images, 10 classes, 18px" in out
    assert list((cache / "domains").rglob("*.pt")), "the decoded domain was not written to the cache"


def test_data_prepare_decodes_every_size_the_cells_read(tmp_path, capsys):
    """A backbone's own recipe with another stored size is prepared at that size too."""
    from conftest import TINY_SUITE

    suite = tmp_path / "two_sizes.yaml"
    suite.write_text(
        TINY_SUITE.replace(
            "  - name: test_efficientnet\n    weights: random\n",
            "  - name: test_efficientnet\n    weights: random\n"
            "  - {name: test_resnet, weights: random, recipe: {image_size: 20, resize_size: 22}}\n",
        )
    )
    assert main(["data", "prepare", str(suite), "--cache", str(tmp_path / "cache")]) == 0
    out = capsys.readouterr().out
    for size in (18, 22):
        assert f"digits: 1797 images, 10 classes, {size}px" in out
        assert f"digits+invert: 1797 images, 10 classes, {size}px" in out


def test_list_filters_with_wildcards(capsys):
    assert main(["list", "strategies", "*m*"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert "mmd" in names and "dann" not in names and "freeze" not in names
    assert main(["list", "backbones", "tf_efficientnet_lite*"]) == 0
    assert "tf_efficientnet_lite0" in capsys.readouterr().out.split()


@pytest.mark.slow
def test_compiled_backbone_trains_to_the_same_result(tiny_suite, tmp_path):
    """recipe.compile: the backbone goes through torch.compile (inductor; about a minute on a CPU)."""
    plain, compiled = tmp_path / "plain", tmp_path / "compiled"
    args = ["run", str(tiny_suite), "--quiet", "--strategies", "source_only"]
    assert main(args + ["--out", str(plain)]) == 0
    assert main(args + ["--out", str(compiled), "--set", "recipe.compile=true"]) == 0
    a = json.loads((plain / "results.jsonl").read_text())
    b = json.loads((compiled / "results.jsonl").read_text())
    assert (a["extra"]["compiled"], b["extra"]["compiled"]) == (False, True)
    assert b["status"] == "ok"
    # Same seed, same data: compiled kernels may round differently, not learn differently.
    assert abs(a["target_acc"] - b["target_acc"]) <= 2.0


def test_a_run_without_out_writes_to_runs_never_to_results(tiny_suite, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results").mkdir()  # as in the repository: committed leaderboards live here
    assert main(["run", str(tiny_suite), "--quiet", "--strategies", "source_only", "--set", "recipe.steps=2"]) == 0
    assert (tmp_path / "runs" / "tiny" / "results.csv").is_file()
    assert list((tmp_path / "results").iterdir()) == []
