"""The oracle track: the leaderboard as published tables select (best checkpoint by target accuracy),
beside the honest table, marked as using target labels, with the regret between the two; and the
significance marks of the honest table in every format."""

from __future__ import annotations

import pandas as pd
import pytest
from test_leaderboard import record
from test_reports import PLUGINS, check_latex_balanced, parse_html

from tlbench.plugins.registry import Registry
from tlbench.reporting.leaderboard import build_leaderboard
from tlbench.reporting.oracle_track import NO_CHOICE_NOTE, ORACLE_MAIN_NOTE
from tlbench.reporting.selection import CHECKPOINT_COLUMNS, select
from tlbench.reporting.write import write_reports

SUITE = {"name": "track", "dataset": "d", "pairs": ["A->W"], "seeds": [0]}
FORMATS = ["csv", "markdown", "html", "latex"]


@pytest.fixture
def registry():
    return Registry(entry_points=False, plugins=PLUGINS)


def checkpoint_rows(cell_id: str, accs: list[float]) -> list[dict]:
    """A cell's rows of a stored checkpoint table: one checkpoint per accuracy, the last one last."""
    return [
        {
            "backbone": "net",
            "strategy": "dann",
            "pair": "A->W",
            "seed": 0,
            "params": "default",
            "step": 10 * (k + 1),
            "last": k == len(accs) - 1,
            "target_acc": acc,
            "heldout_source_acc": None,
            "cell_id": cell_id,
            "oracle": acc,  # the oracle validator's score, as a written checkpoint table holds it
        }
        for k, acc in enumerate(accs)
    ]


def records_and_checkpoints():
    """dann: checkpoints at 70, 80 and 75 (the last, the record's own accuracy); source_only: one final
    checkpoint only (no evaluations), at 60."""
    dann = record("net", "dann", "A->W", 0, target_acc=75.0, cell_id="dann0")
    plain = record("net", "source_only", "A->W", 0, target_acc=60.0, cell_id="so0")
    return [dann, plain], {"dann0": checkpoint_rows("dann0", [70.0, 80.0, 75.0])}


def board_of(records, stored, rule="last"):
    return build_leaderboard(records, SUITE, selection=select(records, rule, {}, lambda _: None, stored))


def test_the_oracle_takes_the_best_checkpoint_and_regret_is_oracle_minus_honest():
    board = board_of(*records_and_checkpoints())
    honest = board.accuracy.set_index("strategy")
    oracle = board.oracle.set_index("strategy")
    assert honest.loc["dann", "Avg mean"] == 75.0 and honest.loc["source_only", "Avg mean"] == 60.0  # unchanged
    assert oracle.loc["dann", "A->W mean"] == 80.0 and oracle.loc["dann", "Avg mean"] == 80.0
    assert oracle.loc["dann", "regret"] == pytest.approx(5.0)
    # no checkpoint evaluations: the oracle's only candidate is the final checkpoint, and the text says so
    assert oracle.loc["source_only", "Avg mean"] == 60.0 and oracle.loc["source_only", "regret"] == 0.0
    assert "1 of 2 strategy/pair/seed entries have a single candidate" in board.oracle_text
    assert board.oracle["strategy"].tolist() == board.accuracy["strategy"].tolist()  # the honest order
    assert bool(oracle.loc["dann", "Avg best"]) and not bool(oracle.loc["source_only", "Avg best"])
    assert "USES TARGET LABELS" in board.oracle_heading and "USES TARGET LABELS" in board.oracle_text
    assert not {"rank", "group"} & set(board.oracle.columns)  # never ranked


def test_every_format_shows_the_track_marked_as_using_target_labels(tmp_path, registry):
    records, stored = records_and_checkpoints()
    write_reports(tmp_path, records, SUITE, FORMATS, registry=registry, stored_checkpoints=stored)
    track = pd.read_csv(tmp_path / "leaderboard_oracle.csv").set_index("strategy")
    assert track.loc["dann", "A->W mean"] == 80.0 and track.loc["dann", "regret"] == 5.0
    assert track.loc["source_only", "regret"] == 0.0
    honest = pd.read_csv(tmp_path / "leaderboard.csv").set_index("strategy")
    assert honest.loc["dann", "Avg mean"] == 75.0 and "regret" not in honest  # the honest file stays honest

    md = (tmp_path / "leaderboard.md").read_text()
    section = md.split("## Oracle track: best checkpoint by target accuracy (USES TARGET LABELS, not a method)")[1]
    section = section.split("\n## ")[0]
    assert "as published tables select; USES TARGET LABELS, not a method" in section
    rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in section.splitlines() if ln.startswith("|")]
    assert rows[0] == ["Backbone", "Strategy", "A→W", "Avg", "Regret (points)"]
    assert rows[2] == ["net", "dann", "**80.0**", "**80.0**", "+5.0"]
    assert md.index("## Target accuracy (%)") < md.index("## Oracle track")

    html = (tmp_path / "leaderboard.html").read_text()
    parse_html(html)
    assert 'id="oracle"' in html and "USES TARGET LABELS, not a method" in html and ">+5.0</td>" in html
    tex = (tmp_path / "leaderboard.tex").read_text()
    check_latex_balanced(tex)
    assert r"\caption{Oracle track: best checkpoint by target accuracy (USES TARGET LABELS, not a method)" in tex
    assert r"net & dann & \textbf{80.0} & \textbf{80.0} & +5.0 \\" in tex


def test_without_checkpoint_evaluations_there_is_no_track_and_the_notes_say_why(tmp_path, registry):
    records, _ = records_and_checkpoints()
    board = board_of(records, {})
    assert board.oracle.empty and not board.has_oracle and NO_CHOICE_NOTE in board.notes
    write_reports(tmp_path, records, SUITE, FORMATS, registry=registry)
    md = (tmp_path / "leaderboard.md").read_text()
    assert "## Oracle track" not in md and "No oracle track: no cell has more than one candidate" in md
    assert "Oracle track" not in (tmp_path / "leaderboard.tex").read_text()
    track = pd.read_csv(tmp_path / "leaderboard_oracle.csv")  # written, headers only: no stale file survives
    assert track.empty and {"backbone", "strategy", "A->W mean", "Avg mean", "regret"} <= set(track.columns)


def test_a_main_table_chosen_by_the_oracle_has_no_second_track():
    from tlbench.plugins.registry import get_registry

    registry = get_registry()
    validators = {"oracle": registry.get("validator", "oracle")()}
    records, stored = records_and_checkpoints()
    board = build_leaderboard(records, SUITE, selection=select(records, "oracle", validators, lambda _: None, stored))
    assert board.accuracy.set_index("strategy").loc["dann", "Avg mean"] == 80.0
    assert board.oracle.empty and ORACLE_MAIN_NOTE in board.notes


def test_the_oracle_choice_equals_the_oracle_validator(tmp_path):
    """The track is what ``--selection oracle`` shows: same records, checkpoint by checkpoint."""
    from tlbench.plugins.registry import get_registry

    registry = get_registry()
    validators = {"oracle": registry.get("validator", "oracle")()}
    records, stored = records_and_checkpoints()
    stored["so0"] = checkpoint_rows("so0", [61.0, 60.0])
    honest = select(records, "last", validators, lambda _: None, stored)
    oracle = select(records, "oracle", validators, lambda _: None, stored)
    assert [(r.cell_id, r.target_acc) for r in honest.oracle] == [(r.cell_id, r.target_acc) for r in oracle.records]
    assert sorted(r.target_acc for r in honest.oracle) == [61.0, 80.0]
    assert set(CHECKPOINT_COLUMNS) <= set(honest.checkpoints.columns)


def test_a_reversal_is_marked_in_every_format(tmp_path, registry):
    # "upper" has a fourth seed that "lower" lacks; on their nine matched results lower is 1 point better
    suite = {"name": "rev", "dataset": "d", "pairs": ["A->W", "D->W", "A->D"], "seeds": [0, 1, 2, 3]}
    records = []
    for i, pair in enumerate(suite["pairs"]):
        for seed in range(3):
            records += [
                record("net", "upper", pair, seed, target_acc=70.0 + i + seed),
                record("net", "lower", pair, seed, target_acc=71.0 + i + seed),
            ]
        records.append(record("net", "upper", pair, 3, target_acc=100.0))
    write_reports(tmp_path, records, suite, FORMATS, registry=registry)
    md = (tmp_path / "leaderboard.md").read_text()
    rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in md.splitlines() if ln.startswith("|")]
    assert rows[2][:4] == ["1", "a†", "net", "upper"] and rows[3][:4] == ["2", "b†", "net", "lower"]
    assert "- † net / lower is significantly better than net / upper on their 9 matched" in md
    csv = pd.read_csv(tmp_path / "leaderboard.csv")
    assert csv[["rank", "group", "reversal"]].values.tolist() == [[1, "a", True], [2, "b", True]]
    assert list(csv.columns[:3]) == ["rank", "backbone", "strategy"]  # the old columns keep their places
    html = (tmp_path / "leaderboard.html").read_text()
    parse_html(html)
    assert "† net / lower is significantly better than net / upper" in html
    tex = (tmp_path / "leaderboard.tex").read_text()
    check_latex_balanced(tex)
    assert r"1 & a$^{\dagger}$ & net & upper" in tex
    assert r"$^{\dagger}$ net / lower is significantly better than net / upper" in tex
