"""Every report format is produced from a results directory and parses: markdown, CSV, HTML, LaTeX, PNG."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image
import pandas as pd
import PIL.Image
import pytest
from test_leaderboard import SUITE, XSS, make_records, record, write_results

import tlbench_builtins.reports.csv as csv_plugin
import tlbench_builtins.reports.html as html_plugin
import tlbench_builtins.reports.latex as latex_plugin
import tlbench_builtins.reports.markdown as markdown_plugin
import tlbench_builtins.reports.plots as plots_plugin
from tlbench.errors import UnknownNameError
from tlbench.plugins.registry import Registry
from tlbench.reporting.leaderboard import build_leaderboard
from tlbench.reporting.write import report_dirs, write_reports
from tlbench.spec.store import ResultsDir

PLUGINS = {
    "markdown": markdown_plugin,
    "csv": csv_plugin,
    "html": html_plugin,
    "latex": latex_plugin,
    "plots": plots_plugin,
}
#: in writing order: plots (order -10), then csv, latex, markdown (order 0, by name), html (order 10)
FILES = [
    "accuracy_vs_throughput.png",
    "accuracy_vs_eval_throughput.png",
    "pair_accuracy.png",
    "leaderboard.csv",
    "leaderboard_oracle.csv",
    "costs.csv",
    "references.csv",
    "failures.csv",
    "validators.csv",
    "selection.csv",
    "checkpoints.csv",
    "leaderboard.tex",
    "leaderboard.md",
    "leaderboard.html",
]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: names full of HTML and LaTeX specials, as a backbone, a strategy, a domain and an error could be
EVIL_BACKBONE = "<img src=x onerror=alert(1)>_a%b&c#d$e{f}g~h^i\\j"
EVIL_STRATEGY = 'dann "x" & <b>bold</b>'


@pytest.fixture
def registry():
    return Registry(entry_points=False, plugins=PLUGINS)


@pytest.fixture
def results(tmp_path):
    return write_results(tmp_path / "run", make_records())


@pytest.fixture
def report(results, registry):
    paths = report_dirs([results], None, None, registry=registry)
    return results, paths


def evil_records():
    return [
        record(EVIL_BACKBONE, EVIL_STRATEGY, "<A>->W'", 0, target_acc=50.0),
        record(EVIL_BACKBONE, EVIL_STRATEGY, "<A>->W'", 1, status="failed", error=XSS),
        record("ok", "s", "<A>->W'", 0, target_acc=40.0),
    ]


# -- writing ----------------------------------------------------------------------------------------
def test_every_format_is_written_with_plots_first(report):
    out, paths = report
    assert [p.name for p in paths] == FILES  # plots (order -10) first, html (order 10) last
    for p in paths:
        assert p.parent == out and p.stat().st_size > 0
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_default_registry_finds_the_builtin_reporters(results):
    paths = write_reports(results, make_records(), SUITE)
    assert {p.name for p in paths} >= set(FILES)


def test_unknown_format_is_a_user_error(results, registry):
    with pytest.raises(UnknownNameError, match="unknown reporter 'pdf'"):
        write_reports(results, make_records(), SUITE, ["pdf"], registry=registry)
    assert not (results / "leaderboard.md").exists()  # nothing written before the check


# -- markdown -----------------------------------------------------------------------------------------
def test_markdown_tables_bold_best_footnotes_and_references(report):
    text = (report[0] / "leaderboard.md").read_text()
    acc = text.split("## Target accuracy (%)")[1].split("##")[0]
    lines = [ln for ln in acc.splitlines() if ln.startswith("|")]
    assert [c.strip() for c in lines[0].strip("|").split("|")] == [
        "Rank",
        "Group",
        "Backbone",
        "Strategy",
        "A→W",
        "D→W",
        "Avg",
    ]
    assert len({ln.count("|") for ln in lines}) == 1 and len(lines) == 2 + 7
    first = [c.strip() for c in lines[2].strip("|").split("|")]
    assert first == ["1", "a", "bbB", "dann", "**80.0 ± 2.8** (n=2)¹", "97.0 ± 1.0", "**88.5**"]
    assert [c.strip() for c in lines[-1].strip("|").split("|")][4] == "diverged²"
    assert "ResNet-50" not in acc and "CDAN" in text.split("## Published reference numbers")[1]
    assert "bbA / kd: Avg not computed, missing: A→W" in text
    assert "¹ **failed** (bbB / dann / A→W, seed 1): ` RuntimeError: <script>alert(1)</script> `" in text
    assert "target labels never used for training or model selection" in text
    assert "## Cost" in text and "| bbB        | dann" in text


# -- CSV ----------------------------------------------------------------------------------------------
def test_csv_round_trips_through_pandas(report):
    out = report[0]
    board = build_leaderboard(make_records(), SUITE)
    got = pd.read_csv(out / "leaderboard.csv")
    numeric = ["rank", *[f"{c} {f}" for c in board.columns for f in ("mean", "std", "n")]]
    pd.testing.assert_frame_equal(got[numeric], board.accuracy[numeric].astype("float64"), check_dtype=False)
    assert got["A->W best"].tolist() == board.accuracy["A->W best"].tolist()
    assert got.loc[got.strategy == "mmd", "A->W status"].tolist() == ["ok", "diverged"]
    assert got.loc[(got.backbone == "bbB") & (got.strategy == "dann"), "A->W notes"].tolist() == [1]  # footnote numbers
    costs = pd.read_csv(out / "costs.csv")
    pd.testing.assert_frame_equal(costs, board.costs, check_dtype=False)
    refs = pd.read_csv(out / "references.csv")
    assert refs["source"].tolist() == board.references["source"].tolist()
    assert refs["Avg mean"].tolist() == pytest.approx([89.45, 87.7])
    failures = pd.read_csv(out / "failures.csv")
    assert failures.loc[0, "error"] == f"Traceback ...\nRuntimeError: {XSS}"
    assert failures["footnote"].tolist() == [1, 2, 2, 2]


#: text a spreadsheet would run as a formula (OWASP "CSV Injection"), as a label or a domain name could be
FORMULAS = ["=cmd|' /C calc'!A0", "+1", "-1+1", "@SUM(1)", "\tx", "\rx"]


def formula_records() -> list:
    """Records whose backbone, strategy, label, domains and error text start like formulas; one with a
    negative accuracy (a number, never text to neutralise)."""
    f = FORMULAS
    return [
        record(f[0], f[1], f"{f[2]}->{f[3]}", 0, label=f[1], target_acc=-5.0, error=f[4], cell_id="c0"),
        record(f[0], f[1], f"{f[2]}->{f[3]}", 1, label=f[1], status="failed", error=f[0], cell_id="c1"),
        record("bb", "s", f"{f[3]}->{f[2]}", 0, target_acc=40.0, error="@x", cell_id="c2"),
    ]


def is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def csv_cells(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8") as fh:
        return [cell for row in csv.reader(fh) for cell in row]


def test_csv_cells_that_start_like_formulas_are_neutralised_and_numbers_stay_numbers(tmp_path, registry):
    out = write_results(tmp_path / "run", formula_records())
    ResultsDir(out).write_tables()
    paths = report_dirs([out], None, ["csv"], registry=registry)
    for path in [out / "results.csv", *paths]:
        cells = csv_cells(path)
        bad = [c for c in cells if c.startswith(("=", "+", "-", "@", "\t", "\r")) and not is_number(c)]
        assert not bad, f"{path.name}: {bad}"
    results = pd.read_csv(out / "results.csv")
    assert set(results["backbone"]) == {"'=cmd|' /C calc'!A0", "bb"}
    assert set(results["strategy"]) == {"'+1", "s"} and set(results["source"]) == {"'-1+1", "'@SUM(1)"}
    assert set(results["error"].dropna()) == {"'\tx", "'=cmd|' /C calc'!A0", "'@x"}
    assert results["target_acc"].dtype == "float64" and -5.0 in results["target_acc"].tolist()
    board = pd.read_csv(out / "leaderboard.csv")
    assert "'-1+1->@SUM(1) mean" in board.columns and "'@SUM(1)->-1+1 mean" in board.columns
    assert set(board["strategy"]) == {"'+1", "s"}
    assert board["'-1+1->@SUM(1) mean"].dtype == "float64"
    assert -5.0 in board["'-1+1->@SUM(1) mean"].tolist()
    failures = pd.read_csv(out / "failures.csv")
    assert failures["error"].tolist() == ["'=cmd|' /C calc'!A0"] and failures["footnote"].tolist() == [1]
    costs = pd.read_csv(out / "costs.csv")
    assert set(costs["backbone"]) == {"'=cmd|' /C calc'!A0", "bb"}


def test_csv_safe_touches_only_text_that_starts_like_a_formula():
    from tlbench import csv_safe

    assert [csv_safe(f) for f in FORMULAS] == ["'" + f for f in FORMULAS]
    for kept in ("dann", "A->W", "a=b", "", " =1", -1.5, -3, float("nan"), None, True):
        assert csv_safe(kept) is kept


# -- HTML ---------------------------------------------------------------------------------------------
VOID = {"meta", "img", "br", "hr", "link", "input"}


class _Collect(HTMLParser):
    """Tags, attributes and text; fails on a closing tag that does not match the open one."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.tags, self.text, self.scripts = [], [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1:]}>"
        self.stack.pop()

    def handle_data(self, data):
        (self.scripts if self.stack and self.stack[-1] == "script" else self.text).append(data)


def parse_html(text: str) -> _Collect:
    p = _Collect()
    p.feed(text)
    p.close()
    assert p.stack == [], f"unclosed tags {p.stack}"
    return p


def test_html_is_offline_sortable_and_links_the_plots_beside_it(report):
    text = (report[0] / "leaderboard.html").read_text()
    page = parse_html(text)
    assert [t for t, _ in page.tags].count("script") == 1 and "addEventListener" in page.scripts[0]
    assert not re.search(r"(src|href)=\"(https?:)?//", text) and "@import" not in text
    imgs = [a["src"] for t, a in page.tags if t == "img"]
    assert sorted(imgs) == ["accuracy_vs_eval_throughput.png", "accuracy_vs_throughput.png", "pair_accuracy.png"]
    for src in imgs:  # relative links to the PNGs written beside the page
        assert (report[0] / src).read_bytes()[:8] == PNG_SIGNATURE
    assert "data:image" not in text
    tables = [a.get("id") for t, a in page.tags if t == "table"]
    assert tables == ["accuracy", "references", "costs"]
    body = "".join(page.text)
    assert f"RuntimeError: {XSS}" in body  # shown as text ...
    assert "<script>alert" not in text  # ... never as markup
    assert "diverged" in body and "Published reference numbers (not measured here, not ranked)" in body
    best = [a for t, a in page.tags if t == "td" and "best" in a.get("class", "")]
    assert [a["data-v"] for a in best] == ["80.0", "88.5", "80.0", "99.0"]


def test_html_escapes_every_string_from_data(tmp_path, registry):
    write_reports(tmp_path, evil_records(), {"name": "x", "dataset": "<i>d</i>"}, ["html"], registry=registry)
    text = (tmp_path / "leaderboard.html").read_text()
    page = parse_html(text)
    assert [t for t, _ in page.tags if t in ("img", "b", "i")] == []
    assert not any(k.startswith("on") for _, attrs in page.tags for k in attrs)
    body = "".join(page.text)
    for s in (EVIL_BACKBONE, EVIL_STRATEGY, "<A>→W'", XSS, "<i>d</i>"):
        assert s in body


def test_html_shows_only_plots_of_the_same_run(tmp_path, registry):
    (tmp_path / "pair_accuracy.png").write_bytes(b"stale")
    write_reports(tmp_path, make_records(), SUITE, ["html"], registry=registry)
    assert "<img" not in (tmp_path / "leaderboard.html").read_text()
    write_reports(tmp_path, make_records(), SUITE, ["html", "plots"], registry=registry)
    text = (tmp_path / "leaderboard.html").read_text()
    assert text.count("<img") == 3 and 'src="pair_accuracy.png"' in text
    assert (tmp_path / "pair_accuracy.png").read_bytes()[:8] == PNG_SIGNATURE


# -- LaTeX --------------------------------------------------------------------------------------------
def check_latex_balanced(tex: str) -> None:
    body = "\n".join(ln for ln in tex.splitlines() if not ln.startswith("%"))
    stack = []
    for kind, name in re.findall(r"\\(begin|end)\{([^}]*)\}", body):
        if kind == "begin":
            stack.append(name)
        else:
            assert stack and stack.pop() == name, f"\\end{{{name}}} does not close the open environment"
    assert stack == []
    depth = 0
    for m in re.finditer(r"\\[{}$&%#_]|[{}]", body):
        if m.group() in "{}":
            depth += 1 if m.group() == "{" else -1
            assert depth >= 0
    assert depth == 0
    assert len(re.findall(r"(?<!\\)\$", body)) % 2 == 0  # math mode opened and closed


def compile_latex(tex_dir: Path, tmp_path: Path) -> None:
    """Compile with pdflatex when it is installed (the caller skips the assert otherwise)."""
    doc = tmp_path / "doc.tex"
    doc.write_text(
        "\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n"
        f"\\input{{{(tex_dir / 'leaderboard.tex').as_posix()}}}\n\\end{{document}}\n"
    )
    proc = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "-no-shell-escape", doc.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert (tmp_path / "doc.pdf").stat().st_size > 0


def test_latex_is_booktabs_escaped_balanced_and_compiles(report, tmp_path):
    tex = (report[0] / "leaderboard.tex").read_text()
    check_latex_balanced(tex)
    for rule in (r"\toprule", r"\midrule", r"\bottomrule"):
        assert rule in tex
    assert r"Rank & Group & Backbone & Strategy & A$\rightarrow$W & D$\rightarrow$W & Avg \\" in tex
    assert r"1 & a & bbB & dann & \textbf{80.0{\scriptsize$\pm$2.8}}{\scriptsize\,(n=2)}$^{1}$" in tex
    assert r"source\_only" in tex and r"100\% \& more" in tex and r"diverged$^{2}$" in tex
    lines = tex.splitlines()
    at = next(i for i, ln in enumerate(lines) if ln.startswith(r"\multicolumn{7}{l}{\emph{Published reference"))
    assert lines[at - 1] == r"\midrule" and lines[at + 1].startswith(r"ref.\,1 & ")
    measured, refs = "\n".join(lines[:at]), "\n".join(lines[at:])
    assert "ResNet-50" not in measured and r"ref.\,1 &  & ResNet-50 & DANN" in refs
    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex is not on PATH: the .tex was checked for balance only")
    compile_latex(report[0], tmp_path)


def test_latex_escapes_specials_in_data(tmp_path, registry):
    out = tmp_path / "out"
    write_reports(out, evil_records(), {"name": "x", "dataset": "d"}, ["latex"], registry=registry)
    tex = (out / "leaderboard.tex").read_text()
    check_latex_balanced(tex)
    assert (
        r"\textless{}img src=x onerror=alert(1)\textgreater{}\_a\%b\&c\#d\$e\{f\}g\textasciitilde{}h"
        r"\textasciicircum{}i\textbackslash{}j"
    ) in tex
    assert r"\textless{}A\textgreater{}$\rightarrow$W'" in tex
    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex is not on PATH: the .tex was checked for balance only")
    compile_latex(out, tmp_path)


# -- plots --------------------------------------------------------------------------------------------
def test_plots_are_valid_pngs(report):
    for name in ("accuracy_vs_throughput.png", "accuracy_vs_eval_throughput.png", "pair_accuracy.png"):
        path = report[0] / name
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        image = matplotlib.image.imread(path)
        assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 300
        with PIL.Image.open(path) as png:  # a palette: a third of the RGBA file's size
            assert png.mode == "P" and len(png.getcolors(256) or ()) > 2


def test_pareto_front():
    points = [(100.0, 80.0), (300.0, 70.0), (90.0, 87.5), (290.0, 88.5), (50.0, 60.0)]
    assert plots_plugin.pareto_front(points) == [3, 1]


# -- directories ----------------------------------------------------------------------------------------
def test_merging_two_results_dirs(tmp_path, registry):
    records = make_records()
    other = {
        **SUITE,
        "reference": [
            *SUITE["reference"],
            {"backbone": "ViT", "strategy": "PMTrans", "source": "Zhu et al. 2023", "acc": {"A->W": 99.5}},
        ],
    }
    first = write_results(tmp_path / "a", [r for r in records if r.seed != 2])
    second = write_results(tmp_path / "b", [r for r in records if r.seed == 2], other)
    report_dirs([first, second], tmp_path / "merged", ["csv"], registry=registry)
    merged = pd.read_csv(tmp_path / "merged" / "leaderboard.csv")
    full = build_leaderboard(records, SUITE).accuracy
    assert merged[["backbone", "strategy"]].values.tolist() == full[["backbone", "strategy"]].values.tolist()
    assert merged["Avg mean"].tolist()[:5] == [88.5, 87.5, 83.0, 80.0, 70.0]
    assert merged["A->W std"].tolist()[:2] == pytest.approx([8**0.5, 1.0])
    refs = pd.read_csv(tmp_path / "merged" / "references.csv")
    assert refs["strategy"].tolist() == ["DANN", "CDAN", "PMTrans"]  # union, each once
    assert not (first / "leaderboard.csv").exists()


def test_report_on_a_half_finished_run(tmp_path, registry):
    records = make_records()[:9]  # bbA/source_only done, bbA/dann A->W only
    run = write_results(tmp_path / "run", records)
    junk = run / "cells" / "being-written" / "record.json"
    junk.parent.mkdir(parents=True)
    junk.write_text('{"suite": "office-test", "backb')  # a cell that is writing right now
    (run / "cells" / "x").mkdir()
    (run / "cells" / "x" / ".record.json.123.tmp").write_text(json.dumps({"status": "ok"}))
    paths = report_dirs([run], None, None, registry=registry)
    assert {p.name for p in paths} == set(FILES)
    text = (run / "leaderboard.md").read_text()
    assert "9 of 48 cells have finished; the others are not shown." in text
    assert "bbA / dann: Avg not computed, missing: D→W" in text
    rows = pd.read_csv(run / "leaderboard.csv")
    assert rows[["rank", "strategy", "Avg mean"]].values.tolist()[0] == [1, "source_only", 80.0]
    assert rows.loc[1, "A->W n"] == 3 and rows.loc[1, "A->W mean"] == 80.0 and pd.isna(rows.loc[1, "rank"])
    parse_html((run / "leaderboard.html").read_text())


def test_every_format_handles_no_finished_cells(tmp_path, registry):
    paths = write_reports(tmp_path, [], SUITE, registry=registry)
    assert [p.name for p in paths] == FILES
    assert "0 of 48 cells have finished" in (tmp_path / "leaderboard.md").read_text()
    parse_html((tmp_path / "leaderboard.html").read_text())
    check_latex_balanced((tmp_path / "leaderboard.tex").read_text())
