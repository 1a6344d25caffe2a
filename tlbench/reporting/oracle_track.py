"""The oracle track: the leaderboard as published tables make it, beside the honest one.

Published tables (TLlib's among them) keep each run's best epoch by accuracy on the labelled target
test set. tlbench's main table never uses target labels (the last checkpoint, or a validator without
them), so its numbers are not comparable with those tables. The oracle track is the same table under
the oracle's choice: for every strategy, pair and seed the candidate (checkpoint, and swept parameters
where the suite sweeps) with the highest target accuracy, the choice ``--selection oracle`` makes. It
is built like the main table (mean ± std per pair, Avg), in the main table's row order, never ranked,
and adds ``regret``: the oracle's Avg minus the main table's Avg (points), what selecting with target
labels adds. A reproduction compares a published number with this track; methods are compared in
the honest table.

It is shown only when it can differ from the main table: when some strategy, pair and seed had more
than one candidate (checkpoint evaluations, ``recipe.eval_points``, or a sweep), and the main table is
not itself the oracle's. Otherwise the notes say why there is none.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from tlbench.reporting.accuracy import ByCell, accuracy_frame, mark_best, row_stats
from tlbench.reporting.ranking import AVG
from tlbench.reporting.selection import ORACLE, Selection
from tlbench.spec.record import CellRecord

ORACLE_HEADING = "Oracle track: best checkpoint by target accuracy (USES TARGET LABELS, not a method)"
ORACLE_TEXT = (
    "Oracle track: best checkpoint by target accuracy, as published tables select; USES TARGET LABELS, "
    "not a method. Each strategy, pair and seed shows its candidate (checkpoint, and swept parameters "
    "where the suite sweeps) with the highest accuracy on the labelled target test set: the choice "
    "published tables (e.g. TLlib's) report, so compare published numbers with this table and methods "
    "with the honest one. An earlier checkpoint's accuracy is on the cell's checkpoint images. Mean ± std "
    "and Avg as in the main table, same row order, not ranked. Regret: oracle Avg minus main-table Avg "
    "(points), what choosing with target labels adds."
)
SINGLE_TEXT = (
    " {single} of {total} strategy/pair/seed entries have a single candidate (no checkpoint "
    "evaluations): their oracle value is their final accuracy."
)
NO_CHOICE_NOTE = (
    "No oracle track: no cell has more than one candidate (checkpoint evaluations, recipe.eval_points, "
    "or a sweep), so the oracle's choice (best checkpoint by target accuracy, as published tables select) "
    "is each cell's final checkpoint, i.e. the table above."
)
ORACLE_MAIN_NOTE = "No separate oracle track: the main table is itself the oracle's choice (it uses target labels)."
#: the columns besides the per-column fields (:data:`tlbench.reporting.accuracy.COLUMN_FIELDS`)
REGRET = "regret"


def oracle_track(
    honest: pd.DataFrame, selection: Selection | None, pairs: list[str], has_choices: bool
) -> tuple[pd.DataFrame, str, list[str]]:
    """The oracle track of the main table ``honest`` (empty when there is none), the text stated with it,
    and the notes saying why there is none."""
    if selection is None or selection.rule == ORACLE or not has_choices:
        notes = [] if selection is None else [ORACLE_MAIN_NOTE if selection.rule == ORACLE else NO_CHOICE_NOTE]
        return _frame(honest.iloc[0:0], {}, pairs), "", notes
    by_cell: ByCell = {}
    for r in _newest(selection.oracle):
        by_cell.setdefault((r.backbone, r.label, r.column), []).append(r)
    text = ORACLE_TEXT
    single = int((selection.chosen["candidates"] <= 1).sum())
    if single:
        text += SINGLE_TEXT.format(single=single, total=len(selection.chosen))
    return _frame(honest, by_cell, pairs), text, []


def _frame(honest: pd.DataFrame, by_cell: ByCell, pairs: list[str]) -> pd.DataFrame:
    data = [row_stats(b, s, pairs, by_cell) for b, s in zip(honest["backbone"], honest["strategy"])]
    df = accuracy_frame(data, pairs).drop(columns=["rank", "group", "reversal"])
    mark_best(df, [*pairs, AVG])
    for c in pairs:  # the same failed records as the main table: its footnote numbers
        df[f"{c} notes"] = list(honest[f"{c} notes"])
    df[REGRET] = (df[f"{AVG} mean"] - honest[f"{AVG} mean"].to_numpy()).astype("float64")
    return df


def _newest(records: list[CellRecord]) -> list[CellRecord]:
    """One record per backbone/strategy/pair/seed (newest wins), as the main table keeps."""
    keep: dict[tuple[Any, ...], CellRecord] = {}
    for r in records:
        key = (r.backbone, r.label, r.column, r.seed)
        if key not in keep or r.started_at >= keep[key].started_at:
            keep[key] = r
    return list(keep.values())
