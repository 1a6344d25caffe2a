"""The statistics behind a leaderboard's ranks: confidence intervals, paired tests, critical differences.

Ranks people can cite must not turn noise into wins. The rules, stated under every table:

* **Confidence interval** of a mean over seeds: Student's t, ``mean ± t(0.975, n−1) · std / √n``.
* **Significance rank** (the ``rank`` column): a row's rank is one plus the number of rows that are
  *significantly better* than it. Row A is significantly better than row B when A's mean over their
  matched (pair, seed) results is higher and a two-sided Wilcoxon signed-rank test on the matched
  differences gives p < 0.05 after Holm's correction over every pair of rows. Rows no test separates
  share a rank. A single-seed board on fewer than 6 matched results cannot separate anything (the
  exact test's smallest p is 2/2ⁿ), so it says that its ranks are not tested.
* **Critical difference** (Demšar, JMLR 7, 2006): strategies ranked per domain pair (1 = best,
  ties averaged), their average ranks, the Friedman test over pairs, and Nemenyi's critical
  difference ``CD = q_α √(k(k+1) / 6N)``: two strategies whose average ranks differ by less than CD
  are not told apart. Given where there are at least :data:`MIN_CD_PAIRS` pairs and 3 strategies.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
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


def significance_ranks(rows: Sequence[Matched]) -> list[int]:
    """Each row's rank: 1 + the number of rows significantly better than it (see the module's rules)."""
    pairs = list(itertools.combinations(range(len(rows)), 2))
    raw = [paired_p_value(rows[i], rows[j])[0] for i, j in pairs]
    better = [0] * len(rows)
    for (i, j), p in zip(pairs, holm(raw)):
        if p >= ALPHA:
            continue
        keys = set(rows[i]) & set(rows[j])
        diff = sum(rows[i][k] - rows[j][k] for k in keys)
        if diff > 0:
            better[j] += 1
        elif diff < 0:
            better[i] += 1
    return [1 + b for b in better]


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
