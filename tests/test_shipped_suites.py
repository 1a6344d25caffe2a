"""The suites shipped in suites/ are valid: every name resolves and the matrix expands.

A typo in a committed suite (a renamed strategy, a recipe key that no longer exists) would otherwise
surface only when a user runs it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import ROOT, SHARED_DATA  # tests/ is on sys.path (pytest rootdir conftest)

from tlbench.errors import WeightsUnavailableError
from tlbench.plugins.registry import get_registry
from tlbench.spec.loading import load_suite
from tlbench.spec.plan import plan

SUITES = sorted((ROOT / "suites").glob("*.yaml"))


def test_there_are_suites_to_check():
    assert {p.name for p in SUITES} >= {"quickstart.yaml", "digits.yaml", "digits_lite0.yaml", "office31.yaml"}


def _my_images(folder: Path) -> list[str]:
    """The template for a user's own folder, pointed at a tiny one with train/ and test/."""
    from PIL import Image

    for part in ("train", "test"):
        for cls in ("cat", "dog"):
            (folder / part / cls).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (4, 4)).save(folder / part / cls / f"{i}.png")
    return [f"dataset_options.path={folder}"]


@pytest.mark.parametrize("path", SUITES, ids=lambda p: p.name)
def test_suite_validates_and_expands(path: Path, tmp_path: Path):
    has_data = SHARED_DATA.is_dir()  # without it, names and the matrix are still checked; the files are not
    overrides = _my_images(tmp_path / "my_images") if path.name == "my_images.yaml" else []
    suite = load_suite(path, data_root=str(SHARED_DATA), overrides=overrides)
    try:
        planned = plan(suite, get_registry(), check_data=has_data)
        cells, pairs = planned.cells, planned.pairs
    except WeightsUnavailableError as exc:
        # Weights are checked last, once every name resolved and the matrix expanded: office31's
        # ResNet-50 has no offline weights on a machine without internet. The rest of it must plan.
        missing = [b for b in suite.backbones if repr(b.name) in str(exc)]
        assert missing and len(missing) < len(suite.backbones), str(exc)
        suite.backbones = [b for b in suite.backbones if b not in missing]
        planned = plan(suite, get_registry(), check_data=has_data)
        cells, pairs = planned.cells, planned.pairs
    runs = sum(len(b.pairs) if b.pairs is not None else len(pairs) for b in suite.backbones)  # backbone x pair
    expected = runs * len(suite.strategies) * len(suite.seeds)
    assert pairs
    assert len({c.id for c in cells}) >= expected  # kd's teachers may add cells, never remove any


#: committed leaderboards of timm suites -> the suite, and how it was narrowed, that made them
COMMITTED = {
    "quickstart": ("quickstart.yaml", {}),
    "digits_3seeds": ("digits_lite0.yaml", {"seeds": [0, 1, 2]}),
    "digits_all8": (
        "digits_lite0.yaml",
        {"strategies": ["source_only", "freeze", "unfreeze", "dlr", "dann", "mmd", "self_training", "kd"]},
    ),
    "office31": ("office31.yaml", {"backbones": ["tf_efficientnet_lite0"], "strategies": ["freeze"]}),
}


@pytest.mark.parametrize("folder", sorted(COMMITTED))
def test_timm_suites_plan_the_cells_of_their_committed_leaderboards(folder):
    """Backbones as plugins changed how names resolve, not what a timm cell is: every committed
    cell id (made before the change) is still one of the cells its suite plans."""
    committed = {p.name for p in (ROOT / "results" / folder / "cells").iterdir()}
    name, narrow = COMMITTED[folder]
    suite = load_suite(ROOT / "suites" / name, data_root=str(SHARED_DATA), **narrow)
    cells = plan(suite, get_registry(), check_data=False).cells
    assert committed and committed <= {c.id for c in cells}


def test_the_committed_digits_leaderboard_is_exactly_what_its_suite_plans():
    """results/digits holds the cells of suites/digits.yaml at seeds 0, 1, 2, no more and no fewer: a
    recipe changed in the suite without its cells retrained (or left over from an earlier recipe) fails."""
    committed = {p.name for p in (ROOT / "results" / "digits" / "cells").iterdir()}
    suite = load_suite(ROOT / "suites" / "digits.yaml", data_root=str(SHARED_DATA), seeds=[0, 1, 2])
    cells = plan(suite, get_registry(), check_data=False).cells
    assert committed == {c.id for c in cells}


def test_the_digits_suite_narrowed_to_one_pair_plans_only_its_network(tmp_path):
    """``--pairs`` narrows a suite whose backbones name their own pairs: only the network of that pair runs."""
    suite = load_suite(ROOT / "suites" / "digits.yaml", pairs=["mnist->usps"], data_root=str(tmp_path))
    planned = plan(suite, get_registry(), check_data=False)
    cells, pairs = planned.cells, planned.pairs
    assert pairs == [("mnist", "usps")]
    assert {c.backbone for c in cells} == {"lenet"} and {c.pair for c in cells} == {"mnist->usps"}
