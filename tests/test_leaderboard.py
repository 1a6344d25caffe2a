"""The leaderboard's numbers: means, stds, ranks, best marks, footnotes, missing pairs, references.

The fixture's numbers are chosen so every expected value is worked out by hand below: each cell's
seeds are ``mean - d, mean, mean + d``, whose sample std (ddof=1) is exactly ``d``.
"""

from __future__ import annotations

import math

import pandas as pd
import pytest

from tlbench.errors import UserError
from tlbench.reporting.leaderboard import build_leaderboard
from tlbench.reporting.write import report_dirs
from tlbench.spec.record import CellRecord
from tlbench.spec.store import ResultsDir
from tlbench.spec.summary import SuiteSummary

PAIRS = ["A->W", "D->W"]
XSS = "<script>alert(1)</script>"
DIVERGED = "loss became non-finite (nan) at step 12"

#: (backbone, strategy) -> {pair: (mean, d)} for the three seeds mean-d, mean, mean+d
PLAN = {
    ("bbA", "source_only"): {"A->W": (70, 1), "D->W": (90, 3)},  # Avg 80,   std 2
    ("bbA", "dann"): {"A->W": (80, 1), "D->W": (95, 1)},  # Avg 87.5, std 1
    ("bbA", "mmd"): {"A->W": (72, 2), "D->W": (94, 0)},  # Avg 83,   std 1
    ("bbB", "source_only"): {"A->W": (60, 1), "D->W": (80, 1)},  # Avg 70,   std 1
    ("bbB", "dann"): {"A->W": (80, 2), "D->W": (97, 1)},  # seed 1 of A->W fails: 78, 82
    ("bbB", "mmd"): {"D->W": (85, 0)},  # A->W diverges on every seed
    ("bbA", "kd"): {"D->W": (99, 0)},  # A->W never ran (half-finished)
}
SUITE = {
    "name": "office-test",
    "dataset": "office31",
    "pairs": PAIRS,
    "backbones": [{"name": "bbA"}, {"name": "bbB"}],
    "strategies": [{"name": s} for s in ("source_only", "dann", "mmd", "kd")],
    "seeds": [0, 1, 2],
    "reference": [
        {
            "backbone": "ResNet-50",
            "strategy": "DANN",
            "source": "Ganin et al. 2016 (JMLR) 100% & more",
            "acc": {"A->W": 82.0, "D->W": 96.9},
        },
        {"backbone": "ResNet-50", "strategy": "CDAN", "source": "Long et al. 2018", "acc": {"A->W": 94.1}, "avg": 87.7},
    ],
}


#: training images/s: per backbone, minus a per-strategy cost, plus 10 per seed (mean over seeds: +10)
BASE_SPEED = {"bbA": 100.0, "bbB": 300.0}
STRATEGY_COST = {"source_only": 0.0, "dann": 20.0, "mmd": 40.0, "kd": -50.0}


def record(backbone: str, strategy: str, pair: str, seed: int, **kw) -> CellRecord:
    source, target = pair.split("->")
    speed = BASE_SPEED.get(backbone, 1.0) - STRATEGY_COST.get(strategy, 0.0) + 10 * seed
    fields = dict(
        suite="office-test",
        dataset="office31",
        backbone=backbone,
        strategy=strategy,
        source=source,
        target=target,
        seed=seed,
        status="ok",
        train_img_per_s=speed,
        eval_img_per_s=400.0,
        peak_mem_mb=1000.0 + seed,
        trainable_params=1000,
        total_params=5000,
        steps=10,
        wall_s=2.0,
        device="cpu",
        torch_version="2.14.1",
        tlbench_version="0.1.0",
        cell_id=f"{backbone}-{strategy}-{source}{target}-s{seed}",
        started_at=f"2025-01-01T00:00:{len(strategy):02d}",
        extra={"timm_version": "1.0.31"},
    )
    fields.update(kw)
    return CellRecord(**fields)


def make_records() -> list[CellRecord]:
    out = []
    for (b, s), cells in PLAN.items():
        for pair in PAIRS:
            for seed in (0, 1, 2):
                if pair in cells:
                    mean, d = cells[pair]
                    if (b, s, pair, seed) == ("bbB", "dann", "A->W", 1):
                        out.append(
                            record(
                                b,
                                s,
                                pair,
                                seed,
                                status="failed",
                                target_acc=None,
                                train_img_per_s=None,
                                error=f"Traceback ...\nRuntimeError: {XSS}",
                            )
                        )
                    else:
                        out.append(record(b, s, pair, seed, target_acc=float(mean + (seed - 1) * d)))
                elif (b, s) == ("bbB", "mmd"):
                    out.append(record(b, s, pair, seed, status="diverged", error=DIVERGED, target_acc=None))
    return out


def write_results(root, records, suite=SUITE):
    rd = ResultsDir(root)
    for r in records:
        rd.write_record(r)
    rd.write_suite(SuiteSummary.from_dict(suite))
    return root


@pytest.fixture
def board():
    return build_leaderboard(make_records(), SUITE, date="2025-01-02")


def row(board, backbone, strategy) -> pd.Series:
    acc = board.accuracy
    return acc[(acc.backbone == backbone) & (acc.strategy == strategy)].iloc[0]


def test_rows_are_ranked_by_avg_with_unaveraged_rows_last(board):
    order = list(zip(board.accuracy.backbone, board.accuracy.strategy))
    assert order == [
        ("bbB", "dann"),
        ("bbA", "dann"),
        ("bbA", "mmd"),
        ("bbA", "source_only"),
        ("bbB", "source_only"),
        ("bbA", "kd"),
        ("bbB", "mmd"),
    ]
    # the rank is the position by Avg (88.5, 87.5, 83, 80, 70); 2 pairs x 3 seeds: the exact paired test's
    # smallest p is 2/2^6 = 0.031, and Holm's correction over the 10 pairs of rows lifts it to 0.31, so no
    # row is told apart: all share the group letter a
    assert board.accuracy["rank"].tolist()[:5] == [1, 2, 3, 4, 5]
    assert board.accuracy["group"].tolist()[:5] == ["a"] * 5 and board.accuracy["group"][5:].isna().all()
    assert not board.accuracy["reversal"].any()
    assert board.rank_text.startswith("Rank: position by Avg (1 = highest")
    assert board.accuracy["rank"].isna().tolist() == [False] * 5 + [True] * 2
    assert board.pairs == PAIRS and board.columns == [*PAIRS, "Avg"]


def test_cell_means_stds_and_n_are_the_hand_computed_ones(board):
    r = row(board, "bbA", "source_only")
    assert (r["A->W mean"], r["A->W std"], r["A->W n"]) == (70.0, 1.0, 3)
    assert (r["D->W mean"], r["D->W std"], r["D->W n"]) == (90.0, 3.0, 3)
    assert (r["Avg mean"], r["Avg std"], r["Avg n"]) == (80.0, 2.0, 3)
    r = row(board, "bbA", "mmd")
    assert (r["Avg mean"], r["Avg std"]) == (83.0, 1.0)
    assert r["D->W std"] == 0.0


def test_failed_seed_lowers_n_keeps_the_mean_and_drops_avg_std(board):
    r = row(board, "bbB", "dann")
    assert (r["A->W mean"], r["A->W n"], r["A->W status"]) == (80.0, 2, "partial")
    assert r["A->W std"] == pytest.approx(math.sqrt(8), abs=1e-12)  # std(78, 82)
    assert r["Avg mean"] == 88.5  # (80 + 97) / 2
    assert math.isnan(r["Avg std"]) and pd.isna(r["Avg n"])  # seed 1 lacks A->W
    assert r["A->W notes"] == (1,)


def test_best_marks_per_column_include_ties_and_ignore_references(board):
    acc = board.accuracy
    best = lambda c: sorted(zip(acc[acc[f"{c} best"]].backbone, acc[acc[f"{c} best"]].strategy))  # noqa: E731
    assert best("A->W") == [("bbA", "dann"), ("bbB", "dann")]  # 80 == 80: both marked
    assert best("D->W") == [("bbA", "kd")]  # 99, a row without Avg still counts
    assert best("Avg") == [("bbB", "dann")]  # 88.5; the reference's 89.45 is not ranked


def test_row_with_a_missing_pair_is_not_averaged(board):
    kd = row(board, "bbA", "kd")
    assert math.isnan(kd["Avg mean"]) and pd.isna(kd["rank"])
    assert kd["missing"] == ("A->W",) and kd["A->W status"] == "missing"
    assert "bbA / kd: Avg not computed, missing: A->W" in board.notes
    assert "39 of 48 cells have finished; the others are not shown." in board.notes


def test_diverged_and_failed_cells_get_footnotes(board):
    mmd = row(board, "bbB", "mmd")
    assert mmd["A->W status"] == "diverged" and math.isnan(mmd["A->W mean"]) and mmd["A->W notes"] == (2,)
    assert [(f.number, f.status) for f in board.footnotes] == [(1, "failed"), (2, "diverged")]
    assert board.footnotes[0].summary == f"RuntimeError: {XSS}"
    assert board.footnotes[0].cells == ["bbB / dann / A->W, seed 1"]
    assert board.footnotes[1].cells == ["bbB / mmd / A->W, seeds 0, 1, 2"]
    assert board.failures[["strategy", "seed", "status", "footnote"]].values.tolist() == [
        ["dann", 1, "failed", 1],
        ["mmd", 0, "diverged", 2],
        ["mmd", 1, "diverged", 2],
        ["mmd", 2, "diverged", 2],
    ]


def test_costs_per_row(board):
    costs = board.costs.set_index(["backbone", "strategy"])
    c = costs.loc[("bbA", "source_only")]
    assert c["train_img_per_s"] == 110.0  # seeds 100, 110, 120 on both pairs
    assert c["peak_mem_mb"] == 1002.0  # the max
    assert (c["wall_s_total"], c["wall_s_mean"]) == (12.0, 2.0)
    assert (c["trainable_params"], c["total_params"]) == (1000, 5000)
    d = costs.loc[("bbB", "dann")]
    assert (d["cells_ok"], d["cells_failed"], d["cells_diverged"]) == (5, 1, 0)
    assert d["train_img_per_s"] == 290.0  # 300 - 20 + 10; the failed cell's throughput is not counted
    assert costs.loc[("bbB", "mmd"), "cells_diverged"] == 3
    assert list(board.costs.strategy) == list(board.accuracy.strategy)


def test_references_are_separate_and_avg_is_published_or_complete(board):
    refs = board.references
    assert list(refs.strategy) == ["DANN", "CDAN"]
    assert refs.loc[0, "Avg mean"] == pytest.approx(89.45) and not refs.loc[0, "avg_published"]
    assert refs.loc[1, "Avg mean"] == 87.7 and refs.loc[1, "avg_published"]
    assert math.isnan(refs.loc[1, "D->W mean"])
    assert "DANN" not in set(board.accuracy.strategy)


def test_environment_protocol_and_title(board):
    assert board.environment == {
        "device": "cpu",
        "torch": "2.14.1",
        "timm": "1.0.31",
        "tlbench": "0.1.0",
        "report date": "2025-01-02",
    }
    assert "target labels never used for training or model selection" in board.protocol
    assert board.title == "office-test — office31" and board.n_seeds == 3


def test_pairs_come_from_records_when_the_suite_has_none():
    recs = [record("b", "s", "D->W", 0, target_acc=1.0), record("b", "s", "A->W", 0, target_acc=3.0)]
    board = build_leaderboard(recs, {})
    assert board.pairs == ["D->W", "A->W"] and board.accuracy.loc[0, "Avg mean"] == 2.0
    assert board.suite == "office-test"


def test_newest_duplicate_wins():
    old = record("b", "s", "A->W", 0, target_acc=50.0, started_at="2025-01-01", cell_id="x")
    new = record("b", "s", "A->W", 0, target_acc=60.0, started_at="2025-02-01", cell_id="y")
    board = build_leaderboard([new, old], {"pairs": ["A->W"]})
    assert board.accuracy.loc[0, "A->W mean"] == 60.0 and board.accuracy.loc[0, "A->W n"] == 1
    assert any("repeated" in n for n in board.notes)


def test_empty_records_give_empty_tables():
    board = build_leaderboard([], SUITE)
    assert board.accuracy.empty and board.costs.empty and len(board.references) == 2


def test_report_dirs_rejects_missing_and_empty_dirs(tmp_path):
    with pytest.raises(UserError, match="no such results directory"):
        report_dirs([tmp_path / "nope"], None, ["csv"])
    with pytest.raises(UserError, match="no finished cells"):
        report_dirs([tmp_path], None, ["csv"])
    with pytest.raises(UserError, match="--out"):
        report_dirs([tmp_path, tmp_path], None, ["csv"])
