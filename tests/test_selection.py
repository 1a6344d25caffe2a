"""Selection from stored checkpoint evaluations: the oracle finds the best, `last` is today's behaviour,
and a report re-selects exactly what the run selected."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import yaml

from tests.conftest import TINY_SUITE
from tlbench.plugins.registry import get_registry
from tlbench.reporting.selection import LAST, LAST_ROW, select
from tlbench.spec.evaluations import CheckpointEvaluations
from tlbench.spec.record import CellRecord
from tlbench.spec.store import ResultsDir


def _validators():
    registry = get_registry()
    return {n: registry.get("validator", n)() for n in registry.names("validator")}


def _record(cell_id, seed, target_acc, order=None, default=False, strategy="dann", started="2025-01-01"):
    extra = {"label": strategy}
    if order is not None:
        extra["sweep"] = {"values": {"trade_off": [0.1, 0.3, 1.0][order]}, "default": default, "order": order}
    return CellRecord(
        suite="s",
        dataset="d",
        backbone="b",
        strategy=strategy,
        source="x",
        target="y",
        seed=seed,
        status="ok",
        target_acc=target_acc,
        steps=30,
        cell_id=cell_id,
        started_at=started,
        extra=extra,
    )


def _evaluations(rng, accs):
    k, nt, ns, c = len(accs), 20, 10, 3
    return CheckpointEvaluations(
        steps=np.arange(1, k + 1) * 10,
        target_acc=np.asarray(accs, dtype=np.float64),
        target_logits=rng.normal(size=(k, nt, c)).astype(np.float16),
        target_embed=rng.normal(size=(k, nt, 4)).astype(np.float16),
        source_logits=rng.normal(size=(k, ns, c)).astype(np.float16),
        source_embed=rng.normal(size=(k, ns, 4)).astype(np.float16),
        source_labels=rng.integers(0, c, ns),
    )


@pytest.fixture
def sweep():
    """Two seeds × three swept values, five checkpoints each (random outputs, known accuracies)."""
    rng = np.random.default_rng(0)
    records, stored = [], {}
    for seed in (0, 1):
        for order in range(3):
            accs = rng.uniform(10, 90, 5).round(1)
            cid = f"s{seed}o{order}"
            records.append(_record(cid, seed, float(accs[-1]), order=order, default=order == 2))
            stored[cid] = _evaluations(rng, accs)
    return records, stored


def test_oracle_selection_on_stored_evaluations_is_the_best_target_accuracy(sweep):
    records, stored = sweep
    chosen = select(records, "oracle", _validators(), stored.get)
    for seed in (0, 1):
        best = max(float(stored[r.cell_id].target_acc.max()) for r in records if r.seed == seed)
        (row,) = [r for r in chosen.records if r.seed == seed]
        assert row.target_acc == best
    oracle = chosen.validators.set_index("validator").loc["oracle"]
    assert oracle["mean_regret"] == 0 and oracle["uses_target_labels"] and oracle["rank_correlation"] == 1.0


def test_last_picks_the_default_parameters_at_their_last_checkpoint(sweep):
    records, stored = sweep
    chosen = select(records, LAST, _validators(), stored.get)
    by_seed = {r.seed: r for r in chosen.records}
    for seed in (0, 1):
        default = next(r for r in records if r.seed == seed and r.extra["sweep"]["default"])
        assert by_seed[seed].cell_id == default.cell_id and by_seed[seed].target_acc == default.target_acc
        assert by_seed[seed].extra["selection"] == {"rule": "last", "step": 50, "params": "trade_off=1.0"}


def test_regret_is_the_oracle_best_minus_the_choice(sweep):
    records, stored = sweep
    chosen = select(records, "im", _validators(), stored.get)
    table = chosen.validators.set_index("validator")
    regrets = [row.oracle_acc - row.target_acc for row in chosen.chosen.itertuples()]
    assert table.loc["im", "mean_regret"] == pytest.approx(np.mean(regrets))
    assert table.loc["im", "selected"] and (table["mean_regret"] >= 0).all()
    assert -1 <= table.loc["im", "rank_correlation"] <= 1


@pytest.mark.slow
def test_a_chosen_last_checkpoint_shows_the_records_accuracy_on_every_target_image(sweep):
    records, stored = sweep
    # the records' accuracy reads every target image; the stored last point only the checkpoint images
    records = [dataclasses.replace(r, target_acc=r.target_acc + 0.5) for r in records]
    chosen = select(records, LAST, _validators(), stored.get)
    by_id = {r.cell_id: r for r in records}
    assert all(r.target_acc == by_id[r.cell_id].target_acc for r in chosen.records)
    assert all(row.target_acc == by_id[row.cell_id].target_acc - 0.5 for row in chosen.chosen.itertuples())
    early = select(records, "oracle", _validators(), stored.get)
    for r in early.records:
        step = r.extra["selection"]["step"]
        ev = stored[r.cell_id]
        expected = (
            by_id[r.cell_id].target_acc if step == ev.steps[-1] else float(ev.target_acc[list(ev.steps).index(step)])
        )
        assert r.target_acc == pytest.approx(expected)


def test_the_checkpoint_table_holds_every_candidate_and_reproduces_the_regrets(sweep):
    records, stored = sweep
    chosen = select(records, LAST, _validators(), stored.get)
    table = chosen.checkpoints
    assert len(table) == 2 * 3 * 5 and table["last"].sum() == 6
    assert sorted(table["target_acc"]) == sorted(float(a) for e in stored.values() for a in e.target_acc)
    for name in ("im", "snd", "oracle"):
        regrets = []
        for _, group in table.groupby("seed"):
            pick = group.loc[group[name].idxmax()]  # idxmax: the first of equal scores, as select's ties
            regrets.append(group["target_acc"].max() - pick["target_acc"])
        expected = chosen.validators.set_index("validator").loc[name, "mean_regret"]
        assert np.mean(regrets) == pytest.approx(expected)
    # the yardstick row: the default parameters' last checkpoint, no validator
    default = table[table["last"] & (table["params"] == "trade_off=1.0")].set_index("seed")["target_acc"]
    regrets = [group["target_acc"].max() - default[seed] for seed, group in table.groupby("seed")]
    row = chosen.validators.set_index("validator").loc[LAST_ROW]
    assert row["mean_regret"] == pytest.approx(np.mean(regrets)) and row["selected"]
    assert math.isnan(row["rank_correlation"]) and not row["uses_target_labels"]


def test_records_without_evaluations_keep_their_last_checkpoint():
    old = _record("old", 0, 55.0, strategy="source_only")
    chosen = select([old], "snd", _validators(), lambda cid: None)
    assert chosen.records[0].target_acc == 55.0 and "no checkpoint it could score" in chosen.notes[0]
    assert select([old], LAST, _validators(), lambda cid: None).notes == []


def test_an_unknown_selection_names_the_validators():
    from tlbench.errors import UserError

    with pytest.raises(UserError, match="tlbench list validators"):
        select([], "sdn", _validators(), lambda cid: None)


# -- end to end: a sweep with checkpoints, selected during the run and again by `tlbench report` -------
def _suite(tmp_path, name, **changes):
    data = yaml.safe_load(TINY_SUITE)
    data["recipe"].update(changes.pop("recipe", {}))
    data.update(changes)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.slow
def test_reselection_from_stored_evaluations_equals_selection_during_the_run(tmp_path, capsys):
    from tlbench.cli import main

    suite = _suite(
        tmp_path,
        "sweep",
        strategies=["source_only", {"dann": {"trade_off": [0.3, 1.0]}}],
        selection="im",
        recipe={"eval_points": 3},
    )
    out = tmp_path / "out"
    assert main(["run", str(suite), "--out", str(out), "--quiet"]) == 0
    records = ResultsDir(out).records()
    assert len(records) == 3
    for r in records:  # the last checkpoint is the record's own evaluation
        ev = ResultsDir(out).read_evaluations(r.cell_id)
        assert list(ev.steps) == [2, 4, 6] and ev.target_acc[-1] == pytest.approx(r.target_acc)
        assert ev.target_logits.dtype == np.float16 and len(ev.source_labels) == ev.source_logits.shape[1]
    again = tmp_path / "again"
    assert main(["report", str(out), "--selection", "im", "--out", str(again)]) == 0
    for name in ("leaderboard.csv", "selection.csv", "validators.csv"):
        assert (again / name).read_text() == (out / name).read_text(), name
    assert "## Validators" in (out / "leaderboard.md").read_text()
    # a fresh clone has the committed checkpoints.csv, not the git-ignored evaluations: the same tables
    for path in (out / "cells").glob("*/evaluations.npz"):
        path.unlink()
    clone = tmp_path / "clone"
    assert main(["report", str(out), "--selection", "im", "--out", str(clone)]) == 0
    assert main(["report", str(out)]) == 0  # in place, under the suite's selection (im)
    for name in ("leaderboard.csv", "selection.csv", "validators.csv", "checkpoints.csv"):
        assert (clone / name).read_text() == (again / name).read_text(), name
        assert (out / name).read_text() == (again / name).read_text(), name
    oracle = tmp_path / "oracle"
    assert main(["report", str(out), "--selection", "oracle", "--out", str(oracle)]) == 0
    assert "ORACLE" in (oracle / "leaderboard.md").read_text()

    # checkpoint evaluations do not change training: source_only with one eval point ends the same
    plain = _suite(tmp_path, "plain", strategies=["source_only"])
    assert main(["run", str(plain), "--out", str(tmp_path / "plain"), "--quiet"]) == 0
    (only,) = ResultsDir(tmp_path / "plain").records()
    swept = next(r for r in records if r.strategy == "source_only")
    assert only.target_acc == swept.target_acc and only.source_acc == swept.source_acc
    capsys.readouterr()
    assert main(["run", str(suite), "--out", str(out), "--dry-run", "--set", "recipe.lr=[0.01,0.02]"]) == 0
    text = capsys.readouterr().out
    assert "6 cells: 3 to run, 3 already done" in text and "estimated time" in text


def test_a_stored_checkpoint_table_keeps_ids_that_look_like_numbers(tmp_path):
    from tlbench.reporting.selection import CHECKPOINT_COLUMNS, read_checkpoint_tables

    row = {
        "backbone": "b",
        "strategy": "dann",
        "pair": "x->y",
        "seed": 0,
        "params": "default",
        "step": 10,
        "last": True,
        "target_acc": 55.5,
        "heldout_source_acc": 90.0,
        "im": 0.25,
    }
    rows = [{**row, "cell_id": cid} for cid in ("0123456789012345", "1e10000000000000")]
    import pandas as pd

    pd.DataFrame(rows, columns=[*CHECKPOINT_COLUMNS, "im"]).to_csv(tmp_path / "checkpoints.csv", index=False)
    stored = read_checkpoint_tables([tmp_path])
    assert sorted(stored) == ["0123456789012345", "1e10000000000000"]
    chosen = select([_record("0123456789012345", 0, 60.0)], "im", _validators(), lambda cid: None, stored)
    assert chosen.records[0].target_acc == 60.0  # the last checkpoint keeps the record's accuracy
    assert chosen.chosen.loc[0, "step"] == 10 and chosen.notes == []
