"""Faults during a run are recorded for their cell; the matrix goes on; the run ends with a
summary of the failures and exit code 1.

Faulty strategies and hooks are real plugins, added to the process registry next to the
installed ones (``Registry(plugins=...)``), and the run goes through ``tlbench.cli.main``.
"""

from __future__ import annotations

import json
import types

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

import tlbench
from tlbench.cli import main
from tlbench.plugins.registry import Registry, set_registry

NAN_FROM_STEP = 2


class Boom(tlbench.Strategy):
    """Raises inside the training step, as a buggy strategy would."""

    name = "boom"

    def training_step(self, batch, ctx):
        if ctx.step == 1:
            raise ValueError(f"boom at step {ctx.step}")
        return tlbench.StepOutput(F.cross_entropy(ctx.model(batch.source), batch.source_labels))


class OutOfMemory(tlbench.Strategy):
    """Raises what torch raises when the device runs out of memory."""

    name = "oom"

    def training_step(self, batch, ctx):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB\nmore details")


class GoesNaN(tlbench.Strategy):
    """A finite loss until NAN_FROM_STEP, then NaN (the engine checks only every log_every steps)."""

    name = "goes_nan"

    def training_step(self, batch, ctx):
        loss = F.cross_entropy(ctx.model(batch.source), batch.source_labels)
        if ctx.step >= NAN_FROM_STEP:
            loss = loss * float("nan")
        return tlbench.StepOutput(loss)


@tlbench.hookimpl
def register_strategies(register):
    for cls in (Boom, OutOfMemory, GoesNaN):
        register(cls)


@tlbench.hookimpl
def before_cell(cell):
    if cell.label == "before_hook_fails":
        raise RuntimeError("before_cell exploded")


@tlbench.hookimpl
def after_cell(cell, record):
    if cell.label == "after_hook_fails":
        raise KeyError("after_cell exploded")


FAULTS = types.SimpleNamespace(register_strategies=register_strategies, before_cell=before_cell, after_cell=after_cell)

SUITE = """\
name: faults
dataset: sklearn_digits
pairs: [digits->digits+invert]
backbones:
  - name: test_efficientnet
    weights: random
strategies:
  - boom
  - oom
  - goes_nan
  - {name: source_only, label: before_hook_fails, params: {label_smoothing: 0.01}}
  - {name: source_only, label: after_hook_fails, params: {label_smoothing: 0.02}}
  - source_only
seeds: [0]
recipe: {steps: 6, batch_size: 8, image_size: 16, resize_size: 18, hflip: false, eval_batch_size: 512,
         log_every: 5, timing_warmup_steps: 1, source_holdout: 0}
"""


@pytest.fixture
def faulty_registry():
    set_registry(Registry(plugins={"test_faults": FAULTS}))
    yield
    set_registry(None)


@pytest.mark.slow
def test_faults_are_recorded_per_cell_and_the_matrix_goes_on(faulty_registry, tmp_path, capsys):
    suite = tmp_path / "faults.yaml"
    suite.write_text(SUITE)
    out = tmp_path / "out"
    code = main(["run", str(suite), "--out", str(out), "--quiet"])
    captured = capsys.readouterr()
    assert code == 1, captured
    assert "Traceback" not in captured.out + captured.err

    df = pd.read_csv(out / "results.csv").set_index("label")
    assert sorted(df.index) == sorted(
        ["boom", "oom", "goes_nan", "before_hook_fails", "after_hook_fails", "source_only"]
    )
    assert df.loc["source_only", "status"] == "ok"  # the last cell still ran and succeeded
    assert 0 <= df.loc["source_only", "target_acc"] <= 100

    assert df.loc["boom", "status"] == "failed"
    assert df.loc["boom", "error"] == "ValueError: boom at step 1"
    assert df.loc["oom", "status"] == "failed"
    assert df.loc["oom", "error"] == "out of memory: CUDA out of memory. Tried to allocate 20.00 GiB"
    assert df.loc["goes_nan", "status"] == "diverged"
    assert df.loc["goes_nan", "steps"] == NAN_FROM_STEP  # the step it happened, not the step it was noticed
    assert f"non-finite (nan) at step {NAN_FROM_STEP}" in df.loc["goes_nan", "error"]
    assert df.loc["before_hook_fails", "status"] == "failed"
    assert df.loc["before_hook_fails", "error"] == "before_cell hook raised RuntimeError: before_cell exploded"
    assert df.loc["after_hook_fails", "status"] == "failed"
    assert df.loc["after_hook_fails", "error"] == "after_cell hook raised KeyError: 'after_cell exploded'"
    assert pd.isna(df.loc["oom", "target_acc"]) and pd.isna(df.loc["goes_nan", "target_acc"])

    # the summary at the end: counts, then one line per failure
    lines = captured.out.splitlines()
    assert "6 cells: 6 run, 0 already done, 5 failed" in lines
    summary = [line for line in lines if line.startswith("  failed:") or line.startswith("  diverged:")]
    assert len(summary) == 5
    assert (
        "  diverged: test_efficientnet goes_nan digits->digits+invert seed=0: loss became non-finite "
        f"(nan) at step {NAN_FROM_STEP}" in summary
    )
    assert any("oom" in line and "out of memory" in line for line in summary)

    # failures reach the reports too, and every record is valid JSON
    records = [json.loads(p.read_text()) for p in (out / "cells").glob("*/record.json")]
    assert len(records) == 6
    failures = pd.read_csv(out / "failures.csv")
    assert len(failures) == 5


@pytest.mark.slow
def test_failed_cells_are_retried_and_diverged_ones_kept(faulty_registry, tmp_path, capsys):
    """A rerun retries a failed cell (its fault may have been the machine's); a diverged cell is a
    result, kept until --force; the exit code is that of every cell of the matrix."""
    suite = tmp_path / "faults.yaml"
    suite.write_text(SUITE)
    out = tmp_path / "out"
    assert main(["run", str(suite), "--out", str(out), "--quiet", "--strategies", "boom,goes_nan"]) == 1
    capsys.readouterr()
    assert main(["run", str(suite), "--out", str(out), "--quiet", "--strategies", "boom,goes_nan"]) == 1
    assert "2 cells: 1 run, 1 already done, 2 failed" in capsys.readouterr().out
    assert main(["run", str(suite), "--out", str(out), "--quiet", "--strategies", "goes_nan", "--force"]) == 1
    assert "1 cells: 1 run, 0 already done, 1 failed" in capsys.readouterr().out
    assert len(pd.read_csv(out / "results.csv")) == 2
