"""The suites shipped in suites/ are valid: every name resolves and the matrix expands.

A typo in a committed suite (a renamed strategy, a recipe key that no longer exists) would otherwise
surface only when a user runs it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tlbench.errors import WeightsUnavailableError
from tlbench.plugins.registry import get_registry
from tlbench.matrix.planning import plan
from tlbench.matrix.suite import load_suite

from conftest import ROOT, SHARED_DATA  # tests/ is on sys.path (pytest rootdir conftest)

SUITES = sorted((ROOT / "suites").glob("*.yaml"))


def test_there_are_suites_to_check():
    assert {p.name for p in SUITES} >= {"quickstart.yaml", "digits.yaml", "office31.yaml"}


@pytest.mark.parametrize("path", SUITES, ids=lambda p: p.name)
def test_suite_validates_and_expands(path: Path):
    has_data = SHARED_DATA.is_dir()  # without it, names and the matrix are still checked; the files are not
    suite = load_suite(path, data_root=str(SHARED_DATA))
    try:
        cells, pairs = plan(suite, get_registry(), check_data=has_data)
    except WeightsUnavailableError as exc:
        # Weights are checked last, once every name resolved and the matrix expanded: office31's
        # ResNet-50 has no offline weights on a machine without internet. The rest of it must plan.
        missing = [b for b in suite.backbones if repr(b.name) in str(exc)]
        assert missing and len(missing) < len(suite.backbones), str(exc)
        suite.backbones = [b for b in suite.backbones if b not in missing]
        cells, pairs = plan(suite, get_registry(), check_data=has_data)
    expected = len(suite.backbones) * len(suite.strategies) * len(pairs) * len(suite.seeds)
    assert pairs
    assert len({c.id for c in cells}) >= expected  # kd's teachers may add cells, never remove any
