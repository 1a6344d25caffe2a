"""A leaderboard never mixes cells from different code or machines without saying so, under its header."""

from __future__ import annotations

from test_leaderboard import record

import tlbench_builtins.reports.html as html_plugin
import tlbench_builtins.reports.latex as latex_plugin
import tlbench_builtins.reports.markdown as markdown_plugin
from tlbench.plugins.registry import Registry
from tlbench.reporting.leaderboard import build_leaderboard
from tlbench.reporting.mixing import mixed_origins
from tlbench.reporting.write import write_reports

AMD = "cpu (AMD EPYC 7B13, x86_64, 2 threads)"
INTEL = "cpu (Intel Xeon Gold 6130, x86_64, 2 threads)"
SUITE = {"name": "mix", "dataset": "office31", "pairs": ["A->W", "D->W"]}


def provenance(strategy_sha: str = "a" * 16, dataset_sha: str = "d" * 16) -> dict:
    def code(plugin: str, sha: str) -> dict:
        return {"plugin": plugin, "distribution": "tlbench", "version": "0.1.0", "source_sha256": sha}

    return {
        "strategy": code("strategies.dann", strategy_sha),
        "dataset": code("datasets.office", dataset_sha),
        "shifts": {},
    }


def cells(n: int, *, seed0: int = 0, strategy: str = "dann", **kw) -> list:
    """``n`` ok cells (two pairs, then further seeds), each with its own seed × pair."""
    prov = kw.pop("provenance", provenance())
    out = []
    for i in range(n):
        pair, seed = ("A->W", "D->W")[i % 2], seed0 + i // 2
        out.append(record("bb", strategy, pair, seed, target_acc=70.0 + i, extra={"provenance": prov}, **kw))
    return out


def test_records_that_agree_say_nothing():
    board = build_leaderboard(cells(4, device=AMD), SUITE, date="2025-01-02")
    assert board.mixed == ""


def test_two_devices_are_named_with_their_cell_counts_most_first():
    records = cells(2, device=INTEL) + cells(6, seed0=10, device=AMD)
    assert mixed_origins(records) == (f"Cells from different code or machines: 2 devices: {AMD} (6), {INTEL} (2).")


def test_versions_and_code_that_differ_are_all_named_in_one_line():
    records = (
        cells(4, device=AMD)
        + cells(2, seed0=10, device=AMD, torch_version="2.3.0", tlbench_version="0.2.0")
        + cells(2, seed0=20, device=AMD, provenance=provenance(strategy_sha="b" * 16))
    )
    line = mixed_origins(records)
    assert "\n" not in line and line.startswith("Cells from different code or machines: ")
    assert "devices" not in line  # one device: not a difference
    assert "2 tlbench versions: 0.1.0 (6), 0.2.0 (2)" in line
    assert "2 torch versions: 2.14.1 (6), 2.3.0 (2)" in line
    assert (
        "strategy 'dann' in 2 code versions: tlbench 0.1.0 source aaaaaaaa (6), tlbench 0.1.0 source bbbbbbbb (2)"
    ) in line
    assert "dataset" not in line  # the same dataset code everywhere


def test_a_record_without_provenance_is_not_taken_for_the_same_code():
    records = cells(4, device=AMD) + cells(2, seed0=10, device=AMD, provenance=None)
    assert "strategy 'dann' in 2 code versions: tlbench 0.1.0 source aaaaaaaa (4), not recorded (2)" in mixed_origins(
        records
    )


def test_shift_code_is_compared_by_shift_name():
    invert = {"plugin": "shifts.corruptions", "distribution": "tlbench", "version": "0.1.0"}
    old, new = provenance(), provenance()
    old["shifts"] = {"invert": {**invert, "source_sha256": "1" * 16}}
    new["shifts"] = {"invert": {**invert, "source_sha256": "2" * 16}}
    line = mixed_origins(cells(2, device=AMD, provenance=old) + cells(4, seed0=5, device=AMD, provenance=new))
    assert (
        "shift 'invert' in 2 code versions: tlbench 0.1.0 source 22222222 (4), tlbench 0.1.0 source 11111111 (2)"
        in line
    )


def test_failed_cells_have_no_number_to_mix():
    records = cells(4, device=AMD) + [record("bb", "dann", "A->W", 9, status="failed", target_acc=None, device="")]
    assert mixed_origins(records) == ""


def test_markdown_html_and_latex_say_it_under_their_header(tmp_path):
    registry = Registry(
        entry_points=False, plugins={"markdown": markdown_plugin, "html": html_plugin, "latex": latex_plugin}
    )
    records = cells(4, device=AMD) + cells(2, seed0=10, device=INTEL)
    line = f"Cells from different code or machines: 2 devices: {AMD} (4), {INTEL} (2)."
    write_reports(tmp_path, records, SUITE, registry=registry)

    md = (tmp_path / "leaderboard.md").read_text().splitlines()
    assert md[0] == "# Leaderboard: mix — office31" and md[2] == f"**{line}**"
    page = (tmp_path / "leaderboard.html").read_text()
    assert f'<h1>Leaderboard: mix — office31</h1>\n<p class="mixed">{line}</p>' in page
    tex = (tmp_path / "leaderboard.tex").read_text().splitlines()
    assert tex[0].startswith("% tlbench leaderboard:") and tex[1] == f"% {latex_plugin.tex_escape(line)}"

    write_reports(tmp_path, cells(4, device=AMD), SUITE, registry=registry)  # one machine: no such line
    for name in ("leaderboard.md", "leaderboard.html", "leaderboard.tex"):
        assert "Cells from different" not in (tmp_path / name).read_text()
