"""Scale-out launchers: multigpu (CPU workers here), ray (a local two-CPU instance) and slurm
(submitit's local executor) give the same cells and, with the same seeds on CPU, the same
accuracies as ``local``; teachers finish before their kd students; a worker killed mid-cell is
retried and then recorded as failed; Ctrl-C stops the workers.

Workers are killed by ``tests/kill_plugin.py``, loaded in every worker through ``$TLBENCH_PLUGINS``:
each token file in ``$TLBENCH_TEST_KILL_DIR`` makes exactly one starting cell SIGKILL its worker.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import multiprocessing
import os
import re
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import TINY_SUITE  # tests/ is on sys.path (pytest rootdir conftest)

from tlbench.cli import main
from tlbench.plugins.registry import Registry, get_registry

TESTS_DIR = Path(__file__).resolve().parent
# Three cells in two waves: dann (also the kd teacher), then source_only and kd.
SUITE = TINY_SUITE.replace("strategies: [source_only, dann]", "strategies: [source_only, dann, kd]")
HAS_RAY = importlib.util.find_spec("ray") is not None
HAS_SUBMITIT = importlib.util.find_spec("submitit") is not None


def write_suite(folder: Path, launcher: dict | None = None) -> Path:
    path = folder / "suite.yaml"
    path.write_text(SUITE + (f"launcher: {json.dumps(launcher)}\n" if launcher else ""))
    return path


def run(folder: Path, launcher: dict | None = None, *args: str) -> tuple[int, pd.DataFrame]:
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / "out"
    code = main(["run", str(write_suite(folder, launcher)), "--out", str(out), "--quiet", *args])
    return code, pd.read_csv(out / "results.csv").set_index("cell_id")


def assert_same_results(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert sorted(got.index) == sorted(expected.index)
    assert (got["status"] == "ok").all(), got[["strategy", "status", "error"]]
    for cid in expected.index:
        assert got.loc[cid, "target_acc"] == expected.loc[cid, "target_acc"], cid
        assert got.loc[cid, "source_acc"] == expected.loc[cid, "source_acc"], cid


def assert_teacher_first(out: Path) -> None:
    """The kd cell trained with its teacher's weights: it is ok, and its teacher's record came first."""
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    order = [r["strategy"] for r in records]
    kd = records[order.index("kd")]
    assert kd["status"] == "ok", kd["error"]
    assert order.index("dann") < order.index("kd")
    assert records[order.index("dann")]["started_at"] <= kd["started_at"]


@pytest.fixture(scope="module")
def kill_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("kill-tokens")


@pytest.fixture(scope="module")
def worker_env(kill_dir):
    """What every worker inherits: the kill plugin, and one thread each on this small machine."""
    get_registry()  # the driver's registry is built first: the driver itself never loads the kill plugin
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(TESTS_DIR), os.environ.get("PYTHONPATH")])))
        mp.setenv("TLBENCH_PLUGINS", "kill_plugin")
        mp.setenv("TLBENCH_TEST_KILL_DIR", str(kill_dir))
        mp.setenv("OMP_NUM_THREADS", "1")
        yield


@pytest.fixture
def arm(kill_dir):
    """arm(n): the next n cells to start kill their workers; asserts afterwards that all n did."""

    def _arm(n: int) -> None:
        for i in range(n):
            (kill_dir / f"token{i}").touch()

    yield _arm
    assert list(kill_dir.iterdir()) == [], "a kill token was not taken: no worker was killed"


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> pd.DataFrame:
    """The reference: the same suite with the in-process ``local`` launcher (one thread, like the
    workers: on a busy two-core machine more threads only wait for each other)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code, df = run(tmp_path_factory.mktemp("local"))
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    return df


# -- multigpu ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_multigpu_two_cpu_workers_match_local_and_survive_a_killed_worker(baseline, worker_env, arm, tmp_path):
    arm(1)  # the first cell (the teacher) is killed once and retried in a fresh worker
    code, df = run(tmp_path, {"name": "multigpu", "options": {"workers": 2, "retries": 1}})
    assert code == 0
    assert_same_results(df, baseline)
    assert_teacher_first(tmp_path / "out")


@pytest.mark.slow
def test_multigpu_records_a_cell_whose_worker_keeps_dying(worker_env, arm, tmp_path):
    arm(2)
    code, df = run(
        tmp_path, {"name": "multigpu", "options": {"workers": 1, "retries": 1}}, "--strategies", "source_only"
    )
    assert code == 1
    (error,) = df["error"]
    assert error == "worker died (exit code -9) twice"


def test_multigpu_without_gpu_needs_workers(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: multigpu runs one worker per GPU without the workers option")
    code = main(["run", str(write_suite(tmp_path)), "--out", str(tmp_path / "o"), "--quiet", "--launcher", "multigpu"])
    assert code == 2


def _one_task(tmp_path: Path):
    """A real task of the suite's first cell, as the runner would hand it to a launcher."""
    from tlbench.data.cache import default_cache_dir
    from tlbench.spec.cell import CellTask
    from tlbench.spec.loading import load_suite
    from tlbench.spec.plan import plan

    cells = plan(load_suite(write_suite(tmp_path), strategies=["source_only"]), get_registry()).cells
    return CellTask(
        cell=cells[0],
        out_dir=str(tmp_path / "out"),
        data_root=None,
        cache_dir=str(default_cache_dir()),
        show_progress=False,
    )


def interrupt_on_start(task) -> None:
    raise KeyboardInterrupt


@pytest.mark.slow
def test_multigpu_ctrl_c_stops_its_workers(worker_env, tmp_path):
    from tlbench.training.engine import run_cell
    from tlbench_builtins.launchers.multigpu import MultiGpuLauncher

    records = []
    launcher = MultiGpuLauncher(workers=1)
    with pytest.raises(KeyboardInterrupt):
        launcher.launch([_one_task(tmp_path)], run_cell, records.append, on_start=interrupt_on_start)
    assert records == []
    assert multiprocessing.active_children() == []
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("record.json"))


# -- ray --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_ray(worker_env):
    if not HAS_RAY:
        pytest.skip("ray is not installed (pip install 'tlbench[ray]')")
    from tlbench_builtins.launchers.ray import start_local_ray

    ray = start_local_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_local_ray_listens_on_loopback_only(local_ray):
    assert local_ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")
    assert {n["NodeManagerAddress"] for n in local_ray.nodes()} == {"127.0.0.1"}


@pytest.mark.slow
def test_ray_matches_local_and_retries_a_killed_worker(baseline, local_ray, arm, tmp_path):
    arm(1)
    code, df = run(tmp_path, {"name": "ray", "options": {"max_retries": 1}})
    assert code == 0
    assert_same_results(df, baseline)
    assert_teacher_first(tmp_path / "out")


def test_ray_records_a_cell_whose_worker_died_without_retries(local_ray, arm, tmp_path):
    arm(1)
    code, df = run(tmp_path, {"name": "ray", "options": {"max_retries": 0}}, "--strategies", "source_only")
    assert code == 1
    (error,) = df["error"]
    assert error.startswith("worker died (WorkerCrashedError) once")


def test_ray_ctrl_c_cancels_its_tasks(local_ray, tmp_path):
    from tlbench.training.engine import run_cell
    from tlbench_builtins.launchers.ray import RayLauncher

    records = []
    with pytest.raises(KeyboardInterrupt):
        RayLauncher().launch([_one_task(tmp_path)], run_cell, records.append, on_start=interrupt_on_start)
    assert records == []
    assert local_ray.is_initialized()  # the caller's instance is the caller's to end


# -- slurm (submitit's local executor) --------------------------------------------------------------


@pytest.fixture
def submitit_installed():
    if not HAS_SUBMITIT:
        pytest.skip("submitit is not installed (pip install 'tlbench[slurm]')")


@pytest.mark.slow
def test_slurm_local_matches_local_and_retries_a_killed_job(baseline, submitit_installed, worker_env, arm, tmp_path):
    arm(1)
    code, df = run(tmp_path, {"name": "slurm", "options": {"cluster": "local", "retries": 1, "cpus_per_task": 1}})
    assert code == 0
    assert_same_results(df, baseline)
    assert_teacher_first(tmp_path / "out")
    assert any((tmp_path / "out" / "slurm").rglob("*_log.err"))  # logs live inside the output directory


@pytest.mark.slow
def test_slurm_records_a_job_that_died_without_retries(submitit_installed, worker_env, arm, tmp_path):
    arm(1)
    code, df = run(
        tmp_path, {"name": "slurm", "options": {"cluster": "local", "retries": 0}}, "--strategies", "source_only"
    )
    assert code == 1
    (error,) = df["error"]
    assert error.startswith("worker died (job ") and " once: " in error and "_log.err" in error


# -- the core: launcher options, extra plugin modules ------------------------------------------------


def test_unknown_launcher_option_is_a_user_error(tmp_path, capsys):
    code = main(
        [
            "run",
            str(write_suite(tmp_path)),
            "--out",
            str(tmp_path / "o"),
            "--launcher",
            "local",
            "--ray-address",
            "auto",
        ]
    )
    assert code == 2
    assert "launcher 'local': unknown option(s) address" in capsys.readouterr().err


def test_plugins_named_in_the_environment_are_loaded_and_reported(monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS_DIR))
    monkeypatch.setenv("TLBENCH_PLUGINS", "kill_plugin, no_such_module_xyz")
    reg = Registry()
    assert reg.plugins["kill_plugin"].errors == []
    assert reg.pm.get_plugin("kill_plugin") is not None
    assert (
        reg.plugins["no_such_module_xyz"]
        .errors[0]
        .startswith("failed to import no_such_module_xyz (named in $TLBENCH_PLUGINS): ModuleNotFoundError")
    )


@pytest.mark.parametrize(
    "module, launcher, hint",
    [
        ("ray", "tlbench_builtins.launchers.ray:RayLauncher", "pip install 'tlbench[ray]'"),
        ("submitit", "tlbench_builtins.launchers.slurm:SlurmLauncher", "pip install 'tlbench[slurm]'"),
    ],
)
def test_optional_engine_missing_is_a_clear_user_error(monkeypatch, tmp_path, module, launcher, hint):
    from tlbench.errors import UserError

    monkeypatch.setitem(sys.modules, module, None)  # as if it were not installed
    module_name, cls_name = launcher.split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    with pytest.raises(UserError, match=f"needs .*: {re.escape(hint)}$"):
        cls().launch([_one_task(tmp_path)], lambda task: None, lambda record: None)


def test_runner_passes_on_start_only_to_launchers_that_take_it():
    from tlbench import Launcher
    from tlbench.matrix.runner import _accepts_on_start

    class Old(Launcher):
        name = "old"

        def launch(self, tasks, execute, on_record): ...

    class New(Launcher):
        name = "new"

        def launch(self, tasks, execute, on_record, on_start=None): ...

    assert not _accepts_on_start(Old())
    assert _accepts_on_start(New())
