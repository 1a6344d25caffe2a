"""The ``ray`` launcher: each cell a Ray task asking for its resources (``pip install 'tlbench[ray]'``).

With option ``address`` (CLI ``--ray-address``; ``auto`` finds a cluster started with ``ray start
--head`` on this node) it joins an existing cluster; otherwise it starts a private Ray instance on
this machine that listens on the loopback address only. Tasks ask for one GPU each on a cluster
with GPUs (Ray then sets ``CUDA_VISIBLE_DEVICES``), else ``cpus_per_cell`` CPUs. A task whose
worker died (killed, node lost) is retried by Ray up to ``max_retries`` times, then recorded as
failed. Records come back to the driver, which alone writes files; the workers need tlbench and
the plugins installed, the data root readable, and, for kd teachers, the output directory on a
shared filesystem.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import os
from typing import Any

from tlbench import Launcher, UserError, hookimpl

_POLL_S = 0.5

#: ``ray.init``'s documented logging options for a driver whose stderr is tlbench's: Ray's "ray" logger
#: at ERROR (its notices, such as "Token authentication is enabled for this Ray cluster", would be lines
#: tlbench did not write; with ``configure_logging=False`` Python's last-resort handler printed them) and
#: the workers' output kept in Ray's log files, not copied to the driver
QUIET_RAY: dict[str, Any] = {"configure_logging": True, "logging_level": logging.ERROR, "log_to_driver": False}


def import_ray():
    """Ray, or a clear error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise UserError("launcher ray needs Ray: pip install 'tlbench[ray]'") from None
    return ray


def start_local_ray(num_cpus: int | None = None, num_gpus: int | None = None):
    """Start a Ray instance on this machine whose servers listen on 127.0.0.1 only.

    Ray resolves a node address of 127.0.0.1 to the machine's network address unless multi-node
    clusters are disabled (the switch is named for Windows and macOS, where that is the default),
    so the switch is turned on for the start and its child processes, then restored.
    """
    switch = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
    saved_env = os.environ.get(switch)
    os.environ[switch] = "0"
    ray = import_ray()
    # set only when saved_constant is, which getattr finds only on a module
    constants: Any = getattr(getattr(ray, "_private", None), "ray_constants", None)
    saved_constant = getattr(constants, "ENABLE_RAY_CLUSTER", None)
    if saved_constant is not None:  # ray was imported before the variable was set
        constants.ENABLE_RAY_CLUSTER = False
    try:
        ray.init(
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            **QUIET_RAY,
        )
    finally:
        if saved_constant is not None:
            constants.ENABLE_RAY_CLUSTER = saved_constant
        if saved_env is None:
            os.environ.pop(switch, None)
        else:
            os.environ[switch] = saved_env
    host = ray.get_runtime_context().gcs_address.rsplit(":", 1)[0]
    if host not in ("127.0.0.1", "localhost", "::1"):
        ray.shutdown()
        raise UserError(
            f"launcher ray: the local Ray instance would listen on {host}, not the loopback address; "
            "start one yourself (ray start --head --node-ip-address 127.0.0.1) and pass --ray-address auto"
        )
    return ray


def _run_and_announce(execute, task, index: int, started):
    """The Ray task: tell the driver the cell started, then train it."""
    started.put(index)
    return execute(task)


class RayLauncher(Launcher):
    """Cells as Ray tasks on an existing cluster (``address``) or a private local instance."""

    name = "ray"
    option_help = {
        "address": "Ray cluster to join, e.g. auto or HOST:6379 (CLI --ray-address); default: start a "
        "local instance on 127.0.0.1",
        "num_cpus": "CPUs of the local instance (default: all of this machine)",
        "cpus_per_cell": "CPUs each cell asks for (default 1)",
        "gpus_per_cell": "GPUs each cell asks for when the cluster has GPUs (default 1)",
        "max_retries": "how often Ray retries a cell whose worker died (default 1)",
    }

    def __init__(self, **options):
        super().__init__(**options)
        self.address = options.get("address")
        self.num_cpus = options.get("num_cpus")
        self.cpus_per_cell = options.get("cpus_per_cell", 1)
        self.gpus_per_cell = options.get("gpus_per_cell", 1)
        self.max_retries = options.get("max_retries", 1)
        self._ray = None
        self._owned = False  # whether this launcher started the connection (and must end it)
        if not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise UserError(f"launcher ray: option max_retries must be an integer >= 0, got {self.max_retries!r}")
        for key in ("cpus_per_cell", "gpus_per_cell"):
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or value <= 0:
                raise UserError(f"launcher ray: option {key} must be a positive number, got {value!r}")

    def _connect(self):
        """Ray, connected: kept from wave to wave, ended by :meth:`close` if this launcher began it."""
        ray = import_ray()
        if ray.is_initialized():  # ours from an earlier wave, or the caller's (a notebook, a test)
            return ray
        if self.address:
            try:
                ray.init(address=self.address, **QUIET_RAY)
            except ConnectionError as exc:
                raise UserError(
                    f"launcher ray: cannot join the Ray cluster at {self.address!r} ({exc}); "
                    "start it with 'ray start --head' or fix --ray-address"
                ) from None
        else:
            start_local_ray(self.num_cpus)
        self._ray, self._owned = ray, True
        return ray

    def close(self) -> None:
        if self._owned and self._ray is not None:
            self._ray.shutdown()
        self._ray, self._owned = None, False

    def resources(self, ray) -> dict[str, float]:
        """What one cell asks for: a GPU where the cluster has any, CPUs otherwise."""
        if ray.cluster_resources().get("GPU", 0) > 0:
            return {"num_gpus": self.gpus_per_cell, "num_cpus": self.cpus_per_cell}
        return {"num_gpus": 0, "num_cpus": self.cpus_per_cell}

    def launch(self, tasks, execute, on_record, on_start=None) -> None:
        # Per-step bars of several workers would interleave; the driver's matrix bar shows progress.
        tasks = [dataclasses.replace(t, show_progress=False) for t in tasks]
        ray = self._connect()
        from ray.util.queue import Empty, Queue

        pending: dict = {}
        started = Queue(actor_options={"num_cpus": 0})  # the tasks' "I started" messages
        try:
            remote = ray.remote(_run_and_announce).options(
                max_retries=self.max_retries, retry_exceptions=False, **self.resources(ray)
            )
            started_at: dict[int, str] = {}
            pending = {remote.remote(execute, task, i, started): i for i, task in enumerate(tasks)}
            done_indices: set[int] = set()
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=_POLL_S)
                while True:  # starts first, so a cell is "running" before its record arrives
                    try:
                        index = started.get_nowait()
                    except Empty:
                        break
                    started_at[index] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
                    if on_start is not None and index not in done_indices:
                        on_start(tasks[index])
                for ref in ready:
                    index = pending.pop(ref)
                    done_indices.add(index)
                    on_record(self._result(ray, ref, tasks[index], started_at.get(index, "")))
        except BaseException as exc:  # Ctrl-C or a failing callback: nothing keeps running for nobody
            for ref in pending:
                ray.cancel(ref, force=True)
            if isinstance(exc, KeyboardInterrupt):
                self.close()
            raise
        finally:
            if ray.is_initialized():
                started.shutdown(force=True)

    def _result(self, ray, ref, task, started_at: str):
        """The task's record, or a failed record saying how its worker was lost."""
        from ray.exceptions import RayError, RayTaskError

        try:
            return ray.get(ref)
        except RayTaskError as exc:  # run_cell raised (it records ordinary errors itself)
            return self.failed_record(
                task, f"{type(exc.cause).__name__}: {exc.cause}" if exc.cause else str(exc), started_at=started_at
            )
        except RayError as exc:
            attempts = self.max_retries + 1
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            return self.failed_record(
                task, f"worker died ({type(exc).__name__}) {_times(attempts)}: {first}", started_at=started_at
            )


def _times(n: int) -> str:
    return {1: "once", 2: "twice"}.get(n, f"{n} times")


@hookimpl
def register_launchers(register) -> None:
    register(RayLauncher)
