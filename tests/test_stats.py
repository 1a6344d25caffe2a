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
    assert ranks == {"best": 1, "close": 1, "worse": 3}  # best and close: the same Avg, 82
    groups = dict(zip(board.accuracy["strategy"], board.accuracy["group"]))
    assert groups == {"best": "a", "close": "a", "worse": "b"}
    assert board.rank_text.startswith("Rank: position by Avg (1 = highest")
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


# -- groups (compact letter display) and the Avg order ----------------------------------------------------
def test_letter_display_by_hand():
    assert stats.letter_display(3, []) == ["a", "a", "a"]
    assert stats.letter_display(3, [(0, 1)]) == ["a", "b", "ab"]  # only the first two differ
    assert stats.letter_display(3, [(0, 1), (1, 2), (0, 2)]) == ["a", "b", "c"]
    # today's digits board in Avg order (self_training, kd, dann, mmd, source_only): kd beats dann, and
    # every row beats source_only
    assert stats.letter_display(5, [(1, 2), (0, 4), (1, 4), (2, 4), (3, 4)]) == ["ab", "a", "b", "ab", "c"]
    assert stats.letter_display(4, [(0, 2), (0, 3), (1, 3)]) == ["a", "ab", "bc", "c"]


def test_letters_are_shared_exactly_by_the_rows_no_test_separates():
    import itertools
    import random

    rng = random.Random(0)
    for _ in range(300):
        n = rng.randint(1, 7)
        different = {p for p in itertools.combinations(range(n), 2) if rng.random() < 0.4}
        letters = stats.letter_display(n, different)
        assert all(letters)  # every row has a letter
        for i, j in itertools.combinations(range(n), 2):
            assert bool(set(letters[i]) & set(letters[j])) == ((i, j) not in different), (n, different, letters)


#: the digits situation: kd (Avg 76.0) beats dann (75.4) by 0.6 on each of their nine matched results;
#: mmd (71.2) interleaves with both. Per pair, the three seeds.
DANN = {"a->b": [84.0, 84.5, 83.5], "b->a": [88.0, 89.0, 89.1], "a->c": [53.0, 54.0, 53.2]}
MMD_MINUS_DANN = [3, -10, 2, -12, 4, -9, 1, -11, -8]


def _digits_records():
    records = []
    for i, (pair, seeds) in enumerate(DANN.items()):
        for seed, acc in enumerate(seeds):
            records += [
                _record("dann", pair, seed, acc),
                _record("kd", pair, seed, acc + 0.6),
                _record("mmd", pair, seed, acc + MMD_MINUS_DANN[3 * i + seed]),
            ]
    return records


def test_rows_follow_avg_and_groups_show_what_the_tests_separate():
    board = build_leaderboard(_digits_records(), {"name": "s"})
    acc = board.accuracy
    # before: rank = 1 + rows significantly better put mmd (rank 1, lowest Avg) above dann (rank 2)
    assert stats.significance_ranks([_results_of(s) for s in ("kd", "dann", "mmd")]) == [1, 2, 1]
    assert acc["strategy"].tolist() == ["kd", "dann", "mmd"]
    assert acc["Avg mean"].is_monotonic_decreasing
    assert acc["rank"].tolist() == [1, 2, 3]
    assert acc["group"].tolist() == ["a", "b", "ab"]  # kd and dann differ; mmd differs from neither
    assert not acc["reversal"].any() and not [n for n in board.notes if n.startswith("†")]
    assert "Group: rows that share a letter are not told apart" in board.stats_text


def _results_of(strategy):
    """A row's results by (pair, seed), from the digits plan: what the paired test compares."""
    shift = {"dann": [0.0] * 9, "kd": [0.6] * 9, "mmd": MMD_MINUS_DANN}[strategy]
    return {
        (pair, seed): acc + shift[3 * i + seed]
        for i, (pair, seeds) in enumerate(DANN.items())
        for seed, acc in enumerate(seeds)
    }


def test_a_lower_avg_that_is_significantly_better_is_named_in_a_note():
    # "upper" has a fourth seed that "lower" lacks, at 100 on every pair: it lifts upper's Avg, while on
    # their nine matched results lower is 1 point better every time (exact p = 2/2^9)
    records = []
    for i, pair in enumerate(PAIRS):
        for seed in range(3):
            records += [_record("upper", pair, seed, 70.0 + i + seed), _record("lower", pair, seed, 71.0 + i + seed)]
        records.append(_record("upper", pair, 3, 100.0))
    board = build_leaderboard(records, {"name": "s"})
    acc = board.accuracy
    assert acc["strategy"].tolist() == ["upper", "lower"]  # Avg 79.0 before 73.0
    assert acc["Avg mean"].tolist() == [pytest.approx(79.0), pytest.approx(73.0)]
    assert acc["rank"].tolist() == [1, 2] and acc["group"].tolist() == ["a", "b"]
    assert acc["reversal"].tolist() == [True, True]
    (note,) = [n for n in board.notes if n.startswith("†")]
    assert note.startswith(
        "† net / lower is significantly better than net / upper on their 9 matched pair × seed results "
        "(mean difference +1.00 points, Holm-adjusted Wilcoxon p = 0.00391) although its Avg is lower "
        "(73.0 vs 79.0)"
    )
