"""The leaderboard's accuracy table: one row per backbone × strategy, mean ± std per column, best marks,
and the footnotes that keep every failed or diverged cell in view (the rules: :mod:`tlbench.reporting.leaderboard`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import pandas as pd

from tlbench.reporting import stats
from tlbench.reporting.ranking import AVG
from tlbench.spec.record import CellRecord

#: per-column fields of :attr:`Leaderboard.accuracy`, named ``f"{column} {field}"``
COLUMN_FIELDS = ("mean", "std", "ci95", "n", "best", "status", "notes")
#: cell statuses in :attr:`Leaderboard.accuracy` (``f"{column} status"``)
CELL_STATUSES = ("ok", "partial", "failed", "diverged", "failed/diverged", "missing")
#: records by (backbone, row label, column)
ByCell = dict[tuple[str, str, str], list[CellRecord]]


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


def row_stats(
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
        # a scored record's target_acc is a finite number
        values = [float(cast(float, r.target_acc)) for r in recs if r.scored]
        for r in recs:
            if r.scored:
                per_seed.setdefault(r.seed, {})[p] = float(cast(float, r.target_acc))
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


def accuracy_frame(data: list[dict[str, Any]], pairs: list[str]) -> pd.DataFrame:
    cols = ["rank", "backbone", "strategy"]
    for c in [*pairs, AVG]:
        cols += [f"{c} {f}" for f in COLUMN_FIELDS]
    cols += ["missing", "group", "reversal"]  # group, reversal: added later, so last (CSV readers by position)
    df = pd.DataFrame(data, columns=[c for c in cols if c not in ("rank", "group", "reversal")])
    df.insert(0, "rank", pd.array([pd.NA] * len(df), dtype="Int64"))
    df["group"] = pd.array([pd.NA] * len(df), dtype="object")
    df["reversal"] = False
    for c in [*pairs, AVG]:
        df[f"{c} mean"] = df[f"{c} mean"].astype("float64")
        df[f"{c} std"] = df[f"{c} std"].astype("float64")
        df[f"{c} ci95"] = df[f"{c} ci95"].astype("float64")
        df[f"{c} n"] = df[f"{c} n"].astype("Int64")
        df[f"{c} best"] = False
        df[f"{c} notes"] = [() for _ in range(len(df))]
    return df[cols]


def mark_best(df: pd.DataFrame, columns: list[str]) -> None:
    for c in columns:
        values = df[f"{c} mean"]
        if values.notna().any():
            df[f"{c} best"] = values == values.max()


def _seeds_text(seeds: list[int]) -> str:
    return f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {', '.join(map(str, seeds))}"


def number_footnotes(
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
                        "strategy": r.label,
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
