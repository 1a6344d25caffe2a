"""Broken third-party plugins through the command line: ``tlbench plugins`` names them, ``tlbench run``
still works with a warning, ``--strict-plugins`` makes them fatal (exit 2, one line)."""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import TINY_SUITE  # tests/ is on sys.path (pytest rootdir conftest)

from tlbench.cli import main
from tlbench.plugins.registry import PLUGINS_ENV_VAR, set_registry

MISSING = "no_such_tlbench_plugin_xyz"


@pytest.fixture
def broken_plugins(monkeypatch):
    """One plugin that cannot be imported, one that registers a built-in's name (clashing_plugin.py)."""
    monkeypatch.setenv(PLUGINS_ENV_VAR, f"{MISSING}, clashing_plugin")
    set_registry(None)  # the next get_registry() loads the environment's plugins
    yield
    set_registry(None)


def test_plugins_lists_failures_next_to_working_plugins(broken_plugins, capsys):
    code = main(["plugins"])
    out = capsys.readouterr().out.splitlines()
    assert code == 1  # some plugin failed
    rows = {line.split()[0]: line for line in out if line and not line.startswith(" ")}
    assert "ok" in rows["strategies.source_only"].split() and "strategy: source_only" in rows["strategies.source_only"]
    assert "ok" in rows["strategies.dann"].split()
    assert "FAILED" in rows[MISSING].split()
    assert "ok" in rows["clashing_plugin"].split()  # a clash is no failure: both registrations are kept
    assert "strategy: source_only, clashing_plugin_own" in rows["clashing_plugin"]
    errors = [line.strip() for line in out if line.startswith(" ") and "error:" in line]
    assert len(errors) == 1 and errors[0].startswith(f"error: failed to import {MISSING}")
    assert "ModuleNotFoundError" in errors[0]
    clashes = out[out.index("names several plugins register (write qualifier:name for another one):") + 1 :]
    assert clashes == [
        "  strategy 'source_only': bare name resolves to clashing_plugin:source_only (a third-party plugin takes "
        "precedence over the built-in; the built-in is tlbench:source_only)"
    ]


def test_run_works_with_a_warning_when_an_unrelated_plugin_is_broken(broken_plugins, tmp_path, capsys):
    suite = tmp_path / "tiny.yaml"
    suite.write_text(TINY_SUITE)
    out = tmp_path / "out"
    code = main(
        [
            "run",
            str(suite),
            "--out",
            str(out),
            "--quiet",
            "--strategies",
            "dann",
            "--set",
            "recipe.steps=2",
            "--set",
            "reports=[csv]",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured
    warnings_ = captured.err.strip().splitlines()
    assert len(warnings_) == 2 and all(w.startswith("tlbench: warning: ") for w in warnings_)
    assert warnings_[0].startswith(f"tlbench: warning: plugin '{MISSING}' skipped: failed to import")
    assert warnings_[1] == (
        "tlbench: warning: strategy 'source_only': bare name resolves to clashing_plugin:source_only (a "
        "third-party plugin takes precedence over the built-in; the built-in is tlbench:source_only)"
    )
    df = pd.read_csv(out / "results.csv")
    assert df["status"].tolist() == ["ok"] and df["strategy"].tolist() == ["dann"]


def test_a_builtin_a_plugin_shadows_runs_by_its_qualified_name(broken_plugins, tmp_path, capsys):
    suite = tmp_path / "tiny.yaml"
    suite.write_text(TINY_SUITE)
    out = tmp_path / "out"
    args = ["run", str(suite), "--out", str(out), "--quiet", "--set", "recipe.steps=2", "--set", "reports=[csv]"]
    code = main([*args, "--strategies", "tlbench:source_only"])
    assert code == 0, capsys.readouterr()
    df = pd.read_csv(out / "results.csv")
    assert df["status"].tolist() == ["ok"] and df["strategy"].tolist() == ["tlbench:source_only"]


def test_strict_plugins_makes_a_broken_plugin_fatal(broken_plugins, tmp_path, capsys):
    suite = tmp_path / "tiny.yaml"
    suite.write_text(TINY_SUITE)
    code = main(["--strict-plugins", "run", str(suite), "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith(f"tlbench: error: plugin '{MISSING}': failed to import")
    assert "Traceback" not in captured.err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "source",
    [
        "raise SystemExit(0)\n",  # at import
        "import sys\nimport tlbench\n\n\n@tlbench.hookimpl\ndef register_strategies(register):\n    sys.exit(0)\n",
    ],
    ids=["import", "hook"],
)
def test_a_plugin_that_exits_zero_is_skipped_not_the_commands_exit(source, monkeypatch, tmp_path, capsys):
    (tmp_path / "tlbench_test_exiting_plugin.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(PLUGINS_ENV_VAR, "tlbench_test_exiting_plugin")
    monkeypatch.delitem(__import__("sys").modules, "tlbench_test_exiting_plugin", raising=False)
    set_registry(None)
    try:
        bad = tmp_path / "bad.yaml"
        bad.write_text("name: bad\nno_such_key: 1\n")
        code = main(["run", str(bad), "--out", str(tmp_path / "out"), "--quiet"])
        lines = capsys.readouterr().err.strip().splitlines()
        assert code == 2  # the bad suite is still bad input, not a silent success
        assert lines[0].startswith("tlbench: warning: plugin 'tlbench_test_exiting_plugin' skipped: ")
        assert "SystemExit: 0" in lines[0]
        assert len(lines) == 2 and lines[1].startswith("tlbench: error: ")

        set_registry(None)
        code = main(["--strict-plugins", "list", "strategies"])
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert code == 2
        assert len(lines) == 1 and lines[0].startswith("tlbench: error: plugin 'tlbench_test_exiting_plugin': ")
        assert "Traceback" not in captured.err
    finally:
        set_registry(None)


def test_a_name_that_is_not_one_plain_word_is_skipped_and_list_still_works(monkeypatch, tmp_path, capsys):
    (tmp_path / "tlbench_test_odd_names.py").write_text(
        "import tlbench\n\n\n"
        "class Odd(tlbench.Strategy):\n    name = 'a->b c'\n\n\n"
        "class Fine(tlbench.Strategy):\n    name = 'odd_fine'\n\n\n"
        "@tlbench.hookimpl\ndef register_strategies(register):\n    register(Odd)\n    register(Fine)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(PLUGINS_ENV_VAR, "tlbench_test_odd_names")
    monkeypatch.delitem(__import__("sys").modules, "tlbench_test_odd_names", raising=False)
    set_registry(None)
    try:
        code = main(["list", "strategies"])
        captured = capsys.readouterr()
        assert code == 0
        (warning,) = captured.err.strip().splitlines()
        assert warning.startswith("tlbench: warning: plugin 'tlbench_test_odd_names' skipped: ")
        assert "strategy name 'a->b c' is not allowed" in warning
        names = [line.split()[0] for line in captured.out.splitlines() if line.strip()]
        assert "odd_fine" in names and "source_only" in names and "a->b" not in names
    finally:
        set_registry(None)
