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
* published reference numbers stay in their own table, outside ranks and best marks.

One module over ~400 lines on purpose: the rules above and the code that enforces them are read
together. Writing the tables out is ``tlbench.reporting.write``.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from tlbench.errors import UserError
from tlbench.matrix.results import CellRecord
from tlbench.reporting import stats
from tlbench.reporting.curves import CURVE_COLUMNS, curve_frame
from tlbench.reporting.mixing import mixed_origins
from tlbench.reporting.ranking import AVG, critical_difference_summary, matched_results, rank_rows
from tlbench.reporting.selection import (
    CHECKPOINT_COLUMNS,
    CHOSEN_COLUMNS,
    LAST,
    VALIDATOR_COLUMNS,
    Selection,
    selection_text,
)

#: per-column fields of :attr:`Leaderboard.accuracy`, named ``f"{column} {field}"``
COLUMN_FIELDS = ("mean", "std", "ci95", "n", "best", "status", "notes")
#: cell statuses in :attr:`Leaderboard.accuracy` (``f"{column} status"``)
CELL_STATUSES = ("ok", "partial", "failed", "diverged", "failed/diverged", "missing")

PROTOCOL = "{selection}; target labels never used for training{or_selection}; accuracy on all target images"
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
class Footnote:
    """Failed or diverged cells that share one status and error text."""

    number: int
    status: str
    error: str
    #: where it happened, e.g. ``"resnet18 / dann / A->W, seeds 0, 2"``
    cells: list[str] = field(default_factory=list)

    @property
    def summary(self) -> str:
        """The error's last non-empty line (for a traceback: the exception), at most 300 characters."""
        lines = [ln.strip() for ln in self.error.splitlines() if ln.strip()]
        text = lines[-1] if lines else "(no error text recorded)"
        return text if len(text) <= 300 else text[:299] + "…"


@dataclass
class Leaderboard:
    """Everything a reporter writes; numbers stay numbers (NaN / <NA> where there is none).

    ``accuracy``: one row per backbone × strategy in rank order, with columns ``rank`` (nullable
    int; <NA> for rows without Avg), ``backbone``, ``strategy``, for every ``c`` in :attr:`columns`
    the fields ``f"{c} mean"``, ``f"{c} std"``, ``f"{c} n"``, ``f"{c} best"`` (bool),
    ``f"{c} status"`` (one of :data:`CELL_STATUSES`) and ``f"{c} notes"`` (tuple of footnote
    numbers), and ``missing`` (the pairs without a value, in order).

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
    records: list[CellRecord], suite: dict[str, Any], *, date: str | None = None, selection: Selection | None = None
) -> Leaderboard:
    """The leaderboard of ``records`` under ``suite`` (the dict of ``<out>/suite.json``); with a
    ``selection``, of the records it chose (one per strategy, pair and seed), with its tables."""
    suite = suite or {}
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
        by_cell.setdefault((r.backbone, r.strategy, r.column), []).append(r)

    data = [_row_stats(b, s, pairs, by_cell) for b, s in rows]
    acc = _accuracy_frame(data, pairs)
    acc, rank_text = rank_rows(acc, matched_results(by_cell), len({r.seed for r in records}))
    cd, cd_text = critical_difference_summary(acc, pairs)
    _mark_best(acc, [*pairs, AVG])
    footnotes, failures = _footnotes(acc, pairs, by_cell)
    for _, row in acc.iterrows():
        if row["missing"]:
            notes.append(
                f"{row['backbone']} / {row['strategy']}: Avg not computed, missing: {', '.join(row['missing'])}"
            )
    expected = _expected_cells(suite, pairs)
    if expected is not None and len(records) < expected:
        notes.append(f"{len(records)} of {expected} cells have finished; the others are not shown.")

    name = str(suite.get("name") or _common(r.suite for r in records) or "tlbench")
    dataset = str(suite.get("dataset") or _common(r.dataset for r in records) or "")
    return Leaderboard(
        title=f"{name} — {dataset}" if dataset else name,
        suite=name,
        dataset=dataset,
        pairs=pairs,
        accuracy=acc,
        costs=_costs(acc, records),
        references=_references(suite.get("reference") or [], pairs),
        failures=failures,
        footnotes=footnotes,
        n_seeds=len({r.seed for r in records}),
        notes=notes,
        protocol=protocol_text(selection.rule if selection else LAST, _protocols(records, suite)),
        stats_text=f"{STATS_TEXT} {rank_text}",
        rank_text=rank_text,
        critical_difference=cd,
        cd_text=cd_text,
        environment=_environment(records, date),
        curves=curve_frame(records),
        mixed=mixed_origins(records),
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

    texts = {"uda": PROTOCOL, "finetune": FINETUNE_PROTOCOL}
    return "; and ".join(
        texts.get(p, p).format(
            selection=selection_text(rule), or_selection="" if rule == ORACLE else " or model selection"
        )
        for p in protocols or ("uda",)
    )


def _protocols(records: list[CellRecord], suite: dict[str, Any]) -> list[str]:
    """The suite's protocol, else the records' (a merged report of both names both)."""
    return [str(suite["protocol"])] if suite.get("protocol") else list(dict.fromkeys(r.protocol for r in records))


def _dedupe(records: Iterable[CellRecord]) -> tuple[list[CellRecord], int]:
    """One record per backbone/strategy/pair/seed (newest wins), in first-seen order."""
    keep: dict[tuple, CellRecord] = {}
    dupes = 0
    for r in records:
        key = (r.backbone, r.strategy, r.column, r.seed)
        old = keep.get(key)
        if old is not None:
            dupes += 1
            if r.started_at < old.started_at:
                continue
        keep[key] = r
    return list(keep.values()), dupes


def _pairs(records: list[CellRecord], suite: dict[str, Any]) -> list[str]:
    """The suite's pairs in order, then any other pair the records have (first seen)."""
    listed = suite.get("pairs")
    out = [str(p) for p in listed] if isinstance(listed, list) else []
    for r in records:
        if r.column not in out:
            out.append(r.column)
    return out


def _row_keys(records: list[CellRecord]) -> list[tuple[str, str]]:
    seen: dict[tuple[str, str], None] = {}
    for r in records:
        seen.setdefault((r.backbone, r.strategy), None)
    return list(seen)


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    s = pd.Series(values, dtype="float64")
    return float(s.mean()), float(s.std(ddof=1)) if len(s) > 1 else math.nan


def _cell_status(recs: list[CellRecord]) -> str:
    if not recs:
        return "missing"
    bad = {"diverged" if r.status == "diverged" else "failed" for r in recs if not r.scored}
    if any(r.scored for r in recs):
        return "partial" if bad else "ok"
    return "failed/diverged" if len(bad) == 2 else bad.pop()


def _row_stats(
    backbone: str, strategy: str, pairs: list[str], by_cell: dict[tuple[str, str, str], list[CellRecord]]
) -> dict[str, Any]:
    row: dict[str, Any] = {"backbone": backbone, "strategy": strategy}
    per_seed: dict[int, dict[str, float]] = {}
    seeds: set[int] = set()
    means: list[float] = []
    missing: list[str] = []
    for p in pairs:
        recs = by_cell.get((backbone, strategy, p), [])
        seeds.update(r.seed for r in recs)
        values = [float(r.target_acc) for r in recs if r.scored]
        for r in recs:
            if r.scored:
                per_seed.setdefault(r.seed, {})[p] = float(r.target_acc)
        mean, std = _mean_std(values) if values else (math.nan, math.nan)
        row.update(
            {
                f"{p} mean": mean,
                f"{p} std": std,
                f"{p} ci95": stats.ci95_halfwidth(std, len(values)),
                f"{p} n": len(values) if values else pd.NA,
                f"{p} status": _cell_status(recs),
            }
        )
        if values:
            means.append(mean)
        else:
            missing.append(p)
    if pairs and not missing:
        avg = float(sum(means) / len(means))
        complete = [s for s in sorted(seeds) if len(per_seed.get(s, {})) == len(pairs)]
        if len(complete) == len(seeds):
            _, avg_std = _mean_std([sum(per_seed[s].values()) / len(pairs) for s in complete])
            avg_n: Any = len(complete)
        else:
            avg_std, avg_n = math.nan, pd.NA
        ci = stats.ci95_halfwidth(avg_std, len(complete)) if avg_n is not pd.NA else math.nan
        row.update(
            {f"{AVG} mean": avg, f"{AVG} std": avg_std, f"{AVG} ci95": ci, f"{AVG} n": avg_n, f"{AVG} status": "ok"}
        )
    else:
        row.update(
            {
                f"{AVG} mean": math.nan,
                f"{AVG} std": math.nan,
                f"{AVG} ci95": math.nan,
                f"{AVG} n": pd.NA,
                f"{AVG} status": "missing",
            }
        )
    row["missing"] = tuple(missing)
    return row


def _accuracy_frame(data: list[dict[str, Any]], pairs: list[str]) -> pd.DataFrame:
    cols = ["rank", "backbone", "strategy"]
    for c in [*pairs, AVG]:
        cols += [f"{c} {f}" for f in COLUMN_FIELDS]
    cols.append("missing")
    df = pd.DataFrame(data, columns=[c for c in cols if c != "rank"])
    df.insert(0, "rank", pd.array([pd.NA] * len(df), dtype="Int64"))
    for c in [*pairs, AVG]:
        df[f"{c} mean"] = df[f"{c} mean"].astype("float64")
        df[f"{c} std"] = df[f"{c} std"].astype("float64")
        df[f"{c} ci95"] = df[f"{c} ci95"].astype("float64")
        df[f"{c} n"] = df[f"{c} n"].astype("Int64")
        df[f"{c} best"] = False
        df[f"{c} notes"] = [() for _ in range(len(df))]
    return df[cols]


def _mark_best(df: pd.DataFrame, columns: list[str]) -> None:
    for c in columns:
        values = df[f"{c} mean"]
        if values.notna().any():
            df[f"{c} best"] = values == values.max()


def _seeds_text(seeds: list[int]) -> str:
    return f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {', '.join(map(str, seeds))}"


def _footnotes(
    acc: pd.DataFrame, pairs: list[str], by_cell: dict[tuple[str, str, str], list[CellRecord]]
) -> tuple[list[Footnote], pd.DataFrame]:
    """Number the failed/diverged records in table order; identical status+error share a number."""
    notes: dict[tuple[str, str], Footnote] = {}
    rows: list[dict[str, Any]] = []
    for i, row in acc.iterrows():
        for p in pairs:
            bad = sorted(
                (r for r in by_cell.get((row["backbone"], row["strategy"], p), []) if not r.scored),
                key=lambda r: r.seed,
            )
            numbers: list[int] = []
            groups: dict[int, list[int]] = {}
            for r in bad:
                status = "diverged" if r.status == "diverged" else "failed"
                error = r.error or ("" if r.status != "ok" else "status ok but no finite target_acc recorded")
                key = (status, error)
                if key not in notes:
                    notes[key] = Footnote(number=len(notes) + 1, status=status, error=error)
                note = notes[key]
                groups.setdefault(note.number, []).append(r.seed)
                if note.number not in numbers:
                    numbers.append(note.number)
                rows.append(
                    {
                        "backbone": r.backbone,
                        "strategy": r.strategy,
                        "pair": p,
                        "seed": r.seed,
                        "status": r.status,
                        "error": r.error,
                        "footnote": note.number,
                    }
                )
            for number, seeds in groups.items():
                note = next(n for n in notes.values() if n.number == number)
                note.cells.append(f"{row['backbone']} / {row['strategy']} / {p}, {_seeds_text(seeds)}")
            acc.at[i, f"{p} notes"] = tuple(numbers)
    failures = pd.DataFrame(rows, columns=["backbone", "strategy", "pair", "seed", "status", "error", "footnote"])
    return sorted(notes.values(), key=lambda n: n.number), failures


def _mode(values: list[float]) -> Any:
    if not values:
        return pd.NA
    counts = pd.Series(values).value_counts()
    return int(max(v for v, c in counts.items() if c == counts.max()))


def _costs(acc: pd.DataFrame, records: list[CellRecord]) -> pd.DataFrame:
    out = []
    for _, row in acc.iterrows():
        recs = [r for r in records if (r.backbone, r.strategy) == (row["backbone"], row["strategy"])]
        ok = [r for r in recs if r.status == "ok"]

        def values(attr: str, pool: list[CellRecord]) -> list[float]:
            return [float(getattr(r, attr)) for r in pool if stats.finite_number(getattr(r, attr))]

        train, ev, mem, wall = (
            values("train_img_per_s", ok),
            values("eval_img_per_s", ok),
            values("peak_mem_mb", ok),
            values("wall_s", recs),
        )
        out.append(
            {
                "backbone": row["backbone"],
                "strategy": row["strategy"],
                "cells_ok": len(ok),
                "cells_failed": sum(r.status not in ("ok", "diverged") for r in recs),
                "cells_diverged": sum(r.status == "diverged" for r in recs),
                "train_img_per_s": sum(train) / len(train) if train else math.nan,
                "eval_img_per_s": sum(ev) / len(ev) if ev else math.nan,
                "peak_mem_mb": max(mem) if mem else math.nan,
                "wall_s_total": sum(wall) if wall else math.nan,
                "wall_s_mean": sum(wall) / len(wall) if wall else math.nan,
                "trainable_params": _mode(values("trainable_params", ok or recs)),
                "total_params": _mode(values("total_params", ok or recs)),
            }
        )
    df = pd.DataFrame(
        out,
        columns=[
            "backbone",
            "strategy",
            "cells_ok",
            "cells_failed",
            "cells_diverged",
            "train_img_per_s",
            "eval_img_per_s",
            "peak_mem_mb",
            "wall_s_total",
            "wall_s_mean",
            "trainable_params",
            "total_params",
        ],
    )
    for c in ("train_img_per_s", "eval_img_per_s", "peak_mem_mb", "wall_s_total", "wall_s_mean"):
        df[c] = df[c].astype("float64")
    for c in ("trainable_params", "total_params"):
        df[c] = df[c].astype("Int64")
    return df


def _references(refs: list[Any], pairs: list[str]) -> pd.DataFrame:
    """Published rows; Avg is the source's own number, else the mean when it covers every pair."""
    out = []
    for i, ref in enumerate(refs):
        if not isinstance(ref, dict) or not isinstance(ref.get("acc"), dict):
            raise UserError(
                f"suite reference[{i}]: expected a mapping with backbone, strategy, source, "
                f"acc {{pair: accuracy}} and optional avg; got {ref!r}"
            )
        acc = {str(k): float(v) for k, v in ref["acc"].items() if stats.finite_number(v)}
        row: dict[str, Any] = {
            "backbone": str(ref.get("backbone", "")),
            "strategy": str(ref.get("strategy", "")),
            "source": str(ref.get("source", "")) + (f"; weights: {ref['weights']}" if ref.get("weights") else ""),
        }
        for p in pairs:
            row[f"{p} mean"] = acc.get(p, math.nan)
        published = ref.get("avg")
        if stats.finite_number(published):
            row[f"{AVG} mean"], row["avg_published"] = float(published), True
        elif pairs and all(p in acc for p in pairs):
            row[f"{AVG} mean"], row["avg_published"] = sum(acc[p] for p in pairs) / len(pairs), False
        else:
            row[f"{AVG} mean"], row["avg_published"] = math.nan, False
        out.append(row)
    cols = ["backbone", "strategy", "source", *[f"{c} mean" for c in [*pairs, AVG]], "avg_published"]
    df = pd.DataFrame(out, columns=cols)
    for c in [*pairs, AVG]:
        df[f"{c} mean"] = df[f"{c} mean"].astype("float64")
    df["avg_published"] = df["avg_published"].astype(bool)
    return df


def _expected_cells(suite: dict[str, Any], pairs: list[str]) -> int | None:
    parts = [suite.get(k) for k in ("backbones", "strategies", "seeds")]
    if not all(isinstance(x, list) and x for x in parts) or not isinstance(suite.get("pairs"), list):
        return None
    runs = suite.get("backbone_pair_runs") or len(parts[0]) * len(suite["pairs"])
    return runs * len(parts[1]) * len(parts[2])


def _common(values: Iterable[str]) -> str:
    seen = list(dict.fromkeys(v for v in values if v))
    return ", ".join(seen)


def _environment(records: list[CellRecord], date: str | None) -> dict[str, str]:
    def seen(values: Iterable[Any]) -> str:
        return _common(str(v) for v in values if v) or "not recorded"

    return {
        "device": seen(r.device for r in records),
        "torch": seen(r.torch_version for r in records),
        "timm": seen(r.extra.get("timm_version") for r in records if isinstance(r.extra, dict)),
        "tlbench": seen(r.tlbench_version for r in records),
        "report date": date or _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
