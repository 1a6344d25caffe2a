"""The CPU runtime settings (issue 17): which environment the ``tlbench`` command starts again with,
what it leaves alone, the one switch that turns it off, and what a record says its process ran with."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tlbench import runtime
from tlbench.errors import UserError

from conftest import ROOT, TINY_SUITE  # tests/ is on sys.path (pytest rootdir conftest)

LINUX = sys.platform.startswith("linux")
pytestmark = pytest.mark.skipif(not LINUX, reason="the allocator and OpenMP settings are applied on Linux only")


def test_glibc_tunables_stop_fresh_mmaps_and_trimming():
    env = runtime.settings({"TLBENCH_CPU_RUNTIME": "glibc"})
    assert env["OMP_WAIT_POLICY"] == "PASSIVE"
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
    assert runtime.settings({}) == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert "apt install libjemalloc2" in runtime.missing_allocator_hint({})
    assert runtime.missing_allocator_hint({"TLBENCH_CPU_RUNTIME": "off"}) is None
    assert runtime.missing_allocator_hint({"LD_PRELOAD": "/opt/libjemalloc.so"}) is None
    monkeypatch.setattr(runtime, "find_library", lambda name: "/lib/libtcmalloc_minimal.so.4")
    assert runtime.settings({})["LD_PRELOAD"] == "/lib/libtcmalloc_minimal.so.4"
    assert runtime.missing_allocator_hint({}) is None


def test_the_users_allocator_and_wait_policy_are_never_overridden():
    env = runtime.settings({"LD_PRELOAD": "/opt/my/libtcmalloc.so", "OMP_WAIT_POLICY": "ACTIVE"})
    assert env == {}
    env = runtime.settings({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
    assert env == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert "OMP_WAIT_POLICY" not in runtime.settings({"GOMP_SPINCOUNT": "300000"})


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
    env = {k: v for k, v in os.environ.items() if k not in
           ("LD_PRELOAD", "GLIBC_TUNABLES", "MALLOC_CONF", "OMP_WAIT_POLICY", runtime.SWITCH, runtime.APPLIED)}
    env.update(env_changes)
    out = tmp_path / "out"
    subprocess.run([sys.executable, "-m", "tlbench", "run", str(suite), "--out", str(out), "--quiet"],
                   env=env, check=True, cwd=ROOT, capture_output=True)
    (record,) = [json.loads(p.read_text()) for p in out.glob("cells/*/record.json")]
    return record["extra"]["cpu_runtime"]


def test_the_command_starts_again_with_the_settings_and_its_record_says_so(tmp_path):
    described = _run_command(tmp_path, TLBENCH_CPU_RUNTIME="glibc")
    assert described["allocator"] == "glibc"
    assert "glibc.malloc.mmap_max=0" in described["allocator_settings"]
    assert described["omp_wait_policy"] == "PASSIVE"


@pytest.mark.skipif(runtime.find_library("jemalloc") is None, reason="jemalloc is not installed here "
                    "(apt install libjemalloc2)")
def test_jemalloc_is_loaded_into_the_process_when_installed(tmp_path):
    assert _run_command(tmp_path)["allocator"] == "jemalloc"  # read from /proc/self/maps, not from intent


def test_the_switch_turns_everything_off(tmp_path):
    described = _run_command(tmp_path, TLBENCH_CPU_RUNTIME="off")
    assert described == {"allocator": "glibc", "allocator_settings": "defaults", "omp_wait_policy": "default"}
