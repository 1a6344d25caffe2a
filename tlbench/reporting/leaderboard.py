"""Leaderboards: records of finished cells turned into ranked tables, then written by reporters.

:func:`build_leaderboard` is a pure function of the records and the suite: one row per
backbone × strategy, one column per domain pair (the suite's order) plus ``Avg``. Tables are
pandas DataFrames holding numbers only; every reporter plugin formats them in its own syntax.

Rules a reader of any report can rely on:

* a cell is the mean ± sample standard deviation (ddof=1) over the seeds whose status is ``ok``;
  ``n`` is that number of seeds;
* ``Avg`` is the mean of the per-pair means, computed only when every pair of the row has a value
  (a row with a missing pair says which, never averages what it has); its std is the std over
  seeds of the per-seed average, given only when every seed of the row has every pair;
* failed and diverged cells are never dropped: each gets a footnote with its status and error;
* rows are listed by Avg and ``rank`` is that position; significance is shown beside it as groups
  (letters), and a pair whose significantly better row has the lower Avg is named in a note
  (:mod:`tlbench.reporting.ranking`);
* published reference numbers stay in their own table, outside ranks and best marks;
* the oracle track (:mod:`tlbench.reporting.oracle_track`), the table as published tables select
  (best checkpoint by target accuracy), stands beside the honest table, marked as using target labels.

The accuracy table is built in :mod:`tlbench.reporting.accuracy`, the costs, references and environment
in :mod:`tlbench.reporting.side_tables`; writing the tables out is :mod:`tlbench.reporting.write`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from tlbench.reporting.accuracy import (
    Footnote,
    accuracy_frame,
    mark_best,
    number_footnotes,
    row_stats,
)
from tlbench.reporting.curves import CURVE_COLUMNS, curve_frame
from tlbench.reporting.mixing import mixed_origins
from tlbench.reporting.oracle_track import ORACLE_HEADING, oracle_track
from tlbench.reporting.ranking import AVG, critical_difference_summary, matched_results, rank_rows
from tlbench.reporting.selection import (
    CHECKPOINT_COLUMNS,
    CHOSEN_COLUMNS,
    LAST,
    VALIDATOR_COLUMNS,
    Selection,
    selection_text,
)
from tlbench.reporting.side_tables import common, costs, environment, references
from tlbench.spec.record import CellRecord
from tlbench.spec.summary import SuiteSummary

PROTOCOL = "{selection}; target labels never used for training{or_selection}; accuracy on all target images"
#: the header of a source-free leaderboard (suite ``protocol: source_free``)
SOURCE_FREE_PROTOCOL = (
    "source-free adaptation: per pair and seed a source model trained on the labelled source (the "
    "source_only row), adapted with unlabelled target images alone, the source never loaded; "
    "{selection}; target labels never used for training{or_selection}; accuracy on all target images"
)
#: the header of a test-time leaderboard (suite ``protocol: test_time``)
TEST_TIME_PROTOCOL = (
    "test-time adaptation: per pair and seed a source model trained on the labelled source (the "
    "source_only row, scored unadapted), meeting the target as a stream of test batches in a fixed order; "
    "accuracy of the predictions made as each batch arrived, before adapting on it; no target label used"
)
#: the header of a finetune leaderboard: the protocol in words (suite ``protocol: finetune``)
FINETUNE_PROTOCOL = (
    "fine-tuning on a labelled task: the pretrained backbone is the source; each column is a "
    "task and a label budget (a share or a number per class of its training split, drawn per seed, "
    "stratified), the training images whose labels are held back are served unlabelled; "
    "{selection}; test labels never used for training{or_selection}; accuracy on the task's test "
    "split (the dataset's own, else a fixed stratified 30 %), which no seed changes"
)
STATS_TEXT = (
    "Each cell: mean ± sample std (ddof=1) of target accuracy (%) over seeds whose cell finished "
    "ok; n = number of those seeds. Avg: mean of the per-pair means, only when every pair has a value; "
    "its std is over the per-seed averages, only when every seed has every pair. ci95 (in the CSV): "
    "half-width of the 95 % Student-t confidence interval of the mean."
)


#: what the validator table's numbers mean (every report format states it)
VALIDATOR_TEXT = (
    "Each strategy, pair and seed chooses among its candidates (every checkpoint of every cell of "
    "its sweep). Regret: the oracle's target accuracy minus that of the validator's choice, mean over "
    "groups. Rank correlation: Spearman's between the validator's scores and target accuracy within "
    "a group, mean over groups. The oracle uses target labels: a reference, never a method. Accuracies "
    "here are on each cell's checkpoint images (every target image up to recipe.eval_points_images, "
    "else a fixed random subset of that many)."
)


@dataclass
class Leaderboard:
    """Everything a reporter writes; numbers stay numbers (NaN / <NA> where there is none).

    ``accuracy``: one row per backbone × strategy in Avg order (highest first; rows without Avg last),
    with columns ``rank`` (nullable int: the position by Avg, equal Avgs share it; <NA> for rows
    without Avg), ``backbone``, ``strategy``, for every ``c`` in :attr:`columns` the fields
    ``f"{c} mean"``, ``f"{c} std"``, ``f"{c} n"``, ``f"{c} best"`` (bool), ``f"{c} status"`` (one of
    :data:`tlbench.reporting.accuracy.CELL_STATUSES`) and ``f"{c} notes"`` (tuple of footnote
    numbers), ``missing`` (the pairs without a value, in order), ``group`` (significance letters:
    rows sharing one are not told apart; <NA> where untested) and ``reversal`` (bool: the row is in a
    pair whose significantly better row has the lower Avg, named in :attr:`notes`).

    ``oracle``: the oracle track, one row per accuracy row, same order and per-column fields (no
    ``rank``, ``group``, ``reversal``), plus ``regret`` (oracle Avg minus the main table's Avg,
    points); empty when there is no track (:attr:`notes` says why).

    ``costs``: one row per accuracy row, same order: ``backbone``, ``strategy``, ``cells_ok``,
    ``cells_failed``, ``cells_diverged``, ``train_img_per_s`` and ``eval_img_per_s`` (means over ok
    cells), ``peak_mem_mb`` (max over ok cells), ``wall_s_total`` (sum over every cell),
    ``wall_s_mean`` (mean per cell), ``trainable_params`` and ``total_params`` (most common value).

    ``references``: published rows with ``backbone``, ``strategy``, ``source`` (citation),
    ``f"{c} mean"`` for every column and ``avg_published`` (bool: Avg is the source's own number).

    ``failures``: one row per failed or diverged record (``backbone``, ``strategy``, ``pair``,
    ``seed``, ``status``, ``error``, ``footnote``).
    """

    title: str
    suite: str
    dataset: str
    pairs: list[str]
    accuracy: pd.DataFrame
    costs: pd.DataFrame
    references: pd.DataFrame
    failures: pd.DataFrame
    footnotes: list[Footnote]
    #: the number of distinct seeds among the records; reporters show ``n`` where a cell differs
    n_seeds: int
    #: row-level remarks (missing pairs, unfinished cells, duplicates), plain text
    notes: list[str]
    protocol: str
    stats_text: str
    #: device, torch, timm, tlbench (values seen in the records) and report date
    environment: dict[str, str]
    #: files the reporters of this ``write_reports`` call wrote so far, in order: a later reporter
    #: may use an earlier one's (the HTML page links the plots' PNGs)
    written: list[Path] = field(default_factory=list)
    #: how the ``rank`` column was decided (stated under every table)
    rank_text: str = ""
    #: Demšar's critical-difference summary per backbone: ``backbone``, ``strategy``, ``avg_rank``,
    #: ``within_cd`` (not told apart from the best); empty unless there are enough pairs and strategies
    critical_difference: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(columns=["backbone", "strategy", "avg_rank", "within_cd"])
    )
    #: the rule and numbers behind :attr:`critical_difference` ("" when it is empty)
    cd_text: str = ""
    #: training curves of the records that carry them, one row per (cell, metric, logging step):
    #: ``backbone``, ``strategy``, ``pair``, ``seed``, ``metric``, ``step``, ``value`` (may be empty)
    curves: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(CURVE_COLUMNS)))
    #: one line naming what differs among the records behind the numbers (device, tlbench, torch, a
    #: strategy's, dataset's or shift's code) and how many cells each; "" when nothing does. Every
    #: reporter with a header shows it under that header (:mod:`tlbench.reporting.mixing`)
    mixed: str = ""
    #: the selection rule of the main table (``last`` or a validator's name; see ``tlbench.reporting.selection``)
    selection: str = LAST
    #: per backbone, strategy, pair and seed the chosen candidate: ``params`` (the swept values, or
    #: "default"), ``step``, ``target_acc``, ``oracle_acc`` (the best of its candidates), ``candidates``
    #: (how many checkpoints it chose among), ``cell_id``
    chosen: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(CHOSEN_COLUMNS)))
    #: per validator: ``uses_target_labels`` (the oracle: True), ``mean_regret`` (points below the
    #: oracle's choice), ``rank_correlation`` (mean within-group Spearman), ``groups``, ``selected``
    validators: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(VALIDATOR_COLUMNS)))
    #: every candidate checkpoint with each validator's score (``tlbench.reporting.selection.checkpoint_table``)
    checkpoints: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(CHECKPOINT_COLUMNS)))
    #: the oracle track (see the class docstring); empty when there is none
    oracle: pd.DataFrame = field(default_factory=pd.DataFrame)
    #: what the oracle track is, stated with it ("" when there is none)
    oracle_text: str = ""

    @property
    def oracle_heading(self) -> str:
        """The oracle track's heading: it says that the track uses target labels."""
        return ORACLE_HEADING

    @property
    def has_oracle(self) -> bool:
        return bool(len(self.oracle))

    @property
    def validator_text(self) -> str:
        return VALIDATOR_TEXT

    @property
    def has_choices(self) -> bool:
        """Whether any strategy, pair and seed had more than one candidate (a sweep, several checkpoints):
        only then do the selection and validator tables say something."""
        return bool(len(self.chosen)) and bool((self.chosen["candidates"] > 1).any())

    @property
    def columns(self) -> list[str]:
        return [*self.pairs, AVG]

    @staticmethod
    def col(column: str, name: str) -> str:
        """The DataFrame column of one field of one table column, e.g. ``col("A->W", "mean")``."""
        return f"{column} {name}"


# -- building ---------------------------------------------------------------------------------------
def build_leaderboard(
    records: list[CellRecord],
    suite: SuiteSummary | Mapping[str, Any] | None,
    *,
    date: str | None = None,
    selection: Selection | None = None,
) -> Leaderboard:
    """The leaderboard of ``records`` under ``suite`` (the dict of ``<out>/suite.json``); with a
    ``selection``, of the records it chose (one per strategy, pair and seed), with its tables."""
    suite = suite if isinstance(suite, SuiteSummary) else SuiteSummary.from_dict(dict(suite or {}))
    if selection is not None:
        records = selection.records
    records, duplicates = _dedupe(records)
    pairs = _pairs(records, suite)
    notes: list[str] = list(selection.notes) if selection else []
    if duplicates:
        notes.append(
            f"{duplicates} record(s) repeated the same backbone/strategy/pair/seed; the newest of each was kept."
        )

    rows = _row_keys(records)
    by_cell: dict[tuple[str, str, str], list[CellRecord]] = {}
    for r in records:
        by_cell.setdefault((r.backbone, r.label, r.column), []).append(r)

    data = [row_stats(b, s, pairs, by_cell) for b, s in rows]
    acc = accuracy_frame(data, pairs)
    acc, rank_text, reversals = rank_rows(acc, matched_results(by_cell), len({r.seed for r in records}))
    notes += reversals
    cd, cd_text = critical_difference_summary(acc, pairs)
    mark_best(acc, [*pairs, AVG])
    footnotes, failures = number_footnotes(acc, pairs, by_cell)
    for _, row in acc.iterrows():
        if row["missing"]:
            notes.append(
                f"{row['backbone']} / {row['strategy']}: Avg not computed, missing: {', '.join(row['missing'])}"
            )
    expected = suite.expected_cells()
    if expected is not None and len(records) < expected:
        notes.append(f"{len(records)} of {expected} cells have finished; the others are not shown.")

    has_choices = selection is not None and bool((selection.chosen["candidates"] > 1).any())
    oracle, oracle_text, oracle_notes = oracle_track(acc, selection, pairs, has_choices)
    notes += oracle_notes

    name = suite.name or common(r.suite for r in records) or "tlbench"
    dataset = suite.dataset or common(r.dataset for r in records) or ""
    return Leaderboard(
        title=f"{name} — {dataset}" if dataset else name,
        suite=name,
        dataset=dataset,
        pairs=pairs,
        accuracy=acc,
        costs=costs(acc, records),
        references=references(suite.references, pairs),
        failures=failures,
        footnotes=footnotes,
        n_seeds=len({r.seed for r in records}),
        notes=notes,
        protocol=protocol_text(selection.rule if selection else LAST, _protocols(records, suite)),
        stats_text=f"{STATS_TEXT} {rank_text}",
        rank_text=rank_text,
        critical_difference=cd,
        cd_text=cd_text,
        environment=environment(records, date),
        curves=curve_frame(records),
        mixed=mixed_origins(records),
        oracle=oracle,
        oracle_text=oracle_text,
        **(
            {
                "selection": selection.rule,
                "chosen": selection.chosen,
                "validators": selection.validators,
                "checkpoints": selection.checkpoints,
            }
            if selection
            else {}
        ),
    )


def protocol_text(rule: str, protocols: Sequence[str] = ("uda",)) -> str:
    """The protocol line under a selection rule, in words for each protocol of the board (uda,
    finetune); the oracle's says that it used target labels."""
    from tlbench.reporting.selection import ORACLE

    texts = {
        "uda": PROTOCOL,
        "finetune": FINETUNE_PROTOCOL,
        "source_free": SOURCE_FREE_PROTOCOL,
        "test_time": TEST_TIME_PROTOCOL,
    }
    return "; and ".join(
        texts.get(p, p).format(
            selection=selection_text(rule), or_selection="" if rule == ORACLE else " or model selection"
        )
        for p in protocols or ("uda",)
    )


def _protocols(records: list[CellRecord], suite: SuiteSummary) -> list[str]:
    """The suite's protocol, else the records' (a merged report of both names both)."""
    return [suite.protocol] if suite.protocol else list(dict.fromkeys(r.protocol for r in records))


def _dedupe(records: Iterable[CellRecord]) -> tuple[list[CellRecord], int]:
    """One record per backbone/strategy/pair/seed (newest wins), in first-seen order."""
    keep: dict[tuple, CellRecord] = {}
    dupes = 0
    for r in records:
        key = (r.backbone, r.label, r.column, r.seed)
        old = keep.get(key)
        if old is not None:
            dupes += 1
            if r.started_at < old.started_at:
                continue
        keep[key] = r
    return list(keep.values()), dupes


def _pairs(records: list[CellRecord], suite: SuiteSummary) -> list[str]:
    """The suite's pairs in order, then any other pair the records have (first seen)."""
    out = list(suite.columns or [])
    for r in records:
        if r.column not in out:
            out.append(r.column)
    return out


def _row_keys(records: list[CellRecord]) -> list[tuple[str, str]]:
    seen: dict[tuple[str, str], None] = {}
    for r in records:
        seen.setdefault((r.backbone, r.label), None)
    return list(seen)
