"""``html`` reporter: ``leaderboard.html``, one page (inline CSS and JS, no network).

Column headers sort the table when clicked. The PNGs that an earlier reporter of the same run
wrote beside the page (the ``plots`` reporter runs first) are shown by relative links, so the
results folder is the unit to copy or publish: embedding them as base64 doubled every committed
report's size (7 of a 15 MiB tree) for no new information. Stale PNGs from an older report are
never picked up. Every string that comes from data is HTML-escaped.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pandas as pd

from tlbench import Leaderboard, Reporter, atomic_write_text, hookimpl

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:#222;
  margin:2rem auto;max-width:1300px;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.3rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd;
  padding-bottom:.2rem}
.meta{color:#555}.meta dt{font-weight:600;float:left;clear:left;width:7.5rem}.meta dd{margin:0 0 .1rem 7.5rem}
table{border-collapse:collapse;margin:.6rem 0;font-variant-numeric:tabular-nums}
th,td{padding:.3rem .65rem;border-bottom:1px solid #e3e3e3;white-space:nowrap}
th{background:#f4f5f7;text-align:left;vertical-align:bottom}
#costs th{white-space:normal;min-width:4.5rem}#costs th:nth-child(-n+2){white-space:nowrap}
#costs th:nth-child(n+3),#accuracy th:first-child,#accuracy th.num,#oracle th:nth-child(n+3),
#references th:nth-child(n+3){text-align:right}#references th:last-child{text-align:left}
.scroll{overflow-x:auto;max-width:100%}
th.sortable{cursor:pointer;user-select:none}th.sortable:hover{background:#e6e9ee}
th.sortable::after{content:" \\2195";color:#aaa;font-size:.8em}
th.asc::after{content:" \\25B2";color:#333}th.desc::after{content:" \\25BC";color:#333}
td.num{text-align:right}tbody tr:nth-child(even){background:#fafbfc}tbody tr:hover{background:#eef4ff}
td.best{background:#e3f4e1;font-weight:700}
td.bad{color:#a61b1b}.sd{color:#666;font-size:.9em}.n{color:#888;font-size:.85em}
sup a{text-decoration:none;color:#a61b1b;font-weight:600}
table.ref td,table.ref th{color:#555;font-style:italic}table.ref{border-left:4px solid #c9a227}
.notes{color:#555}.fn li{margin:.4rem 0}.fn pre{white-space:pre-wrap;background:#f6f6f6;padding:.5rem;
  max-height:20rem;overflow:auto;font-size:12px}
.status{font-weight:600;text-transform:uppercase;font-size:.8em;color:#a61b1b}
figure{margin:1rem 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{color:#666;font-size:.9em}
.mixed{background:#fff4e0;border-left:4px solid #e0a030;padding:.4rem .7rem;font-weight:600}
table.oracle{border-left:4px solid #a61b1b}h2.oracle{color:#a61b1b}
"""

#: click a header to sort its table; a cell's data-v (a number) sorts before its text; empty cells go last
JS = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, col) {
    th.classList.add("sortable");
    th.addEventListener("click", function () {
      var desc = !th.classList.contains("desc");
      table.querySelectorAll("th").forEach(function (h) { h.classList.remove("asc", "desc"); });
      th.classList.add(desc ? "desc" : "asc");
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      function key(row) {
        var cell = row.cells[col], v = cell.getAttribute("data-v");
        if (v === null) { v = cell.textContent.trim(); }
        if (v === "") { return null; }
        var x = Number(v); return isNaN(x) ? v.toLowerCase() : x;
      }
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (x === null || y === null) { return (x === null) - (y === null); }
        var c = (typeof x === typeof y) ? (x < y ? -1 : x > y ? 1 : 0) : (typeof x === "number" ? -1 : 1);
        return desc ? -c : c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _missing(x: Any) -> bool:
    return x is None or x is pd.NA or (isinstance(x, float) and math.isnan(x))


def pair_label(column: str) -> str:
    return column.replace("->", "→")


def _marks(notes: tuple[int, ...]) -> str:
    return "".join(f'<sup><a href="#fn{n}" title="footnote {n}">{n}</a></sup>' for n in notes)


def _td_number(x: Any, fmt: str) -> str:
    if _missing(x):
        return '<td class="num" data-v="">—</td>'
    return f'<td class="num" data-v="{esc(x)}">{esc(format(x, fmt))}</td>'


def _cell(board: Leaderboard, row: pd.Series, column: str) -> str:
    get = lambda f: row[board.col(column, f)]  # noqa: E731
    mean, std, n, status, notes = get("mean"), get("std"), get("n"), get("status"), get("notes")
    if _missing(mean):
        text = "—" if status in ("missing", "ok") else f'<span class="status">{esc(status)}</span>'
        cls = "num" if status in ("missing", "ok") else "num bad"
        return f'<td class="{cls}" data-v="">{text}{_marks(notes)}</td>'
    text = f"{mean:.1f}"
    if not _missing(std):
        text += f' <span class="sd">± {std:.1f}</span>'
    if not _missing(n) and int(n) != board.n_seeds:
        text += f' <span class="n">(n={int(n)})</span>'
    cls = "num best" if get("best") else "num"
    return f'<td class="{cls}" data-v="{float(mean)!r}">{text}{_marks(notes)}</td>'


def _groups(board: Leaderboard) -> bool:
    return "group" in board.accuracy and bool(board.accuracy["group"].notna().any())


def _group_cell(row: pd.Series) -> str:
    letters = "" if _missing(row["group"]) else str(row["group"])
    mark = ' <span title="see the † note under the table">†</span>' if row.get("reversal", False) else ""
    return f'<td data-v="{esc(letters)}">{esc(letters or "—")}{mark}</td>'


def accuracy_table(board: Leaderboard) -> str:
    groups = _groups(board)
    head = (
        "<th>Rank</th>"
        + ("<th>Group</th>" if groups else "")
        + "<th>Backbone</th><th>Strategy</th>"
        + "".join(f'<th class="num">{esc(pair_label(c))}</th>' for c in board.columns)
    )
    body = []
    for _, row in board.accuracy.iterrows():
        rank = (
            '<td class="num" data-v="">—</td>'
            if _missing(row["rank"])
            else f'<td class="num" data-v="{int(row["rank"])}">{int(row["rank"])}</td>'
        )
        group = _group_cell(row) if groups else ""
        cells = "".join(_cell(board, row, c) for c in board.columns)
        body.append(f"<tr>{rank}{group}<td>{esc(row['backbone'])}</td><td>{esc(row['strategy'])}</td>{cells}</tr>")
    return (
        f'<div class="scroll"><table class="sortable" id="accuracy"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def oracle_table(board: Leaderboard) -> str:
    """The oracle track (it uses target labels): mean ± std per pair and Avg, and the regret per row."""
    head = "".join(
        f"<th>{esc(h)}</th>"
        for h in ["Backbone", "Strategy", *[pair_label(c) for c in board.columns], "Regret (points)"]
    )
    body = []
    for _, row in board.oracle.iterrows():
        cells = "".join(_cell(board, row, c) for c in board.columns)
        regret = _td_number(row["regret"], "+.1f")
        body.append(f"<tr><td>{esc(row['backbone'])}</td><td>{esc(row['strategy'])}</td>{cells}{regret}</tr>")
    return (
        f'<div class="scroll"><table class="sortable oracle" id="oracle"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def reference_table(board: Leaderboard) -> str:
    head = "".join(
        f"<th>{esc(h)}</th>" for h in ["Backbone", "Strategy", *[pair_label(c) for c in board.columns], "Source"]
    )
    body = []
    for _, ref in board.references.iterrows():
        cells = []
        for c in board.columns:
            v = ref[board.col(c, "mean")]
            td = _td_number(v, ".1f")
            if c == "Avg" and not _missing(v) and not ref["avg_published"]:
                td = td.replace("</td>", ' <span class="n">(computed)</span></td>')
            cells.append(td)
        body.append(
            f"<tr><td>{esc(ref['backbone'])}</td><td>{esc(ref['strategy'])}</td>{''.join(cells)}"
            f"<td>{esc(ref['source'])}</td></tr>"
        )
    return (
        f'<div class="scroll"><table class="sortable ref" id="references"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def cost_table(board: Leaderboard) -> str:
    cols = [
        ("Train img/s", "train_img_per_s", ",.1f"),
        ("Eval img/s", "eval_img_per_s", ",.1f"),
        ("Peak mem (MB)", "peak_mem_mb", ",.0f"),
        ("Wall total (s)", "wall_s_total", ",.1f"),
        ("Wall per cell (s)", "wall_s_mean", ",.1f"),
        ("Trainable params", "trainable_params", ","),
        ("Total params", "total_params", ","),
        ("Ok", "cells_ok", "d"),
        ("Failed", "cells_failed", "d"),
        ("Diverged", "cells_diverged", "d"),
    ]
    head = "".join(f"<th>{esc(h)}</th>" for h in ["Backbone", "Strategy", *[c[0] for c in cols]])
    body = []
    for _, c in board.costs.iterrows():
        tds = "".join(_td_number(c[key], fmt) for _, key, fmt in cols)
        body.append(f"<tr><td>{esc(c['backbone'])}</td><td>{esc(c['strategy'])}</td>{tds}</tr>")
    return (
        f'<div class="scroll"><table class="sortable" id="costs"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def footnotes(board: Leaderboard) -> str:
    items = []
    for fn in board.footnotes:
        where = "; ".join(esc(pair_label(c)) for c in fn.cells)
        full = (
            ""
            if fn.error.strip() == fn.summary
            else f"<details><summary>full error text</summary><pre>{esc(fn.error)}</pre></details>"
        )
        items.append(
            f'<li id="fn{fn.number}" value="{fn.number}"><span class="status">{esc(fn.status)}</span> '
            f"({where}): <code>{esc(fn.summary)}</code>{full}</li>"
        )
    return f'<ol class="fn">{"".join(items)}</ol>'


def figures(board: Leaderboard, out_dir: Path, *, curves: bool = False) -> str:
    """The PNGs written beside this page before it, linked: the training curves (``curves_*.png``) or the rest."""
    out = []
    for path in board.written:
        path = Path(path)
        if (
            path.suffix.lower() != ".png"
            or not path.is_file()
            or path.parent.resolve() != out_dir.resolve()
            or path.name.startswith("curves_") != curves
        ):
            continue
        out.append(
            f'<figure><a href="{quote(path.name)}"><img alt="{esc(path.stem)}" src="{quote(path.name)}"></a>'
            f"<figcaption>{esc(path.name)}</figcaption></figure>"
        )
    return "".join(out)


def selection_sections(board: Leaderboard) -> list[str]:
    """The validator table and the chosen candidates, when there was a choice to make."""
    if not board.has_choices:
        return []
    rows = "".join(
        f"<tr><td>{esc(v['validator'])}{' <strong>(uses target labels)</strong>' if v['uses_target_labels'] else ''}"
        f"</td>{_td_number(v['mean_regret'], '.2f')}{_td_number(v['rank_correlation'], '.2f')}"
        f'<td class="num">{int(v["groups"])}</td><td>{"yes" if v["selected"] else ""}</td></tr>'
        for _, v in board.validators.iterrows()
    )
    chosen = "".join(
        f"<tr><td>{esc(c['backbone'])}</td><td>{esc(c['strategy'])}</td><td>{pair_label(c['pair'])}</td>"
        f'<td class="num">{int(c["seed"])}</td><td>{esc(c["params"])}</td><td class="num">{int(c["step"])}</td>'
        f"{_td_number(c['target_acc'], '.1f')}{_td_number(c['oracle_acc'], '.1f')}</tr>"
        for _, c in board.chosen.iterrows()
    )
    return [
        "<h2>Validators</h2>",
        f'<p class="notes">{esc(board.validator_text)}</p>',
        "<table><thead><tr><th>Validator</th><th>Mean regret (points)</th><th>Rank correlation</th>"
        f"<th>Groups</th><th>Main table</th></tr></thead><tbody>{rows}</tbody></table>",
        f"<h2>Chosen parameters and checkpoints (selection: {esc(board.selection)})</h2>",
        "<table><thead><tr><th>Backbone</th><th>Strategy</th><th>Pair</th><th>Seed</th><th>Parameters</th>"
        f"<th>Step</th><th>Target acc</th><th>Oracle acc</th></tr></thead><tbody>{chosen}</tbody></table>",
    ]


def render(board: Leaderboard, out_dir: Path) -> str:
    env = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in board.environment.items())
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(board.title)} — tlbench leaderboard</title><style>{CSS}</style></head><body>",
        f"<h1>Leaderboard: {esc(board.title)}</h1>",
        f'<p class="mixed">{esc(board.mixed)}</p>' if board.mixed else "",
        f'<dl class="meta"><dt>protocol</dt><dd>{esc(board.protocol)}</dd>{env}</dl>',
        "<h2>Target accuracy (%)</h2>",
        f'<p class="notes">{esc(board.stats_text)} Highlighted: best measured value of each column. '
        f"Cells without (n=…) have n = {board.n_seeds} seeds. Click a header to sort.</p>",
        accuracy_table(board),
    ]
    if board.notes:
        parts.append('<ul class="notes">' + "".join(f"<li>{esc(pair_label(n))}</li>" for n in board.notes) + "</ul>")
    if board.has_oracle:
        parts += [
            f'<h2 class="oracle">{esc(board.oracle_heading)}</h2>',
            f'<p class="notes"><strong>{esc(board.oracle_text)}</strong></p>',
            oracle_table(board),
        ]
    if len(board.references):
        parts += ["<h2>Published reference numbers (not measured here, not ranked)</h2>", reference_table(board)]
    if len(board.critical_difference):
        rows = "".join(
            f"<tr><td>{esc(r['backbone'])}</td><td>{esc(r['strategy'])}</td>"
            f'<td class="num">{r["avg_rank"]:.2f}</td><td>{"yes" if r["within_cd"] else "no"}</td></tr>'
            for _, r in board.critical_difference.iterrows()
        )
        parts += [
            "<h2>Critical difference</h2>",
            f'<p class="notes">{esc(board.cd_text)}</p>',
            "<table><thead><tr><th>Backbone</th><th>Strategy</th><th>Average rank</th>"
            f"<th>Within CD of the best</th></tr></thead><tbody>{rows}</tbody></table>",
        ]
    parts += selection_sections(board)
    parts += [
        "<h2>Cost</h2>",
        '<p class="notes">Throughput and memory: ok cells only (mean; memory: max). Wall time: every cell.</p>',
        cost_table(board),
    ]
    figs = figures(board, out_dir)
    if figs:
        parts += ["<h2>Figures</h2>", figs]
    curve_figs = figures(board, out_dir, curves=True)
    if curve_figs:
        parts += [
            "<h2>Training curves</h2>",
            '<p class="notes">Per strategy: each metric it returns (window means at the logging steps) '
            "for each pair; the line is the mean over seeds, the band spans the lowest to the highest "
            "seed.</p>",
            curve_figs,
        ]
    if board.footnotes:
        parts += ["<h2>Footnotes</h2>", footnotes(board)]
    parts += [f"<script>{JS}</script>", "</body></html>"]
    return "\n".join(parts) + "\n"


class HtmlReporter(Reporter):
    name = "html"
    description = "leaderboard.html: one page with sortable tables and the plots beside it"
    order = 10  # after the plots it shows

    def write(self, board: Leaderboard, out_dir: Path) -> list[Path]:
        path = Path(out_dir) / "leaderboard.html"
        atomic_write_text(path, render(board, Path(out_dir)))
        return [path]


@hookimpl
def register_reporters(register):
    register(HtmlReporter)
