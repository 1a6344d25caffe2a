"""The ``slurm`` launcher: each wave of cells one Slurm job array, through submitit.

``pip install 'tlbench[slurm]'``. Every cell is one array task asking for ``gpus_per_node`` GPUs,
``cpus_per_task`` CPUs, ``mem_gb`` and ``time`` minutes on ``partition``; submitit pickles the
cell, runs it on a node and pickles its record back into ``folder`` (logs included, inside the
output directory by default), where the driver reads it and alone writes the results. A job that
ends without a record (killed, out of time, node failure) is resubmitted up to ``retries`` times
and then recorded as failed with the path of its log. ``cluster: local`` (or ``debug``, in this
process) runs the same code on this machine through submitit's local executor, without Slurm.
Nodes need tlbench and the plugins installed and the output directory on a shared filesystem.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import time
from pathlib import Path

from tlbench import Launcher, UserError, hookimpl

_POLL_S = {"slurm": 10.0, "local": 0.5, "debug": 0.0}
_STARTED_STATES = {
    "RUNNING",
    "COMPLETING",
    "COMPLETED",
    "DONE",
    "FINISHED",
    "FAILED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "INTERRUPTED",
}


def import_submitit():
    """submitit, or a clear error saying how to install it."""
    try:
        import submitit
    except ImportError:
        raise UserError("launcher slurm needs submitit: pip install 'tlbench[slurm]'") from None
    return submitit


def _times(n: int) -> str:
    return {1: "once", 2: "twice"}.get(n, f"{n} times")


class SlurmLauncher(Launcher):
    """Cells as Slurm array jobs via submitit (or submitit's local executor for testing)."""

    name = "slurm"
    option_help = {
        "partition": "Slurm partition (default: the cluster's default)",
        "time": "time limit of each cell's job, in minutes (default 60)",
        "gpus_per_node": "GPUs per cell (default 1 on slurm, 0 with cluster local/debug)",
        "cpus_per_task": "CPUs per cell (default 4)",
        "mem_gb": "memory per cell in GB (default: the partition's default)",
        "array_parallelism": "at most this many cells of an array run at once (default: no limit)",
        "folder": "where submitit keeps job files and logs; relative paths are inside the output "
        "directory (default slurm)",
        "cluster": "slurm (default), or local / debug to run on this machine without Slurm",
        "retries": "how often a job that ended without a record is resubmitted (default 1)",
    }

    def __init__(self, **options):
        super().__init__(**options)
        self.cluster = options.get("cluster", "slurm")
        if self.cluster not in _POLL_S:
            raise UserError(f"launcher slurm: option cluster must be slurm, local or debug, got {self.cluster!r}")
        self.retries = options.get("retries", 1)
        if not isinstance(self.retries, int) or self.retries < 0:
            raise UserError(f"launcher slurm: option retries must be an integer >= 0, got {self.retries!r}")
        for key in ("time", "gpus_per_node", "cpus_per_task", "array_parallelism"):
            value = options.get(key)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise UserError(f"launcher slurm: option {key} must be a non-negative integer, got {value!r}")
        self._jobs: dict = {}  # job -> task index, while a wave runs (cancelled on Ctrl-C)

    def executor(self, out_dir: Path):
        submitit = import_submitit()
        folder = Path(self.options.get("folder", "slurm"))
        folder = folder if folder.is_absolute() else Path(out_dir) / folder
        executor = submitit.AutoExecutor(folder=folder / "%j", cluster=self.cluster)
        gpus = self.options.get("gpus_per_node", 1 if self.cluster == "slurm" else 0)
        params = {
            "name": "tlbench",
            "timeout_min": self.options.get("time", 60),
            "nodes": 1,
            "tasks_per_node": 1,
            "cpus_per_task": self.options.get("cpus_per_task", 4),
            "gpus_per_node": gpus,
        }
        if self.options.get("mem_gb") is not None:
            params["mem_gb"] = self.options["mem_gb"]
        if self.options.get("partition"):
            params["slurm_partition"] = self.options["partition"]
        if self.options.get("array_parallelism"):
            params["slurm_array_parallelism"] = self.options["array_parallelism"]
        executor.update_parameters(**params)
        return executor

    def launch(self, tasks, execute, on_record, on_start=None) -> None:
        # Per-step bars would fill the job logs; the driver's matrix bar shows progress.
        tasks = [dataclasses.replace(t, show_progress=False) for t in tasks]
        executor = self.executor(Path(tasks[0].out_dir))
        attempts = dict.fromkeys(range(len(tasks)), 0)
        started: dict[int, str] = {}
        todo = list(range(len(tasks)))
        try:
            while todo or self._jobs:
                if todo:
                    jobs = executor.map_array(execute, [tasks[i] for i in todo])
                    for job, index in zip(jobs, todo):
                        self._jobs[job] = index
                        attempts[index] += 1
                    todo = []
                for job, index in list(self._jobs.items()):
                    if index not in started and (self.cluster == "debug" or job.state in _STARTED_STATES):
                        started[index] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
                        if on_start is not None:
                            on_start(tasks[index])
                    if not job.done():
                        continue
                    del self._jobs[job]
                    try:
                        record = job.result()
                    except Exception as exc:  # noqa: BLE001 - the job ended without a record
                        if attempts[index] <= self.retries:
                            todo.append(index)
                            started.pop(index, None)
                            continue
                        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                        record = self.failed_record(
                            tasks[index],
                            f"worker died (job {job.job_id}, state {job.state}) "
                            f"{_times(attempts[index])}: {first}; log: {job.paths.stderr}",
                            started_at=started.get(index, ""),
                        )
                    on_record(record)
                if self._jobs and not todo:
                    time.sleep(_POLL_S[self.cluster])
        except BaseException:  # Ctrl-C or a failing callback: cancel what is queued or running
            self._cancel()
            raise

    def _cancel(self) -> None:
        for job in self._jobs:
            try:
                job.cancel(check=False)
            except Exception:  # noqa: BLE001 - already gone: nothing left to cancel
                pass
        self._jobs = {}


@hookimpl
def register_launchers(register) -> None:
    register(SlurmLauncher)
