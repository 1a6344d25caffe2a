"""Sweeps in a suite: lists expand to the product, a suite without lists keeps its cell ids."""

from __future__ import annotations

import pytest
import yaml

from tests.conftest import TINY_SUITE
from tlbench.errors import UserError
from tlbench.plugins.registry import get_registry
from tlbench.spec.loading import validate
from tlbench.spec.plan import plan


def _cells(**changes):
    data = yaml.safe_load(TINY_SUITE)
    data["recipe"].update(changes.pop("recipe", {}))
    data.update(changes)
    return plan(validate(data, origin="tiny.yaml"), get_registry(), check_data=False).cells


def test_a_suite_without_lists_keeps_its_cell_ids_and_has_no_sweep():
    before = _cells()
    assert [c.id for c in before] == ["5203fa296e885935", "2f59ec22579ea36d"]  # the ids before sweeps existed
    assert [c.id for c in _cells(recipe={"eval_points": 1})] == [c.id for c in before]
    assert all(c.sweep is None for c in before)
    assert len({c.id for c in _cells(recipe={"eval_points": 5})} & {c.id for c in before}) == 0


def test_strategy_and_recipe_lists_expand_to_their_product():
    cells = _cells(strategies=[{"dann": {"trade_off": [0.1, 0.3, 1.0]}}], recipe={"lr": [0.003, 0.01]})
    assert len(cells) == 6 and len({c.id for c in cells}) == 6
    assert {(c.params["trade_off"], c.recipe.lr) for c in cells} == {
        (t, lr) for t in (0.1, 0.3, 1.0) for lr in (0.003, 0.01)
    }
    assert {c.label for c in cells} == {"dann"}
    (default,) = [c for c in cells if c.sweep.default]
    assert default.params["trade_off"] == 1.0 and default.recipe.lr == 0.01
    assert sorted(c.sweep.order for c in cells) == list(range(6))


def test_a_sequence_key_is_swept_by_a_list_of_lists():
    assert len(_cells(strategies=["source_only"], recipe={"crop_scale": [0.5, 1.0]})) == 1
    cells = _cells(strategies=["source_only"], recipe={"crop_scale": [[0.5, 1.0], [0.08, 1.0]]})
    assert sorted(c.recipe.crop_scale[0] for c in cells) == [0.08, 0.5]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"strategies": [{"dann": {"trade_off": []}}]}, "empty list"),
        ({"strategies": [{"dann": {"trade_off": [0.1, 0.1]}}]}, "twice"),
        ({"recipe": {"lr": [0.01, -1]}}, "recipe.lr"),
    ],
)
def test_a_bad_sweep_is_one_line_naming_the_key(change, message):
    with pytest.raises(UserError, match=message):
        _cells(**change)


def test_an_unknown_selection_is_refused_before_any_work():
    with pytest.raises(UserError, match="validator"):
        _cells(selection="sdn")
