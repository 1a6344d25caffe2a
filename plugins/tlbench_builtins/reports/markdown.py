"""``markdown`` reporter: ``leaderboard.md``, GitHub-flavoured tables that read well as plain text too."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd
from tabulate import tabulate

from tlbench import Leaderboard, Reporter, atomic_write_text, hookimpl

SUPERSCRIPT = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")
_MD_SPECIAL = "\\`*[]<>|#"


def md_escape(text: Any) -> str:
    """Data (names, errors) as literal text in a table cell: no markup, no HTML, no line breaks."""
    s = " ".join(str(text).split())
    return "".join("\\" + ch if ch in _MD_SPECIAL else ch for ch in s)


def pair_label(column: str) -> str:
    """A pair column's heading, escaped: domain names are data (a folder may be called ``<img ...>``)."""
    return md_escape(column.replace("->", "→"))


def _missing(x: Any) -> bool:
    return x is None or x is pd.NA or (isinstance(x, float) and math.isnan(x))


def marks(notes: tuple[int, ...]) -> str:
    return ",".join(str(n).translate(SUPERSCRIPT) for n in notes)


def cell_text(board: Leaderboard, row: pd.Series, column: str, digits: int = 1) -> str:
    """``82.0 ± 2.0`` (bold when best), ``(n=2)`` when n differs from the seed count, footnote marks."""
    get = lambda f: row[board.col(column, f)]  # noqa: E731
    mean, std, n, status, notes = get("mean"), get("std"), get("n"), get("status"), get("notes")
    if _missing(mean):
        text = "—" if status in ("missing", "ok") else status
        return text + marks(notes)
    text = f"{mean:.{digits}f}"
    if not _missing(std):
        text += f" ± {std:.{digits}f}"
    if get("best"):
        text = f"**{text}**"
    if not _missing(n) and int(n) != board.n_seeds:
        text += f" (n={int(n)})"
    return text + marks(notes)


def number(x: Any, fmt: str) -> str:
    return "—" if _missing(x) else format(x, fmt)


def has_groups(board: Leaderboard) -> bool:
    """Whether the rows were tested for significance (then the tables show the group letters)."""
    return "group" in board.accuracy and bool(board.accuracy["group"].notna().any())


def group_text(row: pd.Series, mark: str = "†") -> str:
    """The row's significance letters, marked where a note names it (its significance contradicts Avg)."""
    text = "—" if _missing(row["group"]) else str(row["group"])
    return text + (mark if row.get("reversal", False) else "")


def accuracy_table(board: Leaderboard) -> str:
    groups = has_groups(board)
    headers = ["Rank", *(["Group"] if groups else []), "Backbone", "Strategy", *[pair_label(c) for c in board.columns]]
    rows = []
    for _, row in board.accuracy.iterrows():
        rank = "—" if _missing(row["rank"]) else str(int(row["rank"]))
        rows.append(
            [
                rank,
                *([group_text(row)] if groups else []),
                md_escape(row["backbone"]),
                md_escape(row["strategy"]),
                *[cell_text(board, row, c) for c in board.columns],
            ]
        )
    align = ["right", *(["left"] if groups else []), "left", "left", *["right"] * len(board.columns)]
    return _table(rows, headers, align)


def oracle_table(board: Leaderboard) -> str:
    """The oracle track: mean ± std per pair and Avg of the oracle's choices, and the regret per row."""
    headers = ["Backbone", "Strategy", *[pair_label(c) for c in board.columns], "Regret (points)"]
    rows = [
        [
            md_escape(row["backbone"]),
            md_escape(row["strategy"]),
            *[cell_text(board, row, c) for c in board.columns],
            number(row["regret"], "+.1f"),
        ]
        for _, row in board.oracle.iterrows()
    ]
    return _table(rows, headers, ["left", "left", *["right"] * (len(board.columns) + 1)])


def critical_difference_table(board: Leaderboard) -> str:
    headers = ["Backbone", "Strategy", "Average rank", "Within CD of the best"]
    rows = [
        [md_escape(r["backbone"]), md_escape(r["strategy"]), f"{r['avg_rank']:.2f}", "yes" if r["within_cd"] else "no"]
        for _, r in board.critical_difference.iterrows()
    ]
    return _table(rows, headers, ["left", "left", "right", "left"])


def reference_table(board: Leaderboard) -> str:
    headers = ["Backbone", "Strategy", *[pair_label(c) for c in board.columns], "Source"]
    rows = []
    for _, ref in board.references.iterrows():
        values = [number(ref[board.col(c, "mean")], ".1f") for c in board.columns]
        if not _missing(ref[board.col("Avg", "mean")]) and not ref["avg_published"]:
            values[-1] += " (computed)"
        rows.append([md_escape(ref["backbone"]), md_escape(ref["strategy"]), *values, md_escape(ref["source"])])
    return _table(rows, headers, ["left", "left", *["right"] * len(board.columns), "left"])


def cost_table(board: Leaderboard) -> str:
    headers = [
        "Backbone",
        "Strategy",
        "Train img/s",
        "Eval img/s",
        "Peak mem (MB)",
        "Wall total (s)",
        "Wall per cell (s)",
        "Trainable params",
        "Total params",
        "Cells ok / failed / diverged",
    ]
    rows = []
    for _, c in board.costs.iterrows():
        rows.append(
            [
                md_escape(c["backbone"]),
                md_escape(c["strategy"]),
                number(c["train_img_per_s"], ",.1f"),
                number(c["eval_img_per_s"], ",.1f"),
                number(c["peak_mem_mb"], ",.0f"),
                number(c["wall_s_total"], ",.1f"),
                number(c["wall_s_mean"], ",.1f"),
                number(c["trainable_params"], ","),
                number(c["total_params"], ","),
                f"{c['cells_ok']} / {c['cells_failed']} / {c['cells_diverged']}",
            ]
        )
    return _table(rows, headers, ["left", "left", *["right"] * 7, "center"])


def validator_table(board: Leaderboard) -> str:
    headers = ["Validator", "Mean regret (points)", "Rank correlation", "Groups", "Main table"]
    rows = [
        [
            md_escape(v["validator"]) + (" (uses target labels)" if v["uses_target_labels"] else ""),
            number(v["mean_regret"], ".2f"),
            number(v["rank_correlation"], ".2f"),
            str(v["groups"]),
            "yes" if v["selected"] else "",
        ]
        for _, v in board.validators.iterrows()
    ]
    return _table(rows, headers, ["left", "right", "right", "right", "left"])


def chosen_table(board: Leaderboard) -> str:
    headers = ["Backbone", "Strategy", "Pair", "Seed", "Parameters", "Step", "Target acc", "Oracle acc"]
    rows = [
        [
            md_escape(c["backbone"]),
            md_escape(c["strategy"]),
            pair_label(c["pair"]),
            str(c["seed"]),
            md_escape(c["params"]),
            str(c["step"]),
            number(c["target_acc"], ".1f"),
            number(c["oracle_acc"], ".1f"),
        ]
        for _, c in board.chosen.iterrows()
    ]
    return _table(rows, headers, ["left", "left", "left", "right", "left", "right", "right", "right"])


def selection_sections(board: Leaderboard) -> list[str]:
    """The validator table and the chosen candidates, when there was a choice to make."""
    if not board.has_choices:
        return []
    return [
        "## Validators",
        "",
        board.validator_text,
        "",
        validator_table(board),
        "",
        f"## Chosen parameters and checkpoints (selection: {md_escape(board.selection)})",
        "",
        chosen_table(board),
        "",
    ]


def _table(rows: list[list[str]], headers: list[str], align: list[str]) -> str:
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True, colalign=align)


def _code(text: str) -> str:
    """Inline code that shows any error text literally (no markdown, no HTML)."""
    s = " ".join(text.split())
    fence = "`"
    while fence in s:
        fence += "`"
    return f"{fence} {s} {fence}"


def render(board: Leaderboard) -> str:
    out = [f"# Leaderboard: {md_escape(board.title)}", ""]
    if board.mixed:
        out += [f"**{md_escape(board.mixed)}**", ""]
    out += [f"**Protocol:** {board.protocol}.", "", board.stats_text, ""]
    out += ["**Environment:** " + "; ".join(f"{k}: {md_escape(v)}" for k, v in board.environment.items()), ""]
    out += ["## Target accuracy (%)", "", accuracy_table(board), ""]
    best = "Bold: best measured value of each column."
    out += [best + (f" Cells without (n=…) have n = {board.n_seeds} seeds." if board.n_seeds else ""), ""]
    for note in board.notes:
        out.append(f"- {pair_label(note)}")
    if board.notes:
        out.append("")
    if board.has_oracle:
        out += [f"## {board.oracle_heading}", "", board.oracle_text, "", oracle_table(board), ""]
    if len(board.references):
        out += ["## Published reference numbers (not measured here, not ranked)", "", reference_table(board), ""]
    if len(board.critical_difference):
        out += ["## Critical difference", "", board.cd_text, "", critical_difference_table(board), ""]
    out += selection_sections(board)
    out += [
        "## Cost",
        "",
        "Throughput and memory: ok cells only (mean; memory: max). Wall time: every cell.",
        "",
        cost_table(board),
        "",
    ]
    if board.footnotes:
        out += ["## Footnotes", ""]
        for fn in board.footnotes:
            where = "; ".join(pair_label(c) for c in fn.cells)
            out.append(f"{marks((fn.number,))} **{fn.status}** ({where}): {_code(fn.summary)}  ")
        out.append("")
    return "\n".join(out)


class MarkdownReporter(Reporter):
    name = "markdown"
    description = "leaderboard.md: GitHub markdown tables (accuracy, references, cost, footnotes)"

    def write(self, board: Leaderboard, out_dir: Path) -> list[Path]:
        path = Path(out_dir) / "leaderboard.md"
        atomic_write_text(path, render(board))
        return [path]


@hookimpl
def register_reporters(register):
    register(MarkdownReporter)
