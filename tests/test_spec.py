"""The data model (tlbench.spec): a typed recipe in every cell, one plan for a run, records with their row label
and sweep point as fields, one failed-record builder, a typed suite summary, tables kept without re-reading."""

from __future__ import annotations

import dataclasses
import json

import pydantic
import pytest

from tests.conftest import TINY_SUITE
from tlbench.errors import UserError
from tlbench.plugins.registry import get_registry
from tlbench.spec import plan as plan_module
from tlbench.spec.loading import load_suite, validate
from tlbench.spec.plan import plan
from tlbench.spec.recipe import RECIPE_KEYS_ADDED_LATER, Recipe
from tlbench.spec.record import RESULT_COLUMNS, CellRecord, failure_record
from tlbench.spec.store import ResultsDir
from tlbench.spec.summary import SuiteSummary, merge_summaries
from tlbench.spec.sweep import SweepPoint

SWEPT = TINY_SUITE.replace(
    "strategies: [source_only, dann]", "strategies: [{name: dann, params: {trade_off: [0.3, 1.0]}, label: d}]"
)


def _plan(tmp_path, text=TINY_SUITE):
    path = tmp_path / "suite.yaml"
    path.write_text(text)
    return plan(load_suite(path), get_registry(), check_data=False)


def test_a_cell_carries_the_whole_typed_recipe_and_its_id_only_the_reduced_form(tmp_path):
    cell = _plan(tmp_path).cells[0]
    assert isinstance(cell.recipe, Recipe) and cell.recipe.steps == 6
    assert cell.recipe.eval_points_images == 1000 and cell.recipe.train_crop == "random_resized"
    reduced = cell.recipe.id_config()
    assert not set(RECIPE_KEYS_ADDED_LATER) & set(reduced)  # at their defaults: out of the id, in the recipe
    assert reduced["resize_size"] == cell.recipe.stored_size == 18
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        cell.recipe.steps = 7  # type: ignore[misc]


def test_a_key_added_later_enters_the_id_only_away_from_its_default(tmp_path):
    base = _plan(tmp_path).cells[0]
    same = _plan(tmp_path, TINY_SUITE.replace("steps: 6", "steps: 6\n  eval_points: 1")).cells[0]
    other = _plan(tmp_path, TINY_SUITE.replace("steps: 6", "steps: 6\n  eval_points: 3")).cells[0]
    assert same.id == base.id and other.id != base.id
    assert other.recipe.id_config()["eval_points"] == 3


def test_the_plan_is_one_object_with_the_dataset_pairs_cells_teachers_and_waves(tmp_path):
    text = TINY_SUITE.replace("strategies: [source_only, dann]", "strategies: [dann, {kd: {teacher_strategy: dann}}]")
    run = _plan(tmp_path, text)
    assert run.pairs == [("digits", "digits+invert")] and run.columns == ["digits->digits+invert"]
    assert run.dataset.name == "sklearn_digits"
    (teacher_id,) = run.teacher_ids
    first, rest = run.waves()
    assert [c.id for c in first] == [teacher_id] and [c.strategy for c in rest] == ["kd"]


def test_a_run_opens_the_dataset_once_for_planning_preflight_and_the_summary(tmp_path, monkeypatch):
    from tlbench.cli import main

    opened = []
    real = plan_module.open_dataset
    monkeypatch.setattr(plan_module, "open_dataset", lambda *a, **k: opened.append(1) or real(*a, **k))
    path = tmp_path / "suite.yaml"
    path.write_text(TINY_SUITE.replace("steps: 6", "steps: 2"))
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--quiet", "--strategies", "source_only"]) == 0
    assert len(opened) == 1  # the workers open their own copy where they train (another process, maybe)
    summary = ResultsDir(tmp_path / "out").read_suite()
    assert summary.name == "tiny" and summary.columns == ["digits->digits+invert"] and summary.expected_cells() == 1


def test_a_record_has_real_fields_for_its_row_label_and_sweep_point(tmp_path):
    cell = next(c for c in _plan(tmp_path, SWEPT).cells if c.params["trade_off"] == 0.3)
    record = failure_record(cell, "failed", "boom", started_at="2026-01-01T00:00:00+00:00")
    assert (record.strategy, record.label) == ("dann", "d")
    assert record.sweep == SweepPoint({"trade_off": 0.3}, default=False, order=0)
    assert "label" not in record.extra and "sweep" not in record.extra
    back = CellRecord.from_dict(json.loads(record.to_json()))
    assert (back.strategy, back.label, back.sweep) == ("dann", "d", record.sweep)
    assert record.row()["label"] == "d" and RESULT_COLUMNS[-1] == "label"


def test_a_record_written_before_label_and_sweep_were_fields_reads_them_from_extra():
    old = {
        "suite": "s",
        "dataset": "d",
        "backbone": "b",
        "strategy": "dann (0.3)",
        "source": "x",
        "target": "y",
        "seed": 0,
        "status": "ok",
        "target_acc": 50.0,
        "extra": {"label": "dann (0.3)", "sweep": {"values": {"trade_off": 0.3}, "default": False, "order": 1}},
    }
    record = CellRecord.from_dict(old)
    assert record.label == "dann (0.3)" and record.sweep == SweepPoint({"trade_off": 0.3}, False, 1)
    bare = CellRecord.from_dict({k: v for k, v in old.items() if k != "extra"})
    assert bare.label == "dann (0.3)" and bare.sweep is None  # the label defaults to what strategy held


def test_a_damaged_sweep_point_counts_as_outside_any_sweep():
    assert SweepPoint.from_dict("not a point") is None
    assert SweepPoint.from_dict({"values": 3, "order": True}) == SweepPoint({}, False, 0)
    assert SweepPoint({}, True, 0).describe() == "default"


def test_the_suite_summary_round_trips_and_reads_a_damaged_file_as_unknown(tmp_path):
    summary = _plan(tmp_path).summary()
    assert SuiteSummary.from_dict(json.loads(summary.to_json())) == summary
    damaged = SuiteSummary.from_dict({"name": 3, "pairs": "A->W", "seeds": [0, "1"], "protocol": None})
    assert damaged.columns is None and damaged.seeds is None and damaged.protocol == ""
    assert damaged.expected_cells() is None
    with pytest.raises(UserError, match=r"suite reference\[0\]: expected a mapping"):
        SuiteSummary.from_dict({"reference": [{"backbone": "r50"}]})


def test_merged_summaries_keep_the_first_and_every_reference_once(tmp_path):
    ref = {"backbone": "r", "strategy": "s", "source": "paper", "acc": {"digits->digits+invert": 50.0}}
    a = SuiteSummary.from_dict({"name": "a", "reference": [ref]})
    b = SuiteSummary.from_dict({"name": "b", "reference": [ref, {**ref, "source": "other"}]})
    merged = merge_summaries([SuiteSummary(), a, b])
    assert merged.name == "a" and [r.source for r in merged.references] == ["paper", "other"]


def test_the_tables_are_kept_current_without_reading_the_records_again(tmp_path, monkeypatch):
    cells = _plan(tmp_path).cells
    out = ResultsDir(tmp_path / "out")
    first = failure_record(cells[0], "failed", "one", started_at="2026-01-01T00:00:01+00:00")
    out.write_record(first)
    out.write_tables()  # the folder's records are read here, once

    def no_rereading(*args, **kwargs):
        raise AssertionError("write_tables read the records again")

    monkeypatch.setattr(ResultsDir, "records", no_rereading)
    monkeypatch.setattr(ResultsDir, "_read", no_rereading)
    second = dataclasses.replace(
        failure_record(cells[1], "failed", "two", started_at="2026-01-01T00:00:00+00:00"), target_acc=float("nan")
    )
    out.write_record(second)
    out.write_tables()
    rows = (tmp_path / "out" / "results.csv").read_text().splitlines()
    assert [r.split(",")[3] for r in rows[1:]] == ["dann", "source_only"]  # by start time, as before
    jsonl = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert [j["error"] for j in jsonl] == ["two", "one"] and jsonl[0]["target_acc"] is None  # as written on disk


def test_a_bad_recipe_value_is_still_one_line_naming_the_key():
    with pytest.raises(UserError, match=r"recipe\.steps"):
        validate(
            {
                "name": "n",
                "dataset": "d",
                "pairs": ["a->b"],
                "backbones": ["x"],
                "strategies": ["s"],
                "recipe": {"steps": 0},
            },
            origin="s.yaml",
        )


def test_reading_a_recipe_or_sweep_point_as_a_dict_still_works_with_a_deprecation_warning(tmp_path):
    cell = next(c for c in _plan(tmp_path, SWEPT).cells if c.params["trade_off"] == 1.0)
    with pytest.warns(DeprecationWarning, match=r"read cell\.recipe\.steps"):
        assert cell.recipe["steps"] == 6
    with pytest.warns(DeprecationWarning):
        assert cell.recipe["resize_size"] == 18  # the stored size, as the dict held it
    with pytest.warns(DeprecationWarning, match=r"read sweep\.default"):
        assert cell.sweep["default"] is True


def test_a_strategy_entry_sets_its_own_recipe_keys_for_its_cells_only(tmp_path):
    text = TINY_SUITE.replace(
        "strategies: [source_only, dann]",
        "strategies: [source_only, {name: dann, recipe: {momentum: 0.0, nesterov: false}}]",
    )
    cells = {c.strategy: c for c in _plan(tmp_path, text).cells}
    assert (cells["dann"].recipe.momentum, cells["dann"].recipe.nesterov) == (0.0, False)
    assert cells["source_only"].recipe.momentum == Recipe().momentum  # the suite's recipe (its default)
    assert cells["dann"].recipe.steps == 6  # the rest is the suite's
    plain = {c.strategy: c for c in _plan(tmp_path).cells}
    assert cells["dann"].id != plain["dann"].id and cells["source_only"].id == plain["source_only"].id


def test_a_strategy_recipe_key_wins_over_the_backbones_and_the_backbones_other_keys_stay(tmp_path):
    text = TINY_SUITE.replace(
        "    weights: random", "    weights: random\n    recipe: {momentum: 0.5, lr: 0.2}"
    ).replace("strategies: [source_only, dann]", "strategies: [source_only, {name: dann, recipe: {momentum: 0.0}}]")
    cells = {c.strategy: c for c in _plan(tmp_path, text).cells}
    assert (cells["dann"].recipe.momentum, cells["dann"].recipe.lr) == (0.0, 0.2)
    assert (cells["source_only"].recipe.momentum, cells["source_only"].recipe.lr) == (0.5, 0.2)


def test_an_unknown_key_in_a_strategy_recipe_names_where_it_is(tmp_path):
    text = TINY_SUITE.replace("strategies: [source_only, dann]", "strategies: [{name: dann, recipe: {momentun: 0.0}}]")
    path = tmp_path / "suite.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=r"strategies.dann.recipe: unknown key\(s\) momentun"):
        load_suite(path)


TWO_PAIRS = """\
name: m
dataset: sklearn_digits
pairs: [digits->digits+invert, digits->digits+rotate:2]
backbones:
{backbones}
strategies: [source_only]
seeds: [0]
recipe: {{steps: 6}}
"""


def test_a_network_listed_once_a_pair_runs_each_pair_with_its_entrys_recipe(tmp_path):
    entries = (
        "  - {name: test_efficientnet, weights: random, pairs: [digits->digits+invert], label: net}\n"
        "  - {name: test_efficientnet, weights: random, pairs: ['digits->digits+rotate:2'], label: net,"
        " recipe: {lr: 0.1}}"
    )
    cells = _plan(tmp_path, TWO_PAIRS.format(backbones=entries)).cells
    assert sorted((c.target, c.recipe.lr) for c in cells) == [("digits+invert", 0.01), ("digits+rotate:2", 0.1)]
    assert {c.backbone_label for c in cells} == {"net"}  # one leaderboard row


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        (
            "  - {name: test_efficientnet, weights: random, pairs: [digits->digits+invert]}\n"
            "  - {name: test_efficientnet, weights: random}",
            "listed twice: test_efficientnet \\(list a network more than once only with its own pairs",
        ),
        (
            "  - {name: test_efficientnet, weights: random, pairs: [digits->digits+invert]}\n"
            "  - {name: test_efficientnet, weights: random, pairs: [digits->digits+invert]}",
            "test_efficientnet: pair\\(s\\) digits->digits\\+invert in two of its entries",
        ),
    ],
)
def test_a_network_listed_twice_must_give_each_pair_to_one_entry(tmp_path, entries, message):
    path = tmp_path / "suite.yaml"
    path.write_text(TWO_PAIRS.format(backbones=entries))
    with pytest.raises(UserError, match=message):
        load_suite(path)
