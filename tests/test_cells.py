"""Cells: stable ids, the matrix, and kd teachers as dependencies."""

from __future__ import annotations

import pytest

from tlbench.errors import UserError
from tlbench.plugins.registry import get_registry
from tlbench.spec.expand import expand_cells, resolve_pairs
from tlbench.spec.loading import load_suite
from tlbench.spec.plan import Plan

SUITE = """\
name: m
dataset: sklearn_digits
pairs: [digits->digits+invert, digits->digits+rotate:2]
backbones: [test_efficientnet, test_resnet]
strategies:
  - source_only
  - dann
  - kd: {teacher_backbone: test_resnet, teacher_strategy: dann}
seeds: [0, 1]
"""


def cells_of(tmp_path, text=SUITE, **narrow):
    p = tmp_path / "m.yaml"
    p.write_text(text)
    suite = load_suite(p, **narrow)
    reg = get_registry()
    dataset = reg.get("dataset", suite.dataset)(None)
    return expand_cells(suite, reg, resolve_pairs(suite, dataset))


def test_matrix_size_and_teachers_are_matrix_cells(tmp_path):
    cells = cells_of(tmp_path)
    # 2 backbones x 3 strategies x 2 pairs x 2 seeds; every kd teacher (test_resnet, dann) is already a cell.
    assert len(cells) == 24
    kd = [c for c in cells if c.strategy == "kd"]
    assert len(kd) == 8
    ids = {c.id for c in cells}
    for c in kd:
        assert c.teacher.id in ids
        assert (c.teacher.backbone, c.teacher.strategy, c.teacher.source, c.teacher.seed) == (
            "test_resnet",
            "dann",
            c.source,
            c.seed,
        )


def test_teacher_trained_once_and_first(tmp_path):
    cells = cells_of(tmp_path)
    first, rest = Plan(suite=None, dataset=None, pairs=[], cells=cells).waves()
    assert {c.id for c in first} == {c.teacher.id for c in cells if c.teacher}
    assert len(first) == 4  # one teacher per (pair, seed), shared by both students' backbones
    assert not {c.id for c in first} & {c.id for c in rest}


def test_teacher_outside_the_matrix_is_added(tmp_path):
    cells = cells_of(tmp_path, strategies=["kd"], backbones=["test_efficientnet"])
    assert len(cells) == 4 + 4  # 4 students, and their 4 teachers added
    assert {c.strategy for c in cells} == {"kd", "dann"}


def test_ids_are_stable_and_depend_on_config(tmp_path):
    a = {c.describe(): c.id for c in cells_of(tmp_path)}
    b = {c.describe(): c.id for c in cells_of(tmp_path)}
    assert a == b
    c = {c.describe(): c.id for c in cells_of(tmp_path, overrides=["recipe.steps=5"])}
    assert set(a.values()).isdisjoint(c.values())


def test_pair_errors(tmp_path):
    with pytest.raises(UserError, match="bad pair 'digits=>digits'"):
        cells_of(tmp_path, pairs=["digits=>digits"])
    with pytest.raises(UserError, match="no domain 'mnist'; valid: digits"):
        cells_of(tmp_path, pairs=["mnist->digits"])
    with pytest.raises(UserError, match="source and target are the same domain"):
        cells_of(tmp_path, pairs=["digits->digits"])


def test_unknown_strategy_param(tmp_path):
    with pytest.raises(UserError, match=r"strategies\.dann\.params: unknown parameter\(s\) trade_of"):
        cells_of(tmp_path, SUITE.replace("  - dann\n", "  - dann: {trade_of: 1}\n"))
