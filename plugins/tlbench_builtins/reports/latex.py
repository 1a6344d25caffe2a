"""``latex`` reporter: ``leaderboard.tex``, booktabs tables ready to paste into a paper.

Needs ``\\usepackage{booktabs}`` in the preamble and nothing else. Best values are bold; published
reference rows sit below a ``\\midrule``, marked "ref." and never ranked. Every string from data is
escaped, and non-ASCII text is reduced to ASCII so pdflatex accepts it without extra packages.
"""

from __future__ import annotations

import math
import re
import unicodedata
from pathlib import Path
from typing import Any

import pandas as pd

from tlbench import Leaderboard, Reporter, atomic_write_text, hookimpl

_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
    "|": r"\textbar{}",
}
_UNICODE = {
    "—": "---",
    "–": "--",
    "±": r"$\pm$",
    "→": r"$\rightarrow$",
    "×": r"$\times$",
    "…": r"\ldots{}",
    "µ": r"$\mu$",
    "°": r"$^\circ$",
    "‘": "`",
    "’": "'",
    "“": "``",
    "”": "''",
    "†": r"$^{\dagger}$",
}
ARROW = r"$\rightarrow$"


def tex_escape(text: Any) -> str:
    """Literal text for LaTeX: specials escaped, ``->`` as an arrow, other non-ASCII made ASCII."""
    out = []
    for i, part in enumerate(" ".join(str(text).split()).split("->")):
        if i:
            out.append(ARROW)
        for ch in part:
            if ch in _SPECIAL:
                out.append(_SPECIAL[ch])
            elif ch in _UNICODE:
                out.append(_UNICODE[ch])
            elif ord(ch) < 128:
                out.append(ch)
            else:
                ascii_ = unicodedata.normalize("NFKD", ch).encode("ascii", "ignore").decode()
                out.append("".join(_SPECIAL.get(c, c) for c in ascii_) or "?")
    return "".join(out)


def _missing(x: Any) -> bool:
    return x is None or x is pd.NA or (isinstance(x, float) and math.isnan(x))


def _marks(notes: tuple[int, ...]) -> str:
    return f"$^{{{','.join(map(str, notes))}}}$" if notes else ""


def cell(board: Leaderboard, row: pd.Series, column: str) -> str:
    get = lambda f: row[board.col(column, f)]  # noqa: E731
    mean, std, n, status, notes = get("mean"), get("std"), get("n"), get("status"), get("notes")
    if _missing(mean):
        return ("--" if status in ("missing", "ok") else tex_escape(status)) + _marks(notes)
    text = f"{mean:.1f}"
    if not _missing(std):
        text += f"{{\\scriptsize$\\pm${std:.1f}}}"
    if get("best"):
        text = f"\\textbf{{{text}}}"
    if not _missing(n) and int(n) != board.n_seeds:
        text += f"{{\\scriptsize\\,(n={int(n)})}}"
    return text + _marks(notes)


def _num(x: Any, fmt: str) -> str:
    return "--" if _missing(x) else format(x, fmt).replace(",", "{,}")


def _label(board: Leaderboard, what: str) -> str:
    return "tab:tlbench-" + re.sub(r"[^A-Za-z0-9.-]+", "-", board.suite).strip("-") + "-" + what


def _groups(board: Leaderboard) -> bool:
    return "group" in board.accuracy and bool(board.accuracy["group"].notna().any())


def _group(row: pd.Series) -> str:
    text = "--" if _missing(row["group"]) else tex_escape(row["group"])
    return text + (r"$^{\dagger}$" if row.get("reversal", False) else "")


def accuracy_table(board: Leaderboard) -> str:
    cols = board.columns
    groups = _groups(board)
    ncols = 3 + int(groups) + len(cols)
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        rf"\caption{{Target accuracy (\%) on {tex_escape(board.dataset or board.suite)}: mean$\pm$std over "
        rf"seeds (n={board.n_seeds} unless shown). Protocol: {tex_escape(board.protocol)}.}}",
        rf"\label{{{_label(board, 'accuracy')}}}",
        rf"\begin{{tabular}}{{r{'l' * groups}ll{'r' * len(cols)}}}",
        r"\toprule",
        " & ".join(["Rank", *(["Group"] if groups else []), "Backbone", "Strategy", *[tex_escape(c) for c in cols]])
        + r" \\",
        r"\midrule",
    ]
    for _, row in board.accuracy.iterrows():
        rank = "--" if _missing(row["rank"]) else str(int(row["rank"]))
        lines.append(
            " & ".join(
                [
                    rank,
                    *([_group(row)] if groups else []),
                    tex_escape(row["backbone"]),
                    tex_escape(row["strategy"]),
                    *[cell(board, row, c) for c in cols],
                ]
            )
            + r" \\"
        )
    refs = board.references
    if len(refs):
        lines += [
            r"\midrule",
            rf"\multicolumn{{{ncols}}}{{l}}{{\emph{{Published reference numbers "
            r"(not measured here, not ranked)}} \\",
        ]
        for i, (_, ref) in enumerate(refs.iterrows()):
            values = []
            for c in cols:
                v = ref[board.col(c, "mean")]
                values.append("--" if _missing(v) else f"{v:.1f}")
            if not _missing(ref[board.col("Avg", "mean")]) and not ref["avg_published"]:
                values[-1] += r"$^{*}$"
            lines.append(
                " & ".join(
                    [
                        f"ref.\\,{i + 1}",
                        *([""] if groups else []),
                        tex_escape(ref["backbone"]),
                        tex_escape(ref["strategy"]),
                    ]
                    + values
                )
                + r" \\"
            )
    lines += [r"\bottomrule", r"\end{tabular}"]
    notes = [tex_escape(board.rank_text)] if board.rank_text else []
    if len(refs):
        cites = "; ".join(f"ref.\\,{i + 1}: {tex_escape(r['source'])}" for i, (_, r) in enumerate(refs.iterrows()))
        star = (
            r" $^{*}$Avg computed here from the published pairs."
            if (~refs["avg_published"] & refs[board.col("Avg", "mean")].notna()).any()
            else ""
        )
        notes.append(f"Sources: {cites}.{star}")
    notes += [tex_escape(n) for n in board.notes]
    for fn in board.footnotes:
        where = "; ".join(tex_escape(c) for c in fn.cells)
        notes.append(f"$^{{{fn.number}}}$\\,{tex_escape(fn.status)} ({where}): {tex_escape(fn.summary)}")
    if notes:
        lines += [r"\par\smallskip", r"\begin{minipage}{\linewidth}\footnotesize\raggedright"]
        lines += [n + r"\par" for n in notes]
        lines.append(r"\end{minipage}")
    lines.append(r"\end{table}")
    return "\n".join(lines)


def oracle_table(board: Leaderboard) -> str:
    """The oracle track, its own table: the caption says that it uses target labels."""
    cols = board.columns
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        rf"\caption{{{tex_escape(board.oracle_heading)}, on {tex_escape(board.dataset or board.suite)}: "
        rf"target accuracy (\%), mean$\pm$std over seeds. {tex_escape(board.oracle_text)}}}",
        rf"\label{{{_label(board, 'oracle')}}}",
        rf"\begin{{tabular}}{{ll{'r' * len(cols)}r}}",
        r"\toprule",
        " & ".join(["Backbone", "Strategy", *[tex_escape(c) for c in cols], "Regret"]) + r" \\",
        r"\midrule",
    ]
    for _, row in board.oracle.iterrows():
        lines.append(
            " & ".join(
                [
                    tex_escape(row["backbone"]),
                    tex_escape(row["strategy"]),
                    *[cell(board, row, c) for c in cols],
                    _num(row["regret"], "+.1f"),
                ]
            )
            + r" \\"
        )
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines)


def cost_table(board: Leaderboard) -> str:
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        rf"\caption{{Cost on {tex_escape(board.dataset or board.suite)}: throughput and peak memory over ok "
        r"cells (mean; memory: max), wall time over every cell.}",
        rf"\label{{{_label(board, 'cost')}}}",
        r"\begin{tabular}{llrrrrrr}",
        r"\toprule",
        r"Backbone & Strategy & Train img/s & Eval img/s & Peak MB & Wall (s) & Trainable & Total \\",
        r"\midrule",
    ]
    for _, c in board.costs.iterrows():
        lines.append(
            " & ".join(
                [
                    tex_escape(c["backbone"]),
                    tex_escape(c["strategy"]),
                    _num(c["train_img_per_s"], ",.1f"),
                    _num(c["eval_img_per_s"], ",.1f"),
                    _num(c["peak_mem_mb"], ",.0f"),
                    _num(c["wall_s_total"], ",.1f"),
                    _num(c["trainable_params"], ","),
                    _num(c["total_params"], ","),
                ]
            )
            + r" \\"
        )
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines)


def validator_table(board: Leaderboard) -> str:
    """Each validator's mean regret and rank correlation; the oracle marked as using target labels."""
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        rf"\caption{{Validators on {tex_escape(board.dataset or board.suite)}: mean regret against the oracle "
        r"(points) and mean within-group Spearman correlation with target accuracy. The oracle uses target "
        r"labels.}",
        rf"\label{{{_label(board, 'validators')}}}",
        r"\begin{tabular}{lrrr}",
        r"\toprule",
        r"Validator & Regret & Rank corr. & Groups \\",
        r"\midrule",
    ]
    for _, v in board.validators.iterrows():
        name = tex_escape(v["validator"]) + (r" (uses target labels)" if v["uses_target_labels"] else "")
        lines.append(
            " & ".join([name, _num(v["mean_regret"], ".2f"), _num(v["rank_correlation"], ".2f"), str(int(v["groups"]))])
            + r" \\"
        )
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines)


def render(board: Leaderboard) -> str:
    env = "; ".join(f"{k}: {v}" for k, v in board.environment.items())
    header = [
        f"% tlbench leaderboard: {tex_escape(board.title)}",
        *([f"% {tex_escape(board.mixed)}"] if board.mixed else []),
        f"% {tex_escape(env)}",
        r"% Needs \usepackage{booktabs} in the preamble.",
    ]
    tables = [
        accuracy_table(board),
        *([oracle_table(board)] if board.has_oracle else []),
        *([validator_table(board)] if board.has_choices else []),
        cost_table(board),
    ]
    return "\n".join(header) + "\n\n" + "\n\n".join(tables) + "\n"


class LatexReporter(Reporter):
    name = "latex"
    description = "leaderboard.tex: booktabs tables (accuracy with references, cost)"

    def write(self, board: Leaderboard, out_dir: Path) -> list[Path]:
        path = Path(out_dir) / "leaderboard.tex"
        atomic_write_text(path, render(board))
        return [path]


@hookimpl
def register_reporters(register):
    register(LatexReporter)
