"""The command line and its output under a hostile user (issue 35): ``--set`` values held to the suite
file's YAML limits, nesting thousands deep, names too long for the file system, a full disk, an
unwritable ``--png``, and Ray's own notices: each one line on stderr and exit 2, never a traceback.

A full disk and a read-only file system are simulated in-process (the tests may run as root, who
writes anywhere), by making the operating-system call that would fail raise its error.
"""

from __future__ import annotations

import errno
import importlib.util
import os
import resource
from pathlib import Path

import pytest
from test_bad_input import run_bad, tiny

from tlbench.cli import main
from tlbench.spec.suite_yaml import MAX_SUITE_DEPTH

#: six levels of ten: a million values once followed, from 227 characters
ALIAS_BOMB = (
    "[&a [x,x,x,x,x,x,x,x,x,x], &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a], &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b], "
    "&d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c], &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d], &f [*e,*e,*e,*e,*e,*e,*e,*e,*e,*e]]"
)
#: four levels of ten: about 11,000 values, under the limit alone, over it ten times over
ALIAS_TEN_THOUSAND = (
    "[&a [x,x,x,x,x,x,x,x,x,x], &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a], &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b], "
    "[*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]]"
)
TOO_MANY = (
    "expands to more than 100,000 values once its YAML aliases (*name) are followed; "
    "write the values out, or use fewer aliases"
)
DEEP = {"list": "[" * 5000 + "]" * 5000, "mapping": "{a: " * 5000 + "1" + "}" * 5000}
TOO_DEEP = f"nests lists or mappings more than {MAX_SUITE_DEPTH} levels deep; a suite needs a few"


def one_error_line(capsys, code: int) -> str:
    """The one ``tlbench: error:`` line of a command that exited 2 (checked), without its prefix."""
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("tlbench: error: "), captured
    assert "Traceback" not in captured.out + captured.err
    return lines[0].removeprefix("tlbench: error: ")


# -- --set values: the suite file's limits -------------------------------------------------------------
@pytest.mark.parametrize("key", ["launcher.options.x", "dataset_options.path"])
def test_an_alias_bomb_in_set_is_refused_without_expanding_it(capsys, tmp_path, key):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    line = run_bad(capsys, tmp_path, tiny(tmp_path), "--dry-run", "--set", f"{key}={ALIAS_BOMB}")
    shown = f"{key}={ALIAS_BOMB}"[:60]
    assert line.startswith(f"tlbench: error: --set {shown}... ({len(key) + 1 + len(ALIAS_BOMB)} characters): ")
    assert line.endswith(f": the value {TOO_MANY}")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KiB: nothing expanded


def test_set_values_that_together_expand_too_far_are_refused(capsys, tmp_path):
    sets = [a for i in range(10) for a in ("--set", f"launcher.options.x{i}={ALIAS_TEN_THOUSAND}")]
    line = run_bad(capsys, tmp_path, tiny(tmp_path), "--dry-run", *sets)
    assert line == f"tlbench: error: --set: the suite with its --set values {TOO_MANY}"


def test_a_set_value_that_is_not_yaml_is_still_a_plain_string(capsys, tmp_path):
    line = run_bad(capsys, tmp_path, tiny(tmp_path), "--dry-run", "--set", "recipe.lr=@fast")
    assert line.startswith("tlbench: error: --set recipe.lr=@fast: recipe.lr: ") and "'@fast'" in line


def test_a_long_or_multiline_set_is_quoted_short_and_on_one_line(capsys, tmp_path):
    line = run_bad(capsys, tmp_path, tiny(tmp_path), "--dry-run", "--set", "recipe.steps=" + "9" * 100_000)
    assert line.startswith("tlbench: error: --set recipe.steps=999") and "(100,013 characters): recipe.steps" in line
    assert len(line) < 400
    line = run_bad(capsys, tmp_path, tiny(tmp_path), "--dry-run", "--set", "recipe.new\nkey=1")
    assert line.startswith("tlbench: error: --set recipe.new\\nkey=1: recipe.new\\nkey: unknown key")


def test_a_date_that_does_not_exist_in_set_is_a_string(capsys, tmp_path):
    line = run_bad(capsys, tmp_path, tiny(tmp_path), "--dry-run", "--set", "recipe.steps=2024-13-45")
    assert line.startswith("tlbench: error: --set recipe.steps=2024-13-45: recipe.steps: ") and "'2024-13-45'" in line


@pytest.mark.parametrize(
    "value, problem",
    [
        ("2024-13-45", "'2024-13-45' cannot be read as timestamp (month must be in 1..12)"),
        ("9" * 5000, "'999999999999999999999999999999...' cannot be read as int (Exceeds the limit (4300 digits)"),
    ],
)
def test_a_scalar_python_cannot_hold_is_malformed_yaml_at_its_place(capsys, tmp_path, value, problem):
    from conftest import TINY_SUITE

    suite = tiny(tmp_path, TINY_SUITE + f"extra: {value}\n")
    line = run_bad(capsys, tmp_path, suite, "--dry-run")
    assert line.startswith(f"tlbench: error: {suite}:{TINY_SUITE.count(chr(10)) + 1}:8: malformed YAML: {problem}")


# -- nesting thousands deep -------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(DEEP))
def test_yaml_nested_thousands_deep_in_a_suite_is_one_line(capsys, tmp_path, kind):
    from conftest import TINY_SUITE

    suite = tiny(tmp_path, TINY_SUITE + f"extra: {DEEP[kind]}\n")
    line = run_bad(capsys, tmp_path, suite, "--dry-run")
    assert line.startswith(f"tlbench: error: {suite}:{TINY_SUITE.count(chr(10)) + 1}:")  # the line, a column
    assert line.endswith(f": the suite {TOO_DEEP}")


@pytest.mark.parametrize("kind", sorted(DEEP))
def test_yaml_nested_thousands_deep_in_set_is_one_line(capsys, tmp_path, kind):
    line = run_bad(capsys, tmp_path, tiny(tmp_path), "--dry-run", "--set", f"recipe.x={DEEP[kind]}")
    assert line.startswith("tlbench: error: --set recipe.x=") and line.endswith(f": the value {TOO_DEEP}")


def test_a_suite_nested_as_deep_as_allowed_is_read():
    from tlbench.spec.suite_yaml import parse_yaml

    value = parse_yaml("[" * MAX_SUITE_DEPTH + "]" * MAX_SUITE_DEPTH, "x", what="the value")
    for _ in range(MAX_SUITE_DEPTH - 1):
        (value,) = value
    assert value == []


# -- names longer than the file system takes ------------------------------------------------------------
LONG = "a" * 300


@pytest.mark.parametrize(
    "args, flag",
    [
        (["run", "SUITE", "--out", f"OUT/{LONG}", "--quiet"], "--out"),
        (["run", "SUITE", "--out", f"OUT/{LONG}/{LONG}/x", "--dry-run"], "--out"),
        (["run", "SUITE", "--out", "OUT", "--cache", f"OUT/{LONG}", "--quiet"], "--cache"),
        (["run", "SUITE", "--out", "OUT", "--data-root", f"OUT/{LONG}", "--quiet"], "--data-root"),
        (["run", f"OUT/{LONG}.yaml"], "suite file"),
        (["report", f"OUT/{LONG}"], "results directory"),
        (["report", "OUT", "--out", f"OUT/{LONG}"], "--out"),
        (["curves", "OUT", "--png", f"OUT/{LONG}.png"], "--png"),
    ],
)
def test_a_path_with_a_name_too_long_for_the_file_system_is_one_line(capsys, tmp_path, args, flag):
    suite, out = tiny(tmp_path), tmp_path / "out"
    out.mkdir()
    args = [a.replace("SUITE", str(suite)).replace("OUT", str(out)) for a in args]
    line = one_error_line(capsys, main(args))
    assert (
        line.startswith(f"{flag}: the name 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa...' is 30")
        and "bytes long, longer than" in line
    )
    assert line.endswith("this file system takes; give a shorter one")
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("where", ["suite", "environment"])
def test_a_data_root_with_a_name_too_long_is_one_line(capsys, tmp_path, monkeypatch, where):
    from conftest import TINY_SUITE

    root = str(tmp_path / LONG)
    if where == "environment":
        monkeypatch.setenv("TLBENCH_DATA_ROOT", root)
    suite = tiny(tmp_path, TINY_SUITE + (f"data_root: {root}\n" if where == "suite" else ""))
    line = run_bad(capsys, tmp_path, suite, "--strategies", "source_only")
    assert line.startswith("tlbench: error: the data root: the name 'aaaaaaaaaa") and "300 bytes long" in line


def test_a_path_longer_than_the_file_system_takes_is_one_line(capsys, tmp_path):
    deep = tmp_path.joinpath(*["b" * 250] * 20)
    line = one_error_line(capsys, main(["run", str(tiny(tmp_path)), "--out", str(deep), "--quiet"]))
    assert line.startswith("--out: the path is ") and line.endswith(" bytes; give a shorter one")


# -- a full disk, an unwritable destination --------------------------------------------------------------
def fail_writes(monkeypatch, code: int, under: Path) -> None:
    """Every atomic write (results, reports, PNGs) under ``under`` fails with ``code`` at its fsync, as
    the disk holding that folder would (a full disk fails at the write or the fsync)."""
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").startswith(str(under)):
            raise OSError(code, os.strerror(code))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def reported_run(tmp_path: Path) -> Path:
    """A results folder of finished records with curves, made without training."""
    from test_leaderboard import make_records, write_results

    records = make_records()
    for r in records:
        r.curves = {"steps": [1, 2], "series": {"loss": [1.0, 0.5]}}
    return write_results(tmp_path / "run", records)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_a_run_on_a_full_disk_is_one_line_naming_the_output_folder(capsys, tmp_path, monkeypatch, code):
    out = tmp_path / "out"
    fail_writes(monkeypatch, code, out)
    line = one_error_line(
        capsys, main(["run", str(tiny(tmp_path)), "--out", str(out), "--quiet", "--strategies", "source_only"])
    )
    assert line == (
        f"output folder {out}: no space left on the device ({os.strerror(code)}); free some space there, "
        "then run the same command again to resume (finished cells are kept)"
    )
    assert not list(out.glob("cells/*/record.json"))


def test_a_report_on_a_full_disk_is_one_line_naming_the_report_folder(capsys, tmp_path, monkeypatch):
    run = reported_run(tmp_path)
    fail_writes(monkeypatch, errno.ENOSPC, run)
    line = one_error_line(capsys, main(["report", str(run), "--formats", "csv"]))
    assert line == (
        f"report folder {run}: no space left on the device (No space left on device); free some space there, "
        "then run the same command again"
    )


def test_a_full_disk_anywhere_else_is_one_line(capsys, monkeypatch, tmp_path):
    import tlbench.cli

    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", "/cache/tlbench/x.npz")

    monkeypatch.setattr(tlbench.cli, "_dispatch", full)
    line = one_error_line(capsys, main(["report", str(tmp_path)]))
    assert line == (
        "writing /cache/tlbench/x.npz: no space left on the device (No space left on device); free some space "
        "there, then run the same command again"
    )
    monkeypatch.setattr(tlbench.cli, "_dispatch", lambda args: (_ for _ in ()).throw(OSError(errno.EIO, "EIO")))
    with pytest.raises(OSError):  # not the user's to fix: a bug report wants the traceback
        main(["report", str(tmp_path)])


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_curves_png_that_cannot_be_written_is_one_line(capsys, tmp_path, monkeypatch, code):
    run, png = reported_run(tmp_path), tmp_path / "curves.png"
    fail_writes(monkeypatch, code, png.parent)
    line = one_error_line(capsys, main(["curves", str(run), "--png", str(png)]))
    if code == errno.ENOSPC:
        assert line == (
            f"--png {png}: no space left on the device (No space left on device); free some space there, "
            "then run the same command again"
        )
    else:
        assert (
            line
            == f"--png {png}: cannot be written (Read-only file system); give --png a file in a folder you can write"
        )
    assert not png.exists() and not list(tmp_path.glob(".curves.png.*"))


def test_curves_png_into_a_folder_nobody_may_write_is_one_line(capsys, tmp_path):
    run = reported_run(tmp_path)
    line = one_error_line(capsys, main(["curves", str(run), "--png", "/sys/tlbench-test.png"]))  # refused even to root
    assert line.startswith("--png /sys/tlbench-test.png: cannot be written (")


# -- Ray's own notices -------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed")
def test_a_local_ray_instance_prints_nothing_of_its_own(capfd, monkeypatch):
    """Ray announces "Token authentication is enabled for this Ray cluster" when it starts a local
    instance with the mode unset; tlbench's stderr carries tlbench's lines only."""
    from tlbench_builtins.launchers.ray import start_local_ray

    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)  # set, Ray says nothing (a user's choice)
    ray = start_local_ray(num_cpus=1)
    try:
        assert ray.is_initialized()
    finally:
        ray.shutdown()
        os.environ.pop("RAY_AUTH_MODE", None)  # Ray sets it for the process it started in
    captured = capfd.readouterr()
    assert "Token authentication" not in captured.err + captured.out, captured


# -- names and messages from plugins: one line each, nothing for the terminal to obey ---------------------
def test_plugin_names_and_messages_cannot_break_lines_or_drive_the_terminal(capsys):
    import types

    import tlbench
    from tlbench.plugins.registry import Registry, set_registry

    clash = type("Clash", (tlbench.Strategy,), {"name": "dann"})

    def register_clash(register):
        register(clash)

    def register_broken(register):
        raise RuntimeError("boom\n\x1b[2Jsecond line")

    set_registry(
        Registry(
            plugins={
                "\x1b[31mred\nplugin": types.SimpleNamespace(register_strategies=tlbench.hookimpl(register_clash)),
                "p" * 10_000: types.SimpleNamespace(register_strategies=tlbench.hookimpl(register_broken)),
            }
        )
    )
    try:
        for argv, expected in ((["list", "strategies"], 0), (["plugins"], 1)):
            assert main(argv) == expected
            captured = capsys.readouterr()
            assert "\x1b" not in captured.out + captured.err
            assert all(line.startswith("tlbench: warning: ") for line in captured.err.splitlines()), captured.err
            assert max(map(len, (captured.out + captured.err).splitlines())) < 400
            assert "\\x1b[31mred\\nplugin" in captured.out + captured.err
    finally:
        set_registry(None)


def test_a_run_stopped_by_a_full_disk_leaves_no_cell_marked_running(capsys, tmp_path, monkeypatch):
    """A cell whose record cannot be written (the disk filled while it trained) is not a death: its
    running mark goes, so the next run trains it again instead of counting a kill toward "out of memory"."""
    from tlbench.errors import UserError
    from tlbench.spec.store import ResultsDir

    def full(self, record):
        raise UserError(f"output folder {self.root}: no space left on the device")

    monkeypatch.setattr(ResultsDir, "write_record", full)
    out = tmp_path / "out"
    line = one_error_line(
        capsys, main(["run", str(tiny(tmp_path)), "--out", str(out), "--quiet", "--strategies", "source_only"])
    )
    assert "no space left on the device" in line
    assert list(out.glob("cells/*")), "the cell's folder (and its running mark) were made"
    assert not list(out.glob("cells/*/running.json"))
