"""Ranking a leaderboard's rows honestly: significance ranks and the critical-difference summary.

The statistics themselves (and the rules, in words) are in :mod:`tlbench.reporting.stats`.
"""

from __future__ import annotations

from typing import cast

import pandas as pd

from tlbench.reporting import stats
from tlbench.spec.record import CellRecord

#: the name of the leaderboard's average column (``tlbench.reporting.leaderboard.AVG``)
AVG = "Avg"
RANK_TESTED = (
    "Rank: 1 + the number of rows significantly better (two-sided Wilcoxon signed-rank test on the "
    "matched pair × seed results, Holm-corrected over all pairs of rows, p < 0.05); rows that no test "
    "separates share a rank."
)
RANK_UNTESTED = (
    "Ranks follow Avg and are not tested for significance ({why}): a difference within the seeds' spread may be noise."
)
CD_TEXT = (
    "Critical difference (Demšar, JMLR 2006): each strategy's rank on each pair (1 = best), averaged over "
    "{n} pairs; Friedman test p = {p:.3g}; Nemenyi CD = {cd:.2f} at α = 0.05. Strategies whose average ranks "
    "differ by less than CD are not told apart."
)


def matched_results(by_cell: dict[tuple[str, str, str], list[CellRecord]]) -> dict[tuple[str, str], dict]:
    """Each row's finished results keyed by (pair, seed): what the paired test compares."""
    out: dict[tuple[str, str], dict[tuple[str, int], float]] = {}
    for (backbone, strategy, pair), recs in by_cell.items():
        for r in recs:
            if r.scored:  # so target_acc is a finite number
                out.setdefault((backbone, strategy), {})[(pair, r.seed)] = float(cast(float, r.target_acc))
    return out


def rank_rows(df: pd.DataFrame, matched: dict[tuple[str, str], dict], n_seeds: int) -> tuple[pd.DataFrame, str]:
    """Rows with an Avg ranked (see :mod:`tlbench.reporting.stats`), in rank then Avg order, then
    the others; ties and unranked rows by backbone and strategy, so the order never depends on the
    order of the records. Returns the frame and the sentence saying how ranks were decided."""
    df = df.sort_values(["backbone", "strategy"], kind="stable")
    has = df[f"{AVG} mean"].notna()
    ranked = df[has].sort_values(f"{AVG} mean", ascending=False, kind="stable")
    results = [matched.get(key, {}) for key in zip(ranked["backbone"], ranked["strategy"])]
    if len(results) > 1 and stats.testable(results):
        ranked["rank"] = stats.significance_ranks(results)
        ranked = ranked.sort_values("rank", kind="stable")
        text = RANK_TESTED
    else:
        ranked["rank"] = ranked[f"{AVG} mean"].rank(method="min", ascending=False)
        why = "one seed" if n_seeds <= 1 else f"fewer than {stats.MIN_MATCHED} matched pair × seed results"
        text = RANK_UNTESTED.format(why=why)
    out = pd.concat([ranked, df[~has]]) if len(ranked) else df[~has].copy()
    out["rank"] = out["rank"].astype("Int64")
    return out.reset_index(drop=True), text


def critical_difference_summary(acc: pd.DataFrame, pairs: list[str]) -> tuple[pd.DataFrame, str]:
    """Demšar's average ranks over pairs per backbone, where there are enough pairs and strategies."""
    rows, texts = [], []
    for backbone, sub in acc.groupby("backbone", sort=True):
        scores = {
            r["strategy"]: {p: float(r[f"{p} mean"]) for p in pairs if pd.notna(r[f"{p} mean"])}
            for _, r in sub.iterrows()
        }
        scores = {s: v for s, v in scores.items() if len(v) == len(pairs)}
        if len(pairs) < stats.MIN_CD_PAIRS or len(scores) < 3:
            continue
        ranks = stats.average_ranks(scores)
        cd = stats.critical_difference(len(ranks), len(pairs))
        best = min(ranks.values())
        rows += [
            {"backbone": backbone, "strategy": s, "avg_rank": r, "within_cd": r - best < cd}
            for s, r in sorted(ranks.items(), key=lambda kv: kv[1])
        ]
        texts.append(CD_TEXT.format(n=len(pairs), p=stats.friedman_p_value(scores), cd=cd))
    frame = pd.DataFrame(rows, columns=["backbone", "strategy", "avg_rank", "within_cd"])
    return frame, " ".join(dict.fromkeys(texts))
