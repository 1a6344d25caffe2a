"""Selection: which (parameters, checkpoint) each strategy, pair and seed reports, and how well validators choose.

The candidates of one strategy, pair and seed are every checkpoint of every cell of its sweep (one
cell and its last checkpoint without a sweep or checkpoint evaluations). A rule picks one:

* ``last`` (the default, tlbench's behaviour before sweeps): the cell with the default parameters
  (else every list's first value), its last checkpoint;
* a validator's name: the candidate it scores highest (ties: the earlier one in sweep order, then
  the earlier checkpoint). A group with nothing the validator can score keeps ``last`` (counted in a note);
* ``oracle``: the best target accuracy, which needs target labels: a reference, not a method.

The validator table measures every validator against the oracle over all groups (Musgrave et al.,
"Benchmarking Validation Methods for Unsupervised Domain Adaptation", 2021): the mean regret (the
oracle's accuracy minus the accuracy of the validator's choice, points) and the mean Spearman rank
correlation between its scores and target accuracy within a group. Everything here reads stored
checkpoint evaluations: ``tlbench report --selection NAME`` re-selects without training. Where a
cell's ``evaluations.npz`` is absent (results folders commit ``checkpoints.csv``, not the
evaluations), its candidates are the rows ``checkpoints.csv`` holds for it: the same steps,
accuracies and scores, so a report on a fresh clone reproduces the committed tables.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd

from tlbench.errors import UserError
from tlbench.reporting.validator import Validator, ValidatorInputs
from tlbench.spec.evaluations import CheckpointEvaluations
from tlbench.spec.record import CellRecord

LAST = "last"
ORACLE = "oracle"
CHOSEN_COLUMNS = (
    "backbone",
    "strategy",
    "pair",
    "seed",
    "params",
    "step",
    "target_acc",
    "oracle_acc",
    "candidates",
    "cell_id",
)
VALIDATOR_COLUMNS = ("validator", "uses_target_labels", "mean_regret", "rank_correlation", "groups", "selected")
#: the validator table's row of the default rule (no validator: the default parameters' last checkpoint)
LAST_ROW = "last (no validator)"
#: the leading columns of the checkpoint table; every validator's score follows, one column each
CHECKPOINT_COLUMNS = (
    "backbone",
    "strategy",
    "pair",
    "seed",
    "params",
    "step",
    "last",
    "target_acc",
    "heldout_source_acc",
    "cell_id",
)


@dataclass
class Candidate:
    """One checkpoint of one cell: what it scored and what it reached."""

    record: CellRecord
    step: int
    target_acc: float
    source_acc: float | None
    scores: dict[str, float]
    last: bool  # the cell's last checkpoint


@dataclass
class Selection:
    """The records the main table shows (one per strategy, pair and seed) and the tables behind them."""

    rule: str
    records: list[CellRecord]
    chosen: pd.DataFrame
    validators: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    #: every candidate with every validator's score (CHECKPOINT_COLUMNS, then one column per validator):
    #: what the validator table is computed from, small enough to commit beside it
    checkpoints: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(CHECKPOINT_COLUMNS)))
    #: the oracle's choice for each strategy, pair and seed (its best candidate by target accuracy; the
    #: newest failure where none finished): the leaderboard's oracle track, whatever ``rule`` is
    oracle: list[CellRecord] = field(default_factory=list)


def score_checkpoint(validator: Validator, evaluations: CheckpointEvaluations, k: int) -> float:
    """A validator's score of checkpoint ``k``: target labels reach only a ``uses_target_labels`` one,
    and only as the accuracy; every other validator gets :class:`ValidatorInputs`, which has none."""
    if validator.uses_target_labels:
        return float(validator.score_target_accuracy(float(evaluations.target_acc[k])))
    return float(validator.score(ValidatorInputs.at(evaluations, k)))


#: a cell's rows of a stored checkpoint table (cell id -> rows as dicts), where its evaluations are absent
StoredCandidates = dict[str, list[dict[str, Any]]]


def read_checkpoint_tables(dirs: Iterable[Path]) -> StoredCandidates:
    """The rows of every ``checkpoints.csv`` of ``dirs`` by cell id (a later folder's rows win)."""
    found: StoredCandidates = {}
    for d in dirs:
        path = Path(d) / "checkpoints.csv"
        if not path.is_file() or path.stat().st_size == 0:
            continue
        table = pd.read_csv(path, dtype={"cell_id": str, "params": str})  # ids of digits only stay text
        if not set(CHECKPOINT_COLUMNS) <= set(table.columns):
            continue  # not a checkpoint table of this version: nothing to reuse
        for cell_id, rows in table.groupby("cell_id", sort=False):
            found[str(cell_id)] = rows.to_dict("records")
    return found


def select(
    records: list[CellRecord],
    rule: str,
    validators: dict[str, Validator],
    load: Callable[[str], CheckpointEvaluations | None],
    stored: StoredCandidates | None = None,
) -> Selection:
    """Choose one candidate per strategy, pair and seed by ``rule`` (``last`` or a name in ``validators``).

    ``load`` gives a cell's checkpoint evaluations; ``stored``, its rows of an earlier checkpoint table,
    read where ``load`` has none."""
    if rule != LAST and rule not in validators:
        raise UserError(
            f"selection {rule!r} is not a validator; use last or one of: {', '.join(sorted(validators))} "
            "(tlbench list validators)"
        )
    groups: dict[tuple, list[CellRecord]] = {}
    for r in records:
        groups.setdefault((r.backbone, r.label, r.column, r.seed), []).append(r)
    failing: set[str] = set()
    out, chosen_rows, fallback, oracle = [], [], 0, []
    per_group: list[list[Candidate]] = []
    for key, recs in groups.items():
        recs.sort(key=_sweep_order)
        ok = [r for r in recs if r.scored]
        if not ok:  # nothing to choose: the newest failure keeps its footnote
            out.append(max(recs, key=lambda r: r.started_at))
            oracle.append(out[-1])
            continue
        candidates = [c for r in ok for c in _candidates(r, validators, load, failing, stored or {})]
        per_group.append(candidates)
        pick = _choose(candidates, rule)
        if pick is None:
            fallback += 1
            pick = cast(Candidate, _choose(candidates, LAST))  # last always picks one
        out.append(_chosen_record(pick, rule))
        oracle.append(_chosen_record(_best(candidates), ORACLE))
        chosen_rows.append(
            {
                "backbone": key[0],
                "strategy": key[1],
                "pair": key[2],
                "seed": key[3],
                "params": _params_text(pick.record),
                "step": pick.step,
                "target_acc": pick.target_acc,
                "oracle_acc": max(c.target_acc for c in candidates),
                "candidates": len(candidates),
                "cell_id": pick.record.cell_id,
            }
        )
    notes = []
    if fallback:
        notes.append(
            f"selection {rule}: {fallback} strategy/pair/seed group(s) had no checkpoint it could score "
            "(no stored checkpoint evaluations, or no held-out source split); they show the last checkpoint."
        )
    swept = len(records) - len(groups)
    if swept > 0:
        notes.append(
            f"{len(records)} cells for {len(groups)} strategy/pair/seed entries (a sweep); the costs are "
            "those of the chosen cells."
        )
    names = [n for n in sorted(validators) if n not in failing]
    return Selection(
        rule,
        out,
        pd.DataFrame(chosen_rows, columns=list(CHOSEN_COLUMNS)),
        validator_table(per_group, names, validators, rule),
        notes,
        checkpoint_table(per_group, names),
        oracle,
    )


def checkpoint_table(groups: list[list[Candidate]], names: list[str]) -> pd.DataFrame:
    """One row per candidate: where it comes from, its target and source accuracy, each validator's score."""
    rows = [
        {
            "backbone": c.record.backbone,
            "strategy": c.record.label,
            "pair": c.record.column,
            "seed": c.record.seed,
            "params": _params_text(c.record),
            "step": c.step,
            "last": c.last,
            "target_acc": c.target_acc,
            "heldout_source_acc": c.source_acc,
            "cell_id": c.record.cell_id,
            **{n: c.scores.get(n, math.nan) for n in names},
        }
        for candidates in groups
        for c in candidates
    ]
    return pd.DataFrame(rows, columns=[*CHECKPOINT_COLUMNS, *names])


def _sweep_order(r: CellRecord) -> tuple:
    return (r.sweep.order if r.sweep is not None else 0, r.started_at)


def _is_default(r: CellRecord) -> bool:
    return r.sweep is None or r.sweep.default


def _candidates(
    r: CellRecord, validators: dict[str, Validator], load, failing: set[str], stored: StoredCandidates
) -> list[Candidate]:
    evaluations = load(r.cell_id)
    if (evaluations is None or not len(evaluations)) and stored.get(r.cell_id):
        return _stored_candidates(r, stored[r.cell_id], validators)
    if evaluations is None or not len(evaluations):
        target_acc = cast(float, r.target_acc)  # r is scored: a finite number
        oracle = {n: v.score_target_accuracy(float(target_acc)) for n, v in validators.items() if v.uses_target_labels}
        return [Candidate(r, int(r.steps or 0), float(target_acc), r.source_acc, oracle, True)]
    out = []
    for k in range(len(evaluations)):
        scores = {}
        for name, v in validators.items():
            if name in failing:
                continue
            try:
                scores[name] = score_checkpoint(v, evaluations, k)
            except Exception as exc:  # noqa: BLE001 - a broken validator plugin costs its column, not the report
                failing.add(name)
                warnings.warn(
                    f"validator {name!r} raised {type(exc).__name__}: {exc}; it is left out of this report",
                    stacklevel=2,
                )
        labels = evaluations.source_labels
        src = 100.0 * float(np.mean(evaluations.source_logits[k].argmax(1) == labels)) if len(labels) else None
        out.append(
            Candidate(
                r, int(evaluations.steps[k]), float(evaluations.target_acc[k]), src, scores, k == len(evaluations) - 1
            )
        )
    return out


def _stored_candidates(r: CellRecord, rows: list[dict[str, Any]], validators: dict[str, Validator]) -> list[Candidate]:
    """A cell's candidates from its checkpoint-table rows: a validator without a column there (added
    since) scores nothing, and its groups keep ``last``."""

    def number(value: Any) -> float | None:
        return float(value) if value is not None and math.isfinite(float(value)) else None

    out = []
    for row in sorted(rows, key=lambda row: int(row["step"])):
        scores = {n: s for n in validators if (s := number(row.get(n))) is not None}
        last = row["last"] if isinstance(row["last"], bool) else str(row["last"]).lower() == "true"
        out.append(
            Candidate(
                r, int(row["step"]), float(row["target_acc"]), number(row.get("heldout_source_acc")), scores, bool(last)
            )
        )
    return out


def _choose(candidates: list[Candidate], rule: str) -> Candidate | None:
    if rule == LAST:
        last = [c for c in candidates if c.last]
        defaults = [c for c in last if _is_default(c.record)] or last[:1]
        if _swept(c.record for c in defaults):
            return defaults[0]  # the first default point of the sweep
        return max(defaults, key=lambda c: c.record.started_at)  # no sweep: the newest, as always
    best, best_score = None, -math.inf
    for c in candidates:
        s = c.scores.get(rule, math.nan)
        if math.isfinite(s) and s > best_score:
            best, best_score = c, s
    return best


def _best(candidates: list[Candidate]) -> Candidate:
    """The candidate with the highest target accuracy (ties: the earlier one), as the oracle validator picks."""
    return max(candidates, key=lambda c: c.target_acc)  # max keeps the first of equal ones


def _swept(records: Iterable[CellRecord]) -> bool:
    return any(r.sweep is not None for r in records)


def _chosen_record(c: Candidate, rule: str) -> CellRecord:
    """The record the main table shows: a cell's last checkpoint keeps the record's own accuracy (every
    target image); an earlier checkpoint has only its accuracy on the checkpoint images."""
    extra = {**c.record.extra, "selection": {"rule": rule, "step": c.step, "params": _params_text(c.record)}}
    if c.last:
        return dataclasses.replace(c.record, extra=extra)
    return dataclasses.replace(c.record, target_acc=c.target_acc, source_acc=c.source_acc, extra=extra)


def _params_text(r: CellRecord) -> str:
    return r.sweep.describe() if r.sweep is not None else "default"


def validator_table(
    groups: list[list[Candidate]], names: list[str], validators: dict[str, Validator], rule: str
) -> pd.DataFrame:
    """Mean regret against the oracle and mean within-group Spearman correlation, per validator."""
    from scipy.stats import spearmanr

    rows = []
    if groups:  # the default, as a yardstick: what choosing nothing costs
        regrets = [max(c.target_acc for c in g) - cast(Candidate, _choose(g, LAST)).target_acc for g in groups]
        rows.append(
            {
                "validator": LAST_ROW,
                "uses_target_labels": False,
                "mean_regret": float(np.mean(regrets)),
                "rank_correlation": math.nan,
                "groups": len(regrets),
                "selected": rule == LAST,
            }
        )
    for name in names:
        regrets, rhos = [], []
        for candidates in groups:
            scored = [c for c in candidates if math.isfinite(c.scores.get(name, math.nan))]
            if not scored:
                continue
            pick = cast(Candidate, _choose(scored, name))  # every candidate in scored has a finite score
            regrets.append(max(c.target_acc for c in candidates) - pick.target_acc)
            scores, accs = [c.scores[name] for c in scored], [c.target_acc for c in scored]
            if len(scored) >= 3 and len(set(scores)) > 1 and len(set(accs)) > 1:
                rhos.append(float(spearmanr(scores, accs).statistic))
        rows.append(
            {
                "validator": name,
                "uses_target_labels": bool(validators[name].uses_target_labels),
                "mean_regret": float(np.mean(regrets)) if regrets else math.nan,
                "rank_correlation": float(np.mean(rhos)) if rhos else math.nan,
                "groups": len(regrets),
                "selected": name == rule,
            }
        )
    df = pd.DataFrame(rows, columns=list(VALIDATOR_COLUMNS))
    return df.sort_values(["uses_target_labels", "mean_regret"], kind="stable").reset_index(drop=True)


def selection_text(rule: str) -> str:
    """The protocol line of a leaderboard under ``rule``."""
    if rule == LAST:
        return "last checkpoint"  # of the default parameters, where a sweep lists several
    earlier = " (a chosen earlier checkpoint: its accuracy on the cell's checkpoint images)"
    if rule == ORACLE:
        return (
            "parameters and checkpoint chosen by the ORACLE, i.e. with target labels: an upper bound, "
            "not a result a user could reproduce" + earlier
        )
    return (
        f"parameters and checkpoint chosen per strategy, pair and seed by the validator {rule!r} (no target "
        f"labels){earlier}"
    )
