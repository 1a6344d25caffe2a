"""The CPU runtime settings (issue 17): which environment the ``tlbench`` command starts again with,
what it leaves alone, the one switch that turns it off, and what a record says its process ran with."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT, TINY_SUITE  # tests/ is on sys.path (pytest rootdir conftest)

from tlbench import runtime
from tlbench.errors import UserError

LINUX = sys.platform.startswith("linux")
pytestmark = pytest.mark.skipif(not LINUX, reason="the allocator and OpenMP settings are applied on Linux only")


def test_glibc_tunables_stop_fresh_mmaps_and_trimming():
    env = runtime.settings({"TLBENCH_CPU_RUNTIME": "glibc"})
    tunables = dict(t.split("=") for t in env["GLIBC_TUNABLES"].split(":"))
    assert tunables["glibc.malloc.mmap_max"] == "0"
    assert int(tunables["glibc.malloc.trim_threshold"]) >= 2**40
    assert "LD_PRELOAD" not in env


def test_tunables_the_user_set_for_other_things_are_kept():
    env = runtime.settings({"TLBENCH_CPU_RUNTIME": "glibc", "GLIBC_TUNABLES": "glibc.rtld.optional_static_tls=2048"})
    assert env["GLIBC_TUNABLES"].startswith("glibc.rtld.optional_static_tls=2048:glibc.malloc.")


def test_off_sets_nothing():
    assert runtime.settings({"TLBENCH_CPU_RUNTIME": "off"}) == {}


def test_auto_without_a_caching_allocator_keeps_glibcs_defaults_and_says_what_to_install(monkeypatch):
    monkeypatch.setattr(runtime, "find_library", lambda name: None)
    assert runtime.settings({}) == {}
    assert "apt install libjemalloc2" in runtime.missing_allocator_hint({})
    assert runtime.missing_allocator_hint({"TLBENCH_CPU_RUNTIME": "off"}) is None
    assert runtime.missing_allocator_hint({"LD_PRELOAD": "/opt/libjemalloc.so"}) is None
    monkeypatch.setattr(runtime, "find_library", lambda name: "/lib/libtcmalloc_minimal.so.4")
    assert runtime.settings({})["LD_PRELOAD"] == "/lib/libtcmalloc_minimal.so.4"
    assert runtime.missing_allocator_hint({}) is None


def test_the_users_allocator_and_wait_policy_are_never_overridden():
    env = runtime.settings({"LD_PRELOAD": "/opt/my/libtcmalloc.so", "OMP_WAIT_POLICY": "ACTIVE"}, machine_busy=True)
    assert env == {}
    env = runtime.settings({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, machine_busy=True)
    assert env == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert "OMP_WAIT_POLICY" not in runtime.settings({"GOMP_SPINCOUNT": "300000"}, machine_busy=True)


def test_threads_wait_passively_only_on_a_busy_machine():
    assert "OMP_WAIT_POLICY" not in runtime.settings({})  # idle: libgomp's spin-then-sleep
    assert runtime.settings({}, machine_busy=True)["OMP_WAIT_POLICY"] == "PASSIVE"
    assert runtime.settings({"TLBENCH_CPU_RUNTIME": "off"}, machine_busy=True) == {}


def test_only_the_command_that_trains_samples_the_load():
    from tlbench.cli import subcommand

    assert subcommand(["--debug", "run", "suites/quickstart.yaml", "--seeds", "0"]) == "run"
    assert subcommand(["list", "strategies"]) == "list"
    assert subcommand(["--strict-plugins"]) is None


def test_busy_cores_counts_steal_as_busy_and_iowait_as_idle(monkeypatch):
    monkeypatch.setattr(runtime.os, "cpu_count", lambda: 2)
    # cpu  user nice system idle iowait irq softirq steal
    stats = iter(["cpu  100 0 50 800 40 0 0 10 0 0\ncpu0 ...", "cpu  160 0 60 860 80 0 0 40 0 0\ncpu0 ..."])
    busy = runtime.busy_cores(0.0, read_stat=lambda: next(stats))
    assert busy == pytest.approx((60 + 10 + 30) / (60 + 10 + 60 + 40 + 30) * 2)
    assert runtime.busy_cores(0.0, read_stat=lambda: "garbage") is None


def test_busy_cores_sees_a_competing_process():
    rival = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        busy = runtime.busy_cores(0.5)
    finally:
        rival.kill()
        rival.wait()
    assert busy is not None and busy >= runtime.BUSY_CORES


def test_auto_prefers_an_installed_jemalloc(monkeypatch):
    monkeypatch.setattr(runtime, "find_library", lambda name: "/lib/libjemalloc.so.2" if name == "jemalloc" else None)
    env = runtime.settings({})
    assert env["LD_PRELOAD"] == "/lib/libjemalloc.so.2" and env["MALLOC_CONF"] == "dirty_decay_ms:-1,muzzy_decay_ms:-1"


def test_a_missing_allocator_asked_for_by_name_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(runtime, "find_library", lambda name: None)
    with pytest.raises(UserError, match="apt install libjemalloc2"):
        runtime.settings({"TLBENCH_CPU_RUNTIME": "jemalloc"})
    with pytest.raises(UserError, match="use one of auto, jemalloc, tcmalloc, glibc, off"):
        runtime.settings({"TLBENCH_CPU_RUNTIME": "fast"})


def _run_command(tmp_path, **env_changes) -> dict:
    """``python -m tlbench run`` on the tiny suite in a fresh process; the record's cpu_runtime."""
    suite = tmp_path / "suite.yaml"
    suite.write_text(TINY_SUITE.replace("strategies: [source_only, dann]", "strategies: [source_only]"))
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in (
            "LD_PRELOAD",
            "GLIBC_TUNABLES",
            "MALLOC_CONF",
            "OMP_WAIT_POLICY",
            "GOMP_SPINCOUNT",
            runtime.SWITCH,
            runtime.APPLIED,
            runtime.BUSY_AT_START,
        )
    }
    env.update(env_changes)
    out = tmp_path / "out"
    subprocess.run(
        [sys.executable, "-m", "tlbench", "run", str(suite), "--out", str(out), "--quiet"],
        env=env,
        check=True,
        cwd=ROOT,
        capture_output=True,
    )
    (record,) = [json.loads(p.read_text()) for p in out.glob("cells/*/record.json")]
    return record["extra"]["cpu_runtime"]


@pytest.mark.slow
def test_the_command_starts_again_with_the_settings_and_its_record_says_so(tmp_path):
    described = _run_command(tmp_path, TLBENCH_CPU_RUNTIME="glibc")
    assert described["allocator"] == "glibc"
    assert "glibc.malloc.mmap_max=0" in described["allocator_settings"]
    busy = float(described["busy_cores_at_start"])
    assert described["omp_wait_policy"] == ("PASSIVE" if busy >= runtime.BUSY_CORES else "default")


@pytest.mark.slow
def test_the_command_started_on_a_busy_machine_waits_passively(tmp_path):
    rival = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        described = _run_command(tmp_path)
    finally:
        rival.kill()
        rival.wait()
    assert described["omp_wait_policy"] == "PASSIVE" and float(described["busy_cores_at_start"]) >= runtime.BUSY_CORES


@pytest.mark.skipif(
    runtime.find_library("jemalloc") is None, reason="jemalloc is not installed here (apt install libjemalloc2)"
)
@pytest.mark.slow
def test_jemalloc_is_loaded_into_the_process_when_installed(tmp_path):
    assert _run_command(tmp_path)["allocator"] == "jemalloc"  # read from /proc/self/maps, not from intent


@pytest.mark.slow
def test_the_switch_turns_everything_off(tmp_path):
    described = _run_command(tmp_path, TLBENCH_CPU_RUNTIME="off")
    assert described == {"allocator": "glibc", "allocator_settings": "defaults", "omp_wait_policy": "default"}


def _hint_on(monkeypatch):
    """As on a machine without jemalloc or tcmalloc, under the ``tlbench`` command (settings applied)."""
    monkeypatch.setenv(runtime.APPLIED, "1")
    monkeypatch.setattr(runtime, "missing_allocator_hint", lambda environ=None: "no caching allocator found")


def test_the_allocator_hint_is_never_printed_on_bad_input(capsys, tmp_path, monkeypatch):
    from tlbench.cli import main

    _hint_on(monkeypatch)
    suite = tmp_path / "bad.yaml"
    suite.write_text(TINY_SUITE.replace("strategies: [source_only, dann]", "strategies: [no_such_strategy]"))
    assert main(["run", str(suite), "--out", str(tmp_path / "o"), "--device", "cpu", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tlbench: error: unknown strategy 'no_such_strategy'")


def test_the_allocator_hint_comes_once_for_a_run_that_trains_and_not_for_one_that_has_nothing_to_do(
    capsys, tmp_path, monkeypatch
):
    from tlbench.cli import main

    _hint_on(monkeypatch)
    suite = tmp_path / "tiny.yaml"
    suite.write_text(TINY_SUITE.replace("strategies: [source_only, dann]", "strategies: [source_only]"))
    run = ["run", str(suite), "--out", str(tmp_path / "o"), "--device", "cpu", "--quiet"]
    assert main(run) == 0
    assert capsys.readouterr().err.count("tlbench: warning: no caching allocator found") == 1
    assert main(run) == 0  # every cell done: nothing trains
    assert "no caching allocator" not in capsys.readouterr().err
