"""Honest ranks: confidence intervals, the paired significance rule, Holm, Demšar's critical difference."""

from __future__ import annotations

import math

import pytest

from tlbench.reporting import stats
from tlbench.reporting.leaderboard import build_leaderboard
from tlbench.spec.record import CellRecord

PAIRS = ("a->b", "b->a", "a->c")


def test_ci95_is_students_t_half_width():
    assert stats.ci95_halfwidth(1.0, 4) == pytest.approx(3.182446 / 2, rel=1e-6)
    assert math.isnan(stats.ci95_halfwidth(1.0, 1))


def test_holm_adjusts_step_down_and_stays_monotone():
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])


def _results(values: dict[str, list[float]]) -> dict[tuple[str, int], float]:
    return {(pair, seed): v for pair, seeds in values.items() for seed, v in enumerate(seeds)}


def test_interleaving_results_share_a_rank_and_consistent_ones_do_not():
    # per pair, the two rows' seeds interleave: differences of both signs
    a = _results({"p1": [60, 70, 65], "p2": [50, 58, 54], "p3": [80, 74, 77]})
    b = _results({"p1": [62, 66, 68], "p2": [52, 55, 57], "p3": [78, 76, 75]})
    assert stats.significance_ranks([a, b]) == [1, 1]
    # every matched result of c is 5 points below a's: separated
    c = {k: v - 5 for k, v in a.items()}
    assert stats.paired_p_value(a, c) == (pytest.approx(2 / 2**9), 9)
    assert stats.significance_ranks([a, c]) == [1, 2]
    assert stats.significance_ranks([a, b, c]) == [1, 1, 3]


def test_too_few_matched_results_cannot_be_tested():
    one_seed = [_results({p: [80.0 + i] for p in PAIRS}) for i in range(2)]
    assert not stats.testable(one_seed)
    assert stats.testable([_results({"p1": [1, 2, 3], "p2": [4, 5, 6]}), _results({"p1": [0, 1, 2], "p2": [3, 4, 5]})])


def test_average_ranks_share_tied_positions():
    scores = {"A": {"p1": 90, "p2": 80}, "B": {"p1": 90, "p2": 70}, "C": {"p1": 50, "p2": 85}}
    assert stats.average_ranks(scores) == {"A": 1.75, "B": 2.25, "C": 2.0}


def test_critical_difference_matches_demsar_2006():
    # Demšar (2006), section 3.2.2: k = 4 classifiers on N = 14 data sets, q_0.05 = 2.569, CD = 1.25
    assert stats.critical_difference(4, 14) == pytest.approx(1.25, abs=0.005)


def _record(strategy: str, pair: str, seed: int, acc: float) -> CellRecord:
    source, target = pair.split("->")
    return CellRecord(
        suite="s",
        dataset="d",
        backbone="net",
        strategy=strategy,
        source=source,
        target=target,
        seed=seed,
        status="ok",
        target_acc=acc,
        cell_id=f"{strategy}{pair}{seed}",
        started_at=f"2024-01-01T00:00:{seed:02d}",
    )


def test_a_single_seed_board_says_its_ranks_are_not_tested():
    records = [_record(s, p, 0, acc + i) for i, p in enumerate(PAIRS) for s, acc in (("x", 70), ("y", 60))]
    board = build_leaderboard(records, {"name": "s"})
    assert board.accuracy["rank"].tolist() == [1, 2]
    assert "not tested for significance (one seed)" in board.rank_text
    assert board.rank_text in board.stats_text


def test_the_board_ties_strategies_no_test_separates():
    records = []
    for i, pair in enumerate(PAIRS):
        for seed in range(3):
            records += [
                _record("best", pair, seed, 80 + i + seed),
                _record("close", pair, seed, 80 + i + (2 - seed)),
                _record("worse", pair, seed, 60 + i + seed),
            ]
    board = build_leaderboard(records, {"name": "s"})
    ranks = dict(zip(board.accuracy["strategy"], board.accuracy["rank"]))
    assert ranks == {"best": 1, "close": 1, "worse": 3}
    assert board.rank_text.startswith("Rank: 1 + the number of rows significantly better")
    ci = board.accuracy.set_index("strategy").loc["best", "Avg ci95"]
    assert ci == pytest.approx(stats.ci95_halfwidth(1.0, 3))  # per-seed averages 81, 82, 83


def test_the_critical_difference_summary_needs_enough_pairs():
    pairs = [f"d{i}->e{i}" for i in range(6)]
    records = [_record(s, p, 0, acc + i) for i, p in enumerate(pairs) for s, acc in (("a", 90), ("b", 80), ("c", 70))]
    board = build_leaderboard(records, {"name": "s"})
    cd = board.critical_difference
    assert cd["strategy"].tolist() == ["a", "b", "c"] and cd["avg_rank"].tolist() == [1.0, 2.0, 3.0]
    assert cd["within_cd"].tolist() == [True, True, False]  # CD(3, 6) = 1.35
    assert "Nemenyi CD = 1.35" in board.cd_text
    few = build_leaderboard([r for r in records if r.source in ("d0", "d1")], {"name": "s"})
    assert few.critical_difference.empty and few.cd_text == ""
