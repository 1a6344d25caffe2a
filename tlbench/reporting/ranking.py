"""Ranking a leaderboard's rows honestly and readably: Avg order, significance groups, and the
critical-difference summary.

Rows are always listed by Avg (highest first) and ``rank`` is that position (equal Avgs share it), so
the order never contradicts the means. Significance is shown beside it, not folded into it: the
``group`` letters (a compact letter display of the paired tests) say which rows no test separates.
Paired tests on matched results can find the row with the *lower* Avg significantly better (the Avg
also averages results only one row has, and weights pairs equally); every such pair is named in a
note (``†``), with the direction and p. Before this, ``rank`` was 1 + the number of rows significantly
better, and rows were listed in that order (a row no test separated from anything could lead rows with
higher Avgs). The statistics themselves (and the rules, in words) are in :mod:`tlbench.reporting.stats`.
"""

from __future__ import annotations

from typing import cast

import pandas as pd

from tlbench.reporting import stats
from tlbench.spec.record import CellRecord

#: the name of the leaderboard's average column (``tlbench.reporting.leaderboard.AVG``)
AVG = "Avg"
RANK_TESTED = (
    "Rank: position by Avg (1 = highest; equal Avgs share a rank); rows are listed in that order. Group: "
    "rows that share a letter are not told apart by a two-sided Wilcoxon signed-rank test on their matched "
    "pair × seed results (Holm-corrected over all pairs of rows, p < 0.05); rows without a common letter "
    "differ significantly (compact letter display, Piepho 2004). Where the significantly better of two "
    "rows has the lower Avg, a † note names both."
)
RANK_UNTESTED = (
    "Rank: position by Avg (1 = highest; equal Avgs share a rank), not tested for significance ({why}): "
    "a difference within the seeds' spread may be noise."
)
#: a pair of rows whose significance contradicts their Avg order (the mark, in the group cell, is REVERSAL_MARK)
REVERSAL_MARK = "†"
REVERSAL_TEXT = (
    REVERSAL_MARK + " {better} is significantly better than {worse} on their {n} matched pair × seed results "
    "(mean difference +{diff:.2f} points, Holm-adjusted Wilcoxon p = {p:.3g}) although its Avg is lower "
    "({better_avg:.1f} vs {worse_avg:.1f}): Avg weights every pair equally over each row's own seeds, the "
    "test compares only the results both rows have."
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


def rank_rows(
    df: pd.DataFrame, matched: dict[tuple[str, str], dict], n_seeds: int
) -> tuple[pd.DataFrame, str, list[str]]:
    """Rows with an Avg in Avg order (ties by backbone and strategy, so the order never depends on the
    order of the records), then the others; ``rank`` is the position by Avg, ``group`` the letters of
    :func:`tlbench.reporting.stats.letter_display` (<NA> when untested), ``reversal`` whether the row is
    in a pair whose significantly better row has the lower Avg. Returns the frame, the sentence saying
    how ranks and groups were decided, and one note per such pair (:data:`REVERSAL_TEXT`)."""
    df = df.sort_values(["backbone", "strategy"], kind="stable")
    has = df[f"{AVG} mean"].notna()
    ranked = df[has].sort_values(f"{AVG} mean", ascending=False, kind="stable").reset_index(drop=True)
    ranked["rank"] = ranked[f"{AVG} mean"].rank(method="min", ascending=False)
    ranked["reversal"] = False
    results = [matched.get(key, {}) for key in zip(ranked["backbone"], ranked["strategy"])]
    notes: list[str] = []
    if len(results) > 1 and stats.testable(results):
        differences = stats.significant_differences(results)
        ranked["group"] = pd.array(
            stats.letter_display(len(results), [(d.better, d.worse) for d in differences]), dtype="object"
        )
        avg = ranked[f"{AVG} mean"].tolist()
        for d in differences:
            if avg[d.better] < avg[d.worse]:
                ranked.loc[[d.better, d.worse], "reversal"] = True
                notes.append(
                    REVERSAL_TEXT.format(
                        better=_name(ranked, d.better),
                        worse=_name(ranked, d.worse),
                        n=d.matched,
                        diff=d.mean_diff,
                        p=d.p,
                        better_avg=avg[d.better],
                        worse_avg=avg[d.worse],
                    )
                )
        text = RANK_TESTED
    else:
        why = "one seed" if n_seeds <= 1 else f"fewer than {stats.MIN_MATCHED} matched pair × seed results"
        text = RANK_UNTESTED.format(why=why)
    out = pd.concat([ranked, df[~has]]) if len(ranked) else df[~has].copy()
    out["rank"] = out["rank"].astype("Int64")
    out["reversal"] = out["reversal"].astype(bool)
    return out.reset_index(drop=True), text, notes


def _name(df: pd.DataFrame, i: int) -> str:
    return f"{df.at[i, 'backbone']} / {df.at[i, 'strategy']}"


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
