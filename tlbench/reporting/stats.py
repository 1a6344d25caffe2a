"""The statistics behind a leaderboard's ranks: confidence intervals, paired tests, critical differences.

Ranks people can cite must not turn noise into wins. The rules, stated under every table:

* **Confidence interval** of a mean over seeds: Student's t, ``mean ± t(0.975, n−1) · std / √n``.
* **Significantly better**: row A is significantly better than row B when A's mean over their
  matched (pair, seed) results is higher and a two-sided Wilcoxon signed-rank test on the matched
  differences gives p < 0.05 after Holm's correction over every pair of rows
  (:func:`significant_differences`). A single-seed board on fewer than 6 matched results cannot
  separate anything (the exact test's smallest p is 2/2ⁿ), so it says that it is not tested.
* **Groups** (the ``group`` column): a compact letter display (Piepho, "An algorithm for a
  letter-based representation of all-pairwise comparisons", J. Comput. Graph. Stat. 13, 2004;
  insert-and-absorb, then sweep) of those tests over the rows in Avg order: two rows share a letter
  exactly when no test separates them (:func:`letter_display`). Letters say *whether* two rows
  differ, never which is better: the leaderboard lists rows by Avg and names any pair whose
  significantly better row has the lower Avg (:mod:`tlbench.reporting.ranking`).
* **Significance rank** (:func:`significance_ranks`, no longer the leaderboard's ``rank``): one plus
  the number of rows significantly better.
* **Critical difference** (Demšar, JMLR 7, 2006): strategies ranked per domain pair (1 = best,
  ties averaged), their average ranks, the Friedman test over pairs, and Nemenyi's critical
  difference ``CD = q_α √(k(k+1) / 6N)``: two strategies whose average ranks differ by less than CD
  are not told apart. Given where there are at least :data:`MIN_CD_PAIRS` pairs and 3 strategies.
"""

from __future__ import annotations

import itertools
import math
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeGuard

ALPHA = 0.05
MIN_CD_PAIRS = 5
#: the fewest matched results with which the exact Wilcoxon test can reach p < 0.05 (2/2⁵ = 0.0625 > 0.05)
MIN_MATCHED = 6

Matched = Mapping[tuple[str, int], float]  # (pair, seed) -> target accuracy


def finite_number(x: object) -> TypeGuard[float]:
    """A real number that is neither NaN nor infinite (booleans are not numbers here)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def ci95_halfwidth(std: float, n: int) -> float:
    """Half-width of the 95 % Student-t confidence interval of a mean of ``n`` values with sample
    standard deviation ``std``; NaN for fewer than two values."""
    if n < 2 or not math.isfinite(std):
        return math.nan
    from scipy.stats import t

    return float(t.ppf(0.975, n - 1) * std / math.sqrt(n))


def paired_p_value(a: Matched, b: Matched) -> tuple[float, int]:
    """Two-sided Wilcoxon signed-rank p-value of ``a − b`` over their common (pair, seed) keys, and
    how many there were; p = 1 when fewer than two differences are non-zero."""
    keys = sorted(set(a) & set(b))
    diffs = [a[k] - b[k] for k in keys]
    if sum(1 for d in diffs if d != 0) < 2:
        return 1.0, len(keys)
    from scipy.stats import wilcoxon

    return float(wilcoxon(diffs, zero_method="wilcox", alternative="two-sided").pvalue), len(keys)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (same order as given)."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted = [1.0] * len(p_values)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


@dataclass(frozen=True)
class Difference:
    """Two rows (indices) told apart by the paired test: ``better`` has the higher matched mean."""

    better: int
    worse: int
    #: Holm-adjusted p-value of the two-sided Wilcoxon signed-rank test
    p: float
    #: mean of ``better − worse`` over their matched results (points, > 0)
    mean_diff: float
    #: how many matched (pair, seed) results the test compared
    matched: int


def significant_differences(rows: Sequence[Matched]) -> list[Difference]:
    """Every pair of rows the paired test separates (see the module's rules), in index order. A
    significant pair whose matched mean difference is exactly zero has no better row and is left out."""
    pairs = list(itertools.combinations(range(len(rows)), 2))
    tested = [paired_p_value(rows[i], rows[j]) for i, j in pairs]
    out = []
    for (i, j), (_, n), p in zip(pairs, tested, holm([p for p, _ in tested])):
        if p >= ALPHA:
            continue
        keys = set(rows[i]) & set(rows[j])
        diff = sum(rows[i][k] - rows[j][k] for k in keys)
        if diff != 0:
            better, worse = (i, j) if diff > 0 else (j, i)
            out.append(Difference(better, worse, p, abs(diff) / len(keys), n))
    return out


def significance_ranks(rows: Sequence[Matched]) -> list[int]:
    """Each row's rank: 1 + the number of rows significantly better than it (see the module's rules)."""
    better = [0] * len(rows)
    for d in significant_differences(rows):
        better[d.worse] += 1
    return [1 + b for b in better]


def letter_display(n: int, different: Iterable[tuple[int, int]]) -> list[str]:
    """A compact letter display of ``n`` rows (in display order) where the pairs in ``different`` differ
    significantly: two rows share a letter exactly when their pair is not in ``different``.

    Piepho (2004): start from one letter holding every row; for each differing pair, split every letter
    holding both into a copy without the one and a copy without the other, and absorb letters whose rows
    another letter holds too; then sweep out a row from a letter when each of its partners there shares
    another letter with it. Letters are named a, b, … in the order of their first row."""
    columns: list[frozenset[int]] = [frozenset(range(n))] if n else []
    for i, j in sorted({(min(p), max(p)) for p in different}):
        split: list[frozenset[int]] = []
        for col in columns:
            split += [col - {i}, col - {j}] if i in col and j in col else [col]
        columns = _absorb(split)
    columns = _sweep(columns)
    columns.sort(key=sorted)
    names = [_letter(k) for k in range(len(columns))]
    sep = "" if len(columns) <= 52 else ","
    return [sep.join(name for name, col in zip(names, columns) if row in col) for row in range(n)]


def _absorb(columns: list[frozenset[int]]) -> list[frozenset[int]]:
    """The columns that no other column contains (of equal ones, the first)."""
    return [
        c
        for k, c in enumerate(columns)
        if not any(c < d or (c == d and m < k) for m, d in enumerate(columns) if m != k)
    ]


def _sweep(columns: list[frozenset[int]]) -> list[frozenset[int]]:
    """Remove a row from a letter where every pair it makes there is also held by another letter (and
    the row keeps a letter); then absorb again."""
    columns = list(columns)
    for k in range(len(columns)):
        for row in sorted(columns[k]):
            others = [c for m, c in enumerate(columns) if m != k]
            if not any(row in c for c in others):
                continue
            if all(any(row in c and j in c for c in others) for j in columns[k] - {row}):
                columns[k] = columns[k] - {row}
    return _absorb([c for c in columns if c])


def _letter(k: int) -> str:
    letters = string.ascii_lowercase + string.ascii_uppercase
    return letters[k % 52] + (str(k // 52) if k >= 52 else "")


def testable(rows: Sequence[Matched]) -> bool:
    """Whether any two rows share enough matched results for the test to separate them at all."""
    return any(len(set(a) & set(b)) >= MIN_MATCHED for a, b in itertools.combinations(rows, 2))


def average_ranks(scores: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """``scores[strategy][pair]`` → each strategy's mean rank over the pairs every strategy has (1 = best)."""
    strategies = sorted(scores)
    common = sorted(set.intersection(*(set(scores[s]) for s in strategies))) if strategies else []
    totals = dict.fromkeys(strategies, 0.0)
    for pair in common:
        values = sorted(((scores[s][pair], s) for s in strategies), reverse=True)
        position = 0
        for _, tied in itertools.groupby(values, key=lambda v: v[0]):
            group = list(tied)
            shared = position + (len(group) + 1) / 2  # ties share the mean of their positions
            for _, s in group:
                totals[s] += shared
            position += len(group)
    return {s: totals[s] / len(common) for s in strategies} if common else {}


def critical_difference(k: int, n: int, alpha: float = ALPHA) -> float:
    """Nemenyi's critical difference for ``k`` strategies over ``n`` pairs (Demšar 2006, eq. 5)."""
    from scipy.stats import studentized_range

    q = studentized_range.ppf(1 - alpha, k, math.inf) / math.sqrt(2)
    return float(q * math.sqrt(k * (k + 1) / (6.0 * n)))


def friedman_p_value(scores: Mapping[str, Mapping[str, float]]) -> float:
    """The Friedman test's p-value that all strategies rank alike over the common pairs."""
    from scipy.stats import friedmanchisquare

    strategies = sorted(scores)
    common = sorted(set.intersection(*(set(scores[s]) for s in strategies)))
    return float(friedmanchisquare(*[[scores[s][p] for p in common] for s in strategies]).pvalue)
