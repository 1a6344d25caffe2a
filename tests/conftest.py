"""Shared fixtures: where the real data is, a private cache, tiny suites."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("TLBENCH_TEST_DATA") or ROOT.parent / "shared" / "datasets")

# One thread: tests are tiny, and two threads spin against any other busy process on a 2-core machine.
torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Tests never write to the user's cache: one cache for the whole session."""
    cache = tmp_path_factory.mktemp("tlbench-cache")
    old = os.environ.get("TLBENCH_CACHE")
    os.environ["TLBENCH_CACHE"] = str(cache)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache / "inductor"))  # timm creates it on first use
    yield cache
    if old is None:
        os.environ.pop("TLBENCH_CACHE", None)
    else:
        os.environ["TLBENCH_CACHE"] = old


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "office31").is_dir() and not (SHARED_DATA / "digits").is_dir():
        pytest.skip(f"real datasets not found at {SHARED_DATA} (set TLBENCH_TEST_DATA to the shared/datasets folder)")
    return SHARED_DATA


TINY_SUITE = """\
name: tiny
dataset: sklearn_digits
pairs: [digits->digits+invert]
backbones:
  - name: test_efficientnet
    weights: random
strategies: [source_only, dann]
seeds: [0]
recipe:
  steps: 6
  batch_size: 8
  image_size: 16
  resize_size: 18
  hflip: false
  eval_batch_size: 512
  log_every: 3
  timing_warmup_steps: 1
"""


@pytest.fixture
def tiny_suite(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_SUITE)
    return path


def run_tiny_suite(root: Path, *args: str) -> tuple[Path, Path, int]:
    """Write the tiny suite into ``root`` and run it there: (suite file, output folder, exit code)."""
    from tlbench.cli import main

    suite = root / "tiny.yaml"
    suite.write_text(TINY_SUITE)
    out = root / "out"
    return suite, out, main(["run", str(suite), "--out", str(out), "--quiet", *args])


def train_few_steps(strategy, model, steps: int = 3, lr: float = 0.5) -> None:
    """A few plain-SGD steps of a one-update, source-only strategy as the engine takes them: only the
    declared groups train, frozen BatchNorms in eval mode (for tests of what a strategy lets move)."""
    from tlbench import StepContext
    from tlbench.models.transfer import set_batchnorm_eval_where_frozen
    from tlbench.testing import apply_engine_trainability, make_tiny_batch

    groups = strategy.param_groups(model)
    apply_engine_trainability([model, strategy], groups, 0, steps)
    model.train()
    set_batchnorm_eval_where_frozen(model)
    optimizer = torch.optim.SGD([p for g in groups for p in g.params], lr=lr)
    for step in range(steps):
        ctx = StepContext(
            step=step, total_steps=steps, model=model, device=torch.device("cpu"), num_classes=model.num_classes
        )
        optimizer.zero_grad()
        strategy.training_step(make_tiny_batch((), seed=step), ctx).loss.backward()
        optimizer.step()


def cell_task(tmp_path: Path, cell, **kw):
    """A CPU ``CellTask`` for ``cell`` writing under ``tmp_path`` (out/, cache/), without progress bars."""
    from tlbench.spec.cell import CellTask

    return CellTask(
        cell=cell,
        out_dir=str(tmp_path / "out"),
        data_root=None,
        cache_dir=str(tmp_path / "cache"),
        device="cpu",
        show_progress=False,
        **kw,
    )
