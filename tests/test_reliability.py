"""What a hostile user found (issue 19), each held to its promise: bad input is one line and exit 2
before any cell trains; results never vanish, crash or lie; nothing is written outside the output
folder and the cache; every message's advice does what it says.

Hostile files live in ``tests/hostile/``; faulty strategies and hooks are real plugins added to the
process registry (as in ``test_faults.py``); a cell that kills its own process is
``tests/kill_plugin.py`` in a real ``tlbench run`` subprocess.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT, TINY_SUITE
from test_bad_input import folder_suite, make_folders, run_bad, tiny

import tlbench
from tlbench.cli import main
from tlbench.plugins.registry import Registry, set_registry

HOSTILE = Path(__file__).resolve().parent / "hostile"
TESTS = Path(__file__).resolve().parent
ONE_CELL = ["--strategies", "source_only"]


def run_ok(capsys, suite: Path, out: Path, *extra: str) -> tuple[int, str, str]:
    """``tlbench run`` without --quiet's absence: (exit code, stdout, stderr), never a traceback."""
    code = main(["run", str(suite), "--out", str(out), "--quiet", *extra])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err, captured
    return code, captured.out, captured.err


def warnings_in(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("tlbench: warning:")]


# -- writing where nothing may be written -------------------------------------------------------------
@pytest.mark.parametrize("name", ["..", ".", "a/b"])
@pytest.mark.parametrize("how", ["file", "--set"])
def test_suite_name_is_one_plain_path_segment(capsys, tmp_path, monkeypatch, name, how):
    work = tmp_path / "work"
    work.mkdir()
    (work / "leaderboard.md").write_text("someone else's\n")
    monkeypatch.chdir(work)
    text = TINY_SUITE.replace("name: tiny", f"name: {json.dumps(name)}") if how == "file" else TINY_SUITE
    suite = tiny(tmp_path, text)
    code = main(["run", str(suite), "--quiet", *(["--set", f"name={name}"] if how == "--set" else [])])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    origin = f"--set name={name}" if how == "--set" else str(suite)
    assert err[0].startswith(f"tlbench: error: {origin}: name: "), err
    assert (work / "leaderboard.md").read_text() == "someone else's\n"
    assert sorted(p.name for p in work.iterdir()) == ["leaderboard.md"]  # no results/, no results.csv


def test_out_inside_the_data_root_is_refused(capsys, tmp_path):
    data = make_folders(tmp_path / "root" / "folders", {"src": ["a", "b"], "tgt": ["a", "b"]})
    suite = folder_suite(tmp_path, Path("folders"))
    out = data / "results"
    code = main(["run", str(suite), "--data-root", str(tmp_path / "root"), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0] == (
        f"tlbench: error: --out {out} is inside the data root {tmp_path / 'root'}, which tlbench only "
        "reads (an output folder there would become a domain); choose a folder outside it"
    )
    assert not out.exists()


def test_an_empty_home_never_puts_the_cache_at_the_root(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", "")
    monkeypatch.delenv("TLBENCH_CACHE")
    monkeypatch.delenv("MPLCONFIGDIR", raising=False)
    line = run_bad(capsys, tmp_path, tiny(tmp_path))
    assert line == (
        "tlbench: error: $HOME is '', so there is no ~/.cache for tlbench; set TLBENCH_CACHE to a "
        "writable folder (or pass --cache DIR)"
    )
    assert "MPLCONFIGDIR" not in os.environ  # nothing was pointed anywhere


@pytest.mark.parametrize("kind", ["file", "unwritable"])
def test_a_cache_that_cannot_be_written_is_one_line(capsys, tmp_path, monkeypatch, kind):
    if kind == "file":
        cache = tmp_path / "cache"
        cache.write_text("a file\n")
        expected = f"the cache folder {cache} is a file, not a folder"
    else:  # a folder that cannot be created even by root
        cache = Path("/sys/tlbench-test-cache")
        expected = f"the cache folder {cache} cannot be created (Operation not permitted)"
    monkeypatch.setenv("TLBENCH_CACHE", str(cache))
    monkeypatch.delenv("MPLCONFIGDIR", raising=False)
    assert expected in run_bad(capsys, tmp_path, tiny(tmp_path))
    assert "MPLCONFIGDIR" not in os.environ  # matplotlib was not sent to a folder it would fall back from


def test_a_refused_suite_leaves_no_cache_folder_behind(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TLBENCH_CACHE", "relative-cache")  # would appear in the current folder
    monkeypatch.delenv("MPLCONFIGDIR", raising=False)
    bad = tiny(tmp_path, TINY_SUITE.replace("strategies: [source_only, dann]", "strategies: [no_such_strategy]"))
    assert "unknown strategy 'no_such_strategy'" in run_bad(capsys, tmp_path, bad)
    assert not (tmp_path / "relative-cache").exists()
    assert "MPLCONFIGDIR" not in os.environ


def test_matplotlib_and_torch_write_into_the_cache(capsys, tmp_path, monkeypatch):
    for var in ("MPLCONFIGDIR", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        monkeypatch.delenv(var, raising=False)
    main(["list", "strategies"])
    cache = Path(os.environ["TLBENCH_CACHE"])
    assert Path(os.environ["MPLCONFIGDIR"]) == cache / "matplotlib"
    assert Path(os.environ["TORCHINDUCTOR_CACHE_DIR"]) == cache / "inductor"


def test_data_prepare_into_a_file_fails(capsys, tmp_path):
    cache = tmp_path / "cache.pt"
    cache.write_text("not a folder\n")
    code = main(["data", "prepare", str(tiny(tmp_path)), "--cache", str(cache)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [
        f"tlbench: error: --cache {cache} is a file, not a folder; point TLBENCH_CACHE (or --cache) at a folder"
    ]
    assert cache.read_text() == "not a folder\n"


# -- records that do not validate -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """One finished one-cell run, copied by each test that damages it."""
    root = tmp_path_factory.mktemp("finished")
    suite = root / "tiny.yaml"
    suite.write_text(TINY_SUITE)
    assert main(["run", str(suite), "--out", str(root / "out"), "--quiet", *ONE_CELL]) == 0
    return root


def copy_run(finished_run: Path, tmp_path: Path) -> tuple[Path, Path, Path]:
    """(suite, out, the cell's record.json) of a fresh copy of the finished run."""
    shutil.copytree(finished_run, tmp_path / "run")
    out = tmp_path / "run" / "out"
    (record,) = out.glob("cells/*/record.json")
    return tmp_path / "run" / "tiny.yaml", out, record


def _record_with_started_at_5(record: dict) -> dict:
    return {**record, "started_at": 5}


@pytest.mark.slow
@pytest.mark.parametrize("content", ["{}", "[]", "null", '"a string"', "started_at: 5", "not json {"])
def test_a_record_that_does_not_validate_is_named_and_its_cell_runs_again(capsys, tmp_path, finished_run, content):
    suite, out, record = copy_run(finished_run, tmp_path)
    good = json.loads(record.read_text())
    record.write_text(json.dumps(_record_with_started_at_5(good)) if content == "started_at: 5" else content)

    code = main(["report", str(out)])  # the bad record is no result: named, and no crash
    warning, error = capsys.readouterr().err.splitlines()
    assert code == 2 and error.startswith("tlbench: error: no finished cells in")
    assert warning.startswith(f"tlbench: warning: record {record} is not a valid cell record (")
    assert warning.endswith(REPORT_LEAVES_OUT)  # a report runs nothing

    code, stdout, err = run_ok(capsys, suite, out, *ONE_CELL)
    assert code == 0
    (warning,) = warnings_in(err)
    assert warning.startswith(f"tlbench: warning: record {record} is not a valid cell record (")
    assert warning.endswith("); its cell is run again")
    assert "1 cells: 1 run, 0 already done, 0 failed" in stdout
    rerun = json.loads(record.read_text())
    assert rerun["status"] == "ok" and rerun["target_acc"] == good["target_acc"]  # same cell, same result


REPORT_LEAVES_OUT = "); it is left out of the report ('tlbench run' with the same suite and --out runs its cell again)"


def test_a_report_says_a_damaged_record_is_left_out_not_run_again(capsys, tmp_path):
    from test_leaderboard import make_records, write_results

    out = write_results(tmp_path / "run", make_records())
    record = next(out.glob("cells/*/record.json"))
    record.write_text("not json {")
    assert main(["report", str(out), "--formats", "csv"]) == 0
    captured = capsys.readouterr()
    (warning,) = warnings_in(captured.err)
    assert warning.startswith(f"tlbench: warning: record {record} is not a valid cell record (")
    assert warning.endswith(REPORT_LEAVES_OUT) and "is run again" not in warning
    assert main(["curves", str(out)]) == 2  # these records have no curves; the damaged one is named the same way
    (warning,) = warnings_in(capsys.readouterr().err)
    assert warning.endswith(REPORT_LEAVES_OUT.replace("the report", "the curves"))


def test_a_run_says_a_damaged_record_has_its_cell_run_again(tmp_path):
    from tlbench.spec.store import ResultsDir

    record = tmp_path / "cells" / "abc" / "record.json"
    record.parent.mkdir(parents=True)
    record.write_text("[]")
    with pytest.warns(UserWarning) as caught:
        assert not ResultsDir(tmp_path).is_done("abc")
    (message,) = [str(w.message) for w in caught]
    assert message == (
        f"record {record} is not a valid cell record (expected a JSON object, got list); its cell is run again"
    )


def make_unreadable(path: Path, how: str, mib: int = 64) -> str:
    """Replace ``path`` with a FIFO, a link to /dev/zero, or a sparse file just over ``mib`` MiB; the
    reason a reader gives for refusing it."""
    if path.exists() or path.is_symlink():
        path.unlink()
    if how == "fifo":
        os.mkfifo(path)
    elif how == "/dev/zero":
        path.symlink_to("/dev/zero")
    else:
        with path.open("wb") as f:
            f.seek(mib * 2**20)
            f.write(b"\n")
        return f"larger than {mib} MiB"
    return "not a regular file"


@pytest.mark.parametrize("how", ["fifo", "/dev/zero", "large"])
def test_a_record_that_is_not_a_regular_file_is_damaged_not_read(tmp_path, how):
    from tlbench.spec.store import ResultsDir

    record = tmp_path / "cells" / "abc" / "record.json"
    record.parent.mkdir(parents=True)
    reason = make_unreadable(record, how)
    with fifo_writer(record) if how == "fifo" else contextlib.nullcontext():
        with pytest.warns(UserWarning) as caught:
            assert not ResultsDir(tmp_path).is_done("abc")
    (message,) = [str(w.message) for w in caught]
    assert message == f"record {record} is not a valid cell record ({reason}); its cell is run again"


@pytest.mark.parametrize("how", ["fifo", "large"])
def test_results_files_that_are_not_regular_are_left_out_of_a_report(capsys, tmp_path, how):
    from test_leaderboard import make_records, write_results

    out = write_results(tmp_path / "run", make_records())
    record, other = sorted(out.glob("cells/*/record.json"))[:2]
    reason = make_unreadable(record, how)
    make_unreadable(out / "suite.json", how)
    make_unreadable(other.parent / "curves.json", how, mib=256)
    with contextlib.ExitStack() as stack:
        if how == "fifo":
            for path in (record, out / "suite.json", other.parent / "curves.json"):
                stack.enter_context(fifo_writer(path))
        assert main(["report", str(out), "--formats", "csv"]) == 0
    assert warnings_in(capsys.readouterr().err) == [
        f"tlbench: warning: record {record} is not a valid cell record ({reason}{REPORT_LEAVES_OUT}",
        f"tlbench: warning: {out / 'suite.json'} is not a suite description ({reason}); reporting without it",
    ]


def test_a_record_that_is_a_fifo_has_its_cell_run_again(capsys, tmp_path, finished_run):
    suite, out, record = copy_run(finished_run, tmp_path)
    good = json.loads(record.read_text())
    make_unreadable(record, "fifo")
    make_unreadable(record.parent / "curves.json", "fifo")
    make_unreadable(record.parent / "running.json", "fifo")
    with fifo_writer(record), fifo_writer(record.parent / "curves.json"), fifo_writer(record.parent / "running.json"):
        code, stdout, err = run_ok(capsys, suite, out, *ONE_CELL)
    assert code == 0
    assert warnings_in(err) == [
        f"tlbench: warning: record {record} is not a valid cell record (not a regular file); its cell is run again"
    ]
    assert "1 cells: 1 run, 0 already done, 0 failed" in stdout
    rerun = json.loads(record.read_text())
    assert rerun["status"] == "ok" and rerun["target_acc"] == good["target_acc"]


def test_a_suite_json_that_is_a_list_is_reported_without(capsys, tmp_path, finished_run):
    _, out, _ = copy_run(finished_run, tmp_path)
    (out / "suite.json").write_text("[1, 2]\n")
    assert main(["report", str(out), "--formats", "markdown"]) == 0
    captured = capsys.readouterr()
    assert warnings_in(captured.err) == [
        f"tlbench: warning: {out / 'suite.json'} is not a suite description "
        "(expected a JSON object, got list); reporting without it"
    ]
    assert (out / "leaderboard.md").is_file()


@pytest.mark.parametrize("what", [".lock", "cells", "record.json", "suite.json"])
def test_a_results_file_of_the_wrong_kind_is_one_line(capsys, tmp_path, finished_run, what):
    suite, out, record = copy_run(finished_run, tmp_path)
    if what == "cells":
        shutil.rmtree(out / "cells")
        target = out / "cells"
        target.write_text("a file\n")
        kind = "folder"
    else:
        target = record if what == "record.json" else out / what
        target.unlink()
        target.mkdir()
        kind = "file"
    code = main(["run", str(suite), "--out", str(out), "--quiet", *ONE_CELL])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0] == (
        f"tlbench: error: {target} should be a {kind} but is not; remove it (tlbench writes it) and run again"
    )


@pytest.mark.parametrize("what", ["cells", "cells/<id>"])
def test_a_symlinked_cells_folder_is_refused_not_followed(capsys, tmp_path, finished_run, what):
    suite, out, record = copy_run(finished_run, tmp_path)
    outside = tmp_path / "elsewhere"
    link = out / "cells" if what == "cells" else record.parent
    shutil.move(link, outside)
    shutil.rmtree(outside)
    outside.mkdir()
    link.symlink_to(outside, target_is_directory=True)
    code = main(["run", str(suite), "--out", str(out), "--quiet", *ONE_CELL])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0] == (
        f"tlbench: error: {link} is a symbolic link, and tlbench writes only inside --out {out}; "
        "remove the link (tlbench makes the folder) and run again"
    )
    assert list(outside.iterdir()) == []  # nothing was written through the link


def test_report_into_a_file_is_one_line(capsys, tmp_path, finished_run):
    _, out, _ = copy_run(finished_run, tmp_path)
    target = tmp_path / "report.md"
    target.write_text("mine\n")
    assert main(["report", str(out), "--out", str(target)]) == 2
    assert (
        capsys.readouterr().err == f"tlbench: error: report folder {target} is a file, not a folder; "
        "give another --out\n"
    )
    assert target.read_text() == "mine\n"


# -- the output folder --------------------------------------------------------------------------------
def test_out_that_is_a_file_is_one_line(capsys, tmp_path):
    out = tmp_path / "out"
    out.write_text("x\n")
    code = main(["run", str(tiny(tmp_path)), "--out", str(out), "--quiet"])
    assert code == 2 and capsys.readouterr().err == (
        f"tlbench: error: --out {out} is a file, not a folder; choose another --out (a folder, new or from an "
        "earlier run)\n"
    )


def test_out_under_a_file_is_one_line(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x\n")
    out = blocker / "out"
    code = main(["run", str(tiny(tmp_path)), "--out", str(out), "--quiet"])
    assert code == 2 and capsys.readouterr().err == (
        f"tlbench: error: --out {out}: {blocker} is a file, so no folder can be made under it; choose another --out\n"
    )


@pytest.mark.parametrize("extra", [["--quiet"], ["--dry-run"]], ids=["run", "dry-run"])
@pytest.mark.parametrize("empty", ["", " "], ids=["empty", "blank"])
def test_an_empty_out_is_refused_not_the_current_folder(capsys, tmp_path, monkeypatch, extra, empty):
    suite = tiny(tmp_path)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # --out "$OUT" with OUT unset: '' would be this folder
    code = main(["run", str(suite), "--out", empty, *extra])
    captured = capsys.readouterr()
    assert (
        code == 2
        and captured.out == ""
        and captured.err
        == (
            'tlbench: error: --out is empty (an unset variable in --out "$OUT"?); give a folder, or leave --out out '
            "to write to runs/<suite name>\n"
        )
    )
    assert list(cwd.iterdir()) == []


@pytest.mark.parametrize("command", [["run"], ["data", "prepare"]])
def test_an_empty_cache_is_refused_not_the_current_folder(capsys, tmp_path, monkeypatch, command):
    suite = tiny(tmp_path)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # --cache "$CACHE" with CACHE unset: '' would be this folder
    code = main([*command, str(suite), "--cache", ""])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert captured.err == (
        'tlbench: error: --cache is empty (an unset variable in --cache "$CACHE"?); give a folder, or leave '
        "--cache out to use $TLBENCH_CACHE or ~/.cache/tlbench\n"
    )
    assert list(cwd.iterdir()) == []


def test_report_into_an_empty_out_is_refused_not_the_current_folder(capsys, tmp_path, monkeypatch):
    from test_leaderboard import make_records, write_results

    results = write_results(tmp_path / "run", make_records())
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    assert main(["report", str(results), "--out", ""]) == 2
    assert capsys.readouterr().err == (
        'tlbench: error: --out is empty (an unset variable in --out "$OUT"?); give a folder, or leave --out out '
        "to write to the first directory\n"
    )
    assert list(cwd.iterdir()) == [] and not (results / "leaderboard.csv").exists()


def test_out_that_cannot_be_written_is_one_line(capsys, tmp_path):
    out = Path("/sys/tlbench-test-out")  # refused even to root
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        out = locked / "out"
    code = main(["run", str(tiny(tmp_path)), "--out", str(out), "--quiet", *ONE_CELL])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith(f"tlbench: error: --out {out}"), err
    assert "Traceback" not in "\n".join(err) and not out.exists()


# -- reruns: failed cells retried, the exit code of the whole matrix ---------------------------------------
class FailsWhileFlagged(tlbench.Strategy):
    """Fails while ``$TLBENCH_TEST_FAIL_FLAG`` names an existing file: a fault of the machine, since fixed."""

    name = "fails_while_flagged"

    def training_step(self, batch, ctx):
        if Path(os.environ["TLBENCH_TEST_FAIL_FLAG"]).exists():
            raise RuntimeError("the device went away")
        return tlbench.StepOutput(F.cross_entropy(ctx.model(batch.source), batch.source_labels))


class GoesNaN(tlbench.Strategy):
    name = "goes_nan"

    def training_step(self, batch, ctx):
        return tlbench.StepOutput(F.cross_entropy(ctx.model(batch.source), batch.source_labels) * float("nan"))


class Exits(tlbench.Strategy):
    """Calls sys.exit() inside its training step, as a careless strategy might."""

    name = "exits"

    def training_step(self, batch, ctx):
        sys.exit(3)


@tlbench.hookimpl
def register_strategies(register):
    for cls in (FailsWhileFlagged, GoesNaN, Exits):
        register(cls)


DAMAGE_TEACHER = {"on": False}


@tlbench.hookimpl
def before_cell(cell):
    """Damage the kd teacher's weights just before its student starts (while asked to)."""
    if DAMAGE_TEACHER["on"] and cell.teacher is not None:
        for path in Path(os.environ["TLBENCH_TEST_OUT"]).glob(f"cells/{cell.teacher.id}/model.pt"):
            path.write_bytes(b"damaged")


@pytest.fixture
def faulty(monkeypatch, tmp_path):
    monkeypatch.setenv("TLBENCH_TEST_FAIL_FLAG", str(tmp_path / "flag"))
    monkeypatch.setenv("TLBENCH_TEST_OUT", str(tmp_path / "out"))
    set_registry(
        Registry(
            plugins={
                "test_reliability": types.SimpleNamespace(
                    register_strategies=register_strategies, before_cell=before_cell
                )
            }
        )
    )
    yield tmp_path / "flag"
    DAMAGE_TEACHER["on"] = False
    set_registry(None)


@pytest.mark.slow
def test_a_rerun_retries_failed_cells(faulty, capsys, tmp_path):
    suite = tiny(tmp_path, TINY_SUITE.replace("[source_only, dann]", "[fails_while_flagged, source_only]"))
    out = tmp_path / "out"
    faulty.write_text("")
    code, stdout, _ = run_ok(capsys, suite, out)
    assert code == 1 and "2 cells: 2 run, 0 already done, 1 failed" in stdout
    faulty.unlink()  # the machine is fixed: the same command again retries the failed cell only
    code, stdout, _ = run_ok(capsys, suite, out)
    assert code == 0 and "2 cells: 1 run, 1 already done, 0 failed" in stdout
    assert set(pd.read_csv(out / "results.csv")["status"]) == {"ok"}


@pytest.mark.slow
def test_diverged_cells_are_kept_and_the_exit_code_is_the_whole_matrix(faulty, capsys, tmp_path):
    suite = tiny(tmp_path, TINY_SUITE.replace("[source_only, dann]", "[goes_nan, source_only]"))
    out = tmp_path / "out"
    code, stdout, _ = run_ok(capsys, suite, out)
    assert code == 1 and "2 cells: 2 run, 0 already done, 1 failed" in stdout
    code, stdout, _ = run_ok(capsys, suite, out)  # nothing to run, and still not every cell is ok
    assert code == 1 and "2 cells: 0 run, 2 already done, 1 failed" in stdout
    assert "  diverged: test_efficientnet goes_nan digits->digits+invert seed=0: loss became non-finite" in stdout
    code, stdout, _ = run_ok(capsys, suite, out, "--strategies", "source_only")  # this matrix is all ok
    assert code == 0 and "1 cells: 0 run, 1 already done, 0 failed" in stdout
    code, stdout, _ = run_ok(capsys, suite, out, "--force", "--strategies", "goes_nan")
    assert code == 1 and "1 cells: 1 run, 0 already done, 1 failed" in stdout


@pytest.mark.slow
def test_a_strategy_that_calls_sys_exit_fails_its_cell_only(faulty, capsys, tmp_path):
    suite = tiny(tmp_path, TINY_SUITE.replace("[source_only, dann]", "[exits, source_only]"))
    out = tmp_path / "out"
    code, stdout, _ = run_ok(capsys, suite, out)
    assert code == 1 and "2 cells: 2 run, 0 already done, 1 failed" in stdout
    df = pd.read_csv(out / "results.csv").set_index("strategy")
    assert df.loc["exits", "status"] == "failed" and df.loc["exits", "error"] == "SystemExit: 3"
    assert df.loc["source_only", "status"] == "ok"


KD_SUITE = TINY_SUITE.replace("[source_only, dann]", "[{kd: {teacher_strategy: source_only}}]")


@pytest.mark.slow
def test_a_damaged_kd_teacher_is_retrained_by_the_same_command(faulty, capsys, tmp_path):
    suite = tiny(tmp_path, KD_SUITE)
    out = tmp_path / "out"
    DAMAGE_TEACHER["on"] = True
    code, stdout, _ = run_ok(capsys, suite, out)
    assert code == 1
    assert "damaged (checksum mismatch); run the same command again to retrain the teacher" in stdout
    DAMAGE_TEACHER["on"] = False
    code, stdout, _ = run_ok(capsys, suite, out)  # what the message says to do
    assert code == 0 and "2 cells: 2 run, 0 already done, 0 failed" in stdout  # teacher retrained, student rerun


# -- memory ---------------------------------------------------------------------------------------------
def test_a_batch_that_cannot_fit_in_memory_is_refused_before_training(capsys, tmp_path):
    line = run_bad(
        capsys, tmp_path, tiny(tmp_path), "--device", "cpu", "--set", "recipe.batch_size=1000000000", *ONE_CELL
    )
    assert "test_efficientnet source_only digits->digits+invert seed=0: one training step needs at least" in line
    assert line.endswith("GiB are available; lower recipe.batch_size (now 1000000000) or recipe.image_size")


def _run_subprocess(suite: Path, out: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tlbench", "run", str(suite), "--out", str(out), "--quiet"],
        capture_output=True,
        text=True,
        env=env,
        cwd=suite.parent,
        timeout=600,
    )


@pytest.mark.slow
def test_a_cell_that_kills_its_process_is_that_cells_failure(tmp_path):
    kill_dir = tmp_path / "kill"
    kill_dir.mkdir()
    for i in range(2):  # the first cell to start kills the run, twice
        (kill_dir / f"token{i}").write_text("")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS), str(ROOT), str(ROOT / "plugins")]),
        "TLBENCH_PLUGINS": "kill_plugin",
        "TLBENCH_TEST_KILL_DIR": str(kill_dir),
        "OMP_NUM_THREADS": "1",
    }
    suite = tiny(tmp_path)
    out = tmp_path / "out"
    first = _run_subprocess(suite, out, env)
    assert first.returncode == -9
    (sentinel,) = out.glob("cells/*/running.json")
    cell_id = sentinel.parent.name

    second = _run_subprocess(suite, out, env)  # a death may be anything: the cell is tried again, with a word
    assert second.returncode == -9
    assert f"tlbench: warning: cell {cell_id} (" in second.stderr
    assert "was running when an earlier run died (killed, out of memory?); running it again" in second.stderr

    third = _run_subprocess(suite, out, env)  # twice: the cell's failure, and the matrix goes on
    assert third.returncode == 1, third.stderr
    assert "2 cells: 1 run, 0 already done, 1 failed" in third.stdout
    record = json.loads((out / "cells" / cell_id / "record.json").read_text())
    assert record["status"] == "failed"
    assert record["error"].startswith("killed: the run died 2 times while this cell was running")
    assert record["error"].endswith(
        "run the same command again to retry it, with a smaller recipe.batch_size if memory was short"
    )
    assert not list(out.glob("cells/*/running.json"))

    fourth = _run_subprocess(suite, out, env)  # what the message says: the same command retries it
    assert fourth.returncode == 0, fourth.stderr
    assert "2 cells: 1 run, 1 already done, 0 failed" in fourth.stdout


# -- bad input found before any cell trains -------------------------------------------------------------
@pytest.mark.parametrize(
    "args, expected",
    [
        (
            ["--set", "strategies=[{source_only: {label_smoothing: abc}}]"],
            "strategies.source_only.params: label_smoothing: expected a number, got 'abc'",
        ),
        (
            ["--set", "strategies=[{source_only: {label_smoothing: 5}}]"],
            "strategies.source_only.params: label_smoothing must lie in [0, 1) (0 is plain cross-entropy), got 5",
        ),
        (
            ["--set", "strategies=[{dann: {trade_off: abc}}]"],
            "strategies.dann.params: trade_off: expected a number, got 'abc'",
        ),
        (["--set", "strategies=[{mmd: {alphas: [1, x]}}]"], "strategies.mmd.params: alphas: item 1: expected a number"),
        (
            ["--set", "strategies=[{dann: {hidden: true}}]"],
            "strategies.dann.params: hidden: expected a whole number, got True",
        ),
        (
            ["--seeds", "99999999999999999999"],
            "--seeds 99999999999999999999: seeds.0: Input should be less than or equal to 9223372036854775807",
        ),
        (["--seeds", ","], "tlbench run: error: argument --seeds: ',': expected integers like 0,1,2"),
        (["--set", "recipe.lr=.inf"], "--set recipe.lr=.inf: recipe.lr: Input should be a finite number"),
        (["--set", "recipe.lr=1e30"], "--set recipe.lr=1e30: recipe.lr: Input should be less than or equal to 10"),
        (
            ["--set", "recipe.steps=true"],
            "--set recipe.steps=true: recipe.steps: Value error, expected a number, not a boolean (got True)",
        ),
        (["--set", "recipe.stepz=5"], "--set recipe.stepz=5: recipe.stepz: unknown key"),
        (["--pairs", "digits->digits+invert:3"], "shift 'invert' takes no severity; write 'invert', not 'invert:3'"),
    ],
)
def test_bad_values_are_one_line_before_training(capsys, tmp_path, args, expected):
    if args[0] == "--seeds" and args[1] == ",":  # argparse's own errors: one line too, and where help is
        with pytest.raises(SystemExit) as exc:
            main(["run", str(tiny(tmp_path)), *args])
        err = capsys.readouterr().err.strip().splitlines()
        assert exc.value.code == 2 and err == [expected + " (see 'tlbench run --help')"]
        return
    assert expected in run_bad(capsys, tmp_path, tiny(tmp_path), *args)


def test_argparse_errors_are_one_line_with_where_help_is(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run"])
    assert exc.value.code == 2
    assert capsys.readouterr().err == (
        "tlbench run: error: the following arguments are required: suite (see 'tlbench run --help')\n"
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_device_cuda_without_a_gpu(capsys, tmp_path):
    assert run_bad(capsys, tmp_path, tiny(tmp_path), "--device", "cuda") == (
        "tlbench: error: --device cuda: no CUDA GPU is available here (torch.cuda.is_available() is False); "
        "use --device cpu or --device auto"
    )


def test_a_yaml_alias_bomb_is_refused_without_expanding_it(capsys, tmp_path):
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    line = run_bad(capsys, tmp_path, HOSTILE / "alias_bomb.yaml")
    assert line == (
        f"tlbench: error: {HOSTILE / 'alias_bomb.yaml'}: the suite expands to more than 100,000 values "
        "once its YAML aliases (*name) are followed; write the values out, or use fewer aliases"
    )
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB: far from a GB


@contextlib.contextmanager
def fifo_writer(fifo: Path):
    """Opens ``fifo`` for writing (and closes it) as soon as a reader opens it, so a read that should
    never have started ends at once, with nothing, instead of hanging the test."""
    stop = threading.Event()

    def unblock() -> None:
        while not stop.is_set():
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
                return
            except OSError:  # ENXIO: no reader yet
                time.sleep(0.02)

    thread = threading.Thread(target=unblock, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


SUITE_NOT_REGULAR = "not a regular file; a suite must be a regular YAML file of at most 4 MiB"


def test_a_suite_that_is_a_fifo_is_refused_without_opening_it(capsys, tmp_path):
    fifo = tmp_path / "suite.yaml"
    os.mkfifo(fifo)
    with fifo_writer(fifo):
        line = run_bad(capsys, tmp_path, fifo)
    assert line == f"tlbench: error: {fifo}: {SUITE_NOT_REGULAR}"


@pytest.mark.parametrize("how", ["device", "link"])
def test_a_suite_that_is_a_device_is_refused_without_reading_it(capsys, tmp_path, how):
    suite = Path("/dev/zero")
    if how == "link":
        suite = tmp_path / "zero.yaml"
        suite.symlink_to("/dev/zero")
    assert run_bad(capsys, tmp_path, suite) == f"tlbench: error: {suite}: {SUITE_NOT_REGULAR}"


def test_a_suite_file_over_4_mib_is_refused_without_reading_it(capsys, tmp_path):
    suite = tmp_path / "huge.yaml"
    with suite.open("wb") as f:  # sparse: 5 MiB long, one byte written
        f.seek(5 * 2**20)
        f.write(b"\n")
    assert run_bad(capsys, tmp_path, suite) == (
        f"tlbench: error: {suite}: larger than 4 MiB; a suite must be a regular YAML file of at most 4 MiB"
    )


def test_a_key_given_twice_is_an_error_not_the_last_one_wins(capsys, tmp_path):
    line = run_bad(capsys, tmp_path, HOSTILE / "duplicate_keys.yaml")
    assert line == (
        f"tlbench: error: {HOSTILE / 'duplicate_keys.yaml'}:10:3: malformed YAML: key 'steps' is given "
        "twice in one mapping"
    )


def _folder_suite_all(tmp_path: Path, data: Path) -> Path:
    path = folder_suite(tmp_path, data)
    path.write_text(path.read_text().replace("pairs: [src->tgt]", "pairs: all"))
    return path


def test_pairs_all_on_a_one_domain_dataset_is_refused(capsys, tmp_path):
    data = make_folders(tmp_path / "data", {"only": ["a", "b"]})
    line = run_bad(capsys, tmp_path, _folder_suite_all(tmp_path, data))
    assert line == (
        "tlbench: error: pairs: all: dataset 'image_folder' has 1 domain(s) (only), so there is no "
        "pair; add a domain or list pairs such as 'digits->digits+rotate:3'"
    )


@pytest.mark.parametrize("pairs", ["all", "amazon->amazon+invert"])
def test_a_domain_folder_named_like_a_shift_is_named(capsys, tmp_path, pairs):
    data = make_folders(tmp_path / "data", {"amazon": ["a", "b"], "amazon+invert": ["a", "b"]})
    path = folder_suite(tmp_path, data, pair="amazon->amazon+invert")
    if pairs == "all":
        path.write_text(path.read_text().replace("pairs: [amazon->amazon+invert]", "pairs: all"))
    line = run_bad(capsys, tmp_path, path)
    assert line == (
        "tlbench: error: dataset 'image_folder': domain 'amazon+invert' has '+' in its name, which "
        "pairs use for shifts ('amazon+invert' reads as domain 'amazon' shifted); rename it without '+'"
    )


def test_an_empty_class_folder_is_named(capsys, tmp_path):
    data = make_folders(tmp_path / "data", {"src": ["a", "b"], "tgt": ["a", "b"]})
    (data / "tgt" / "c").mkdir()
    (data / "src" / "c").mkdir()
    make_folders(data, {"src": ["c"]})
    line = run_bad(capsys, tmp_path, folder_suite(tmp_path, data))
    assert f"class folder {data / 'tgt' / 'c'} has no images" in line


def test_a_class_folder_that_links_to_its_parent_is_named(capsys, tmp_path):
    data = make_folders(tmp_path / "data", {"src": ["a", "b"], "tgt": ["a", "b"]})
    (data / "src" / "loop").symlink_to("..")
    (data / "tgt" / "loop").symlink_to("..")
    line = run_bad(capsys, tmp_path, folder_suite(tmp_path, data))
    assert f"class folder {data / 'src' / 'loop'} is a link to " in line and "(a loop); remove the link" in line


def test_a_fifo_named_like_an_image_does_not_hang_the_preflight(capsys, tmp_path):
    data = make_folders(tmp_path / "data", {"src": ["a", "b"], "tgt": ["a", "b"]})
    fifo = data / "tgt" / "a" / "pipe.jpg"
    os.mkfifo(fifo)
    line = run_bad(capsys, tmp_path, folder_suite(tmp_path, data))
    assert line == (
        f"tlbench: error: {fifo} is not a regular file (a folder, a FIFO or a device); remove it or "
        "rename it without an image suffix"
    )


NPZ_SUITE = """\
name: npz
dataset: npz
dataset_options: {{files: {{src: {src}, tgt: {tgt}}}}}
pairs: [src->tgt]
backbones: [{{name: test_efficientnet, weights: random}}]
strategies: [source_only]
recipe: {{steps: 2, batch_size: 4, image_size: 8, resize_size: 8, hflip: false, log_every: 1, source_holdout: 0}}
"""


def _npz(path: Path, labels: list[int]) -> Path:
    rng = np.random.default_rng(len(labels))
    np.savez(path, x=rng.integers(0, 256, (len(labels), 8, 8), dtype=np.uint8), y=np.array(labels))
    return path


def test_an_npz_target_without_a_class_of_the_source(capsys, tmp_path):
    src, tgt = _npz(tmp_path / "src.npz", [0, 1, 2, 0, 1, 2]), _npz(tmp_path / "tgt.npz", [0, 1, 0, 1])
    line = run_bad(capsys, tmp_path, tiny(tmp_path, NPZ_SUITE.format(src=src, tgt=tgt)))
    assert line == (
        "tlbench: error: pair src->tgt: 1 class(es) of the source have no image in the target (class "
        "index 2); every domain needs images of every class"
    )


def test_an_npz_label_far_beyond_the_others(capsys, tmp_path):
    src, tgt = _npz(tmp_path / "src.npz", [0, 1, 200000]), _npz(tmp_path / "tgt.npz", [0, 1, 0])
    line = run_bad(capsys, tmp_path, tiny(tmp_path, NPZ_SUITE.format(src=src, tgt=tgt)))
    assert line == (
        "tlbench: error: dataset 'npz': the largest label is 200000, but 199998 of the classes "
        "0..200000 have no image in any domain (e.g. 2); labels must be 0..K-1 (renumber y)"
    )


def test_a_file_given_as_the_image_folder_is_called_a_file(capsys, tmp_path):
    data = tmp_path / "data.txt"
    data.write_text("x\n")
    line = run_bad(capsys, tmp_path, folder_suite(tmp_path, data))
    assert line == (
        f"tlbench: error: dataset 'image_folder': path {data} is a file, not a folder; expected "
        f"{data}/<domain>/<class>/<image>"
    )


@pytest.mark.slow
def test_a_feature_cache_path_that_is_a_folder_is_a_warning(capsys, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("TLBENCH_CACHE", str(cache))
    suite = tiny(tmp_path, TINY_SUITE.replace("[source_only, dann]", "[freeze]"))
    assert main(["run", str(suite), "--out", str(tmp_path / "first"), "--quiet"]) == 0
    capsys.readouterr()
    feature_files = sorted((cache / "features").rglob("*.pt"))
    assert feature_files
    for path in feature_files:
        path.unlink()
        path.mkdir()
    code, _, err = run_ok(capsys, suite, tmp_path / "second")
    assert code == 0, err
    for path in feature_files:
        assert any(f"could not write cache file {path}" in w for w in warnings_in(err)), err


# -- messages ---------------------------------------------------------------------------------------------
def test_weights_with_pickled_code_are_refused_in_one_line_naming_the_file(capsys, tmp_path):
    bad = tmp_path / "evil.pth"
    torch.save({"w": torch.zeros(1), "obj": types.SimpleNamespace(a=1)}, bad)
    line = run_bad(capsys, tmp_path, tiny(tmp_path, TINY_SUITE.replace("weights: random", f"weights: {bad}")))
    assert line.startswith(
        f"tlbench: error: cannot load weights file {bad} (UnpicklingError: Weights only load failed."
    )


def test_weights_of_the_wrong_shape_name_the_key_and_both_shapes(capsys, tmp_path):
    import timm

    state = timm.create_model("test_efficientnet", num_classes=0).state_dict()
    key = next(k for k, v in state.items() if v.dim() == 4)
    expected = tuple(state[key].shape)
    state[key] = torch.zeros(expected[0] + 1, *expected[1:])
    path = tmp_path / "other.pth"
    torch.save(state, path)
    line = run_bad(capsys, tmp_path, tiny(tmp_path, TINY_SUITE.replace("weights: random", f"weights: {path}")))
    assert (
        f"do not fit test_efficientnet: {key} has shape {(expected[0] + 1, *expected[1:])} in the file and "
        f"{expected} in the model" in line
    )


@pytest.mark.parametrize(
    "weights, expected",
    [
        (
            "efficientnet_lit",
            "backbone 'test_efficientnet': unknown weights 'efficientnet_lit'; did you mean efficientnet_lite?",
        ),
        ("/nonexistent/w.pth", "backbone 'test_efficientnet': weights file /nonexistent/w.pth does not exist"),
    ],
)
def test_weights_names_and_paths(capsys, tmp_path, weights, expected):
    line = run_bad(capsys, tmp_path, tiny(tmp_path, TINY_SUITE.replace("weights: random", f"weights: {weights}")))
    assert line.startswith("tlbench: error: " + expected), line


def test_set_errors_are_blamed_on_set(capsys, tmp_path):
    line = run_bad(capsys, tmp_path, tiny(tmp_path), "--set", "recipe.batch_size=many")
    assert line.startswith("tlbench: error: --set recipe.batch_size=many: recipe.batch_size: ")


def test_domain_names_are_escaped_in_the_markdown_report():
    from tlbench.reporting.leaderboard import build_leaderboard
    from tlbench.spec.record import CellRecord
    from tlbench_builtins.reports.markdown import render

    hostile = "<img src=x onerror=alert(1)>"
    record = CellRecord(
        suite="s",
        dataset="image_folder",
        backbone="b",
        strategy="source_only",
        source="src",
        target=hostile,
        seed=0,
        status="ok",
        target_acc=50.0,
        source_acc=60.0,
        cell_id="c",
        started_at="2024-01-01T00:00:00+00:00",
    )
    text = render(build_leaderboard([record], {"name": "s"}))
    assert hostile not in text and not re.search(r"(?<!\\)<", text)  # every < escaped
    assert r"src→\<img src=x onerror=alert(1)\>" in text
