"""The ``multigpu`` launcher: one worker process per visible GPU of this machine.

Each worker is a fresh (spawned) Python process that sees exactly one GPU through its own
``CUDA_VISIBLE_DEVICES`` and trains one cell at a time; the driver hands out cells as workers
free up and receives every record back (the driver alone writes files). Without a GPU, option
``workers: N`` runs N CPU workers. A worker that dies mid-cell (killed, out of memory, segfault)
is noticed through its process sentinel; its cell is retried in a fresh worker up to ``retries``
times and then recorded as failed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import multiprocessing
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Iterator
from multiprocessing.connection import wait

from tlbench import Launcher, UserError, hookimpl

_STOP_GRACE_S = 5.0


def times(n: int) -> str:
    """'once', 'twice', '3 times': how often a worker died on one cell."""
    return {1: "once", 2: "twice"}.get(n, f"{n} times")


def visible_gpus() -> list[str]:
    """The GPU ids this process may use (what CUDA_VISIBLE_DEVICES names, else 0..N-1)."""
    import torch

    count = torch.cuda.device_count()
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d.strip() for d in listed.split(",") if d.strip()][:count]
    return [str(i) for i in range(count)]


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables while a worker is spawned (it inherits them), then restore."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _worker_main(conn) -> None:
    """A worker's loop: receive (index, execute, task), announce the start, send back the record."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
    # SIGTERM from the driver unwinds, so atomic writes remove their temporary files; as a
    # KeyboardInterrupt, the one exception a cell does not turn into its own failure.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        _serve(conn)
    except KeyboardInterrupt:
        sys.exit(143)


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


def _serve(conn) -> None:
    """Train the cells the driver sends until it sends None or goes away."""
    while True:
        try:
            message = conn.recv()
        except EOFError:  # the driver is gone
            return
        if message is None:
            return
        index, execute, task = message
        conn.send(("start", index))
        conn.send(("done", index, execute(task)))


class _Worker:
    """One worker process, its pipe, and the task it is running (if any)."""

    def __init__(self, ctx, slot: int, env: dict[str, str]):
        self.slot, self.env = slot, env
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child,), name=f"tlbench-worker-{slot}")
        with _environ(env):
            self.process.start()
        child.close()
        self.index: int | None = None
        self.started_at = ""
        self.t0 = 0.0

    def give(self, index: int, execute, task) -> None:
        self.index = index
        self.started_at = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        self.t0 = time.perf_counter()
        self.conn.send((index, execute, task))

    def stop(self, now: bool) -> None:
        """Ask the worker to exit (or terminate it at once); kill it if it does not."""
        if self.process.is_alive() and not now:
            with contextlib.suppress(OSError):
                self.conn.send(None)
            self.process.join(_STOP_GRACE_S)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(_STOP_GRACE_S)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


class MultiGpuLauncher(Launcher):
    """One spawned worker per visible GPU (or ``workers`` CPU workers); dead workers are replaced."""

    name = "multigpu"
    option_help = {
        "workers": "number of worker processes (default: one per visible GPU; required without a GPU); "
        "with GPUs, workers are spread over them round-robin",
        "retries": "how often a cell whose worker died is retried in a fresh worker (default 1)",
    }

    def __init__(self, **options):
        super().__init__(**options)
        self.workers = options.get("workers")
        self.retries = options.get("retries", 1)
        if self.workers is not None and (not isinstance(self.workers, int) or self.workers < 1):
            raise UserError(f"launcher multigpu: option workers must be a positive integer, got {self.workers!r}")
        if not isinstance(self.retries, int) or self.retries < 0:
            raise UserError(f"launcher multigpu: option retries must be an integer >= 0, got {self.retries!r}")
        self._workers: list[_Worker] = []  # kept from wave to wave; ended by close()

    def slot_environments(self) -> list[dict[str, str]]:
        """The environment of each worker: its GPU, or a fair share of the CPU threads."""
        gpus = visible_gpus()
        if gpus:
            n = self.workers or len(gpus)
            return [{"CUDA_VISIBLE_DEVICES": gpus[i % len(gpus)]} for i in range(n)]
        if self.workers is None:
            raise UserError(
                "launcher multigpu: no GPU is visible; set the launcher option workers: N to run "
                "N CPU worker processes, or use --launcher local"
            )
        threads = str(max(1, (os.cpu_count() or 1) // self.workers))
        env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        return [{k: os.environ.get(k, v) for k, v in env.items()} for _ in range(self.workers)]

    def launch(self, tasks, execute, on_record, on_start=None) -> None:
        # Per-step bars of several workers would interleave; the driver's matrix bar shows progress.
        tasks = [dataclasses.replace(t, show_progress=False) for t in tasks]
        ctx = multiprocessing.get_context("spawn")
        queue = deque(range(len(tasks)))
        deaths: dict[int, int] = {}
        left = len(tasks)
        try:
            present = {w.slot for w in self._workers}
            for slot, env in list(enumerate(self.slot_environments()))[: len(tasks)]:
                if slot not in present:
                    self._workers.append(_Worker(ctx, slot, env))
            while left:
                for w in self._workers:
                    if w.index is None and queue and w.process.is_alive():
                        index = queue.popleft()
                        w.give(index, execute, tasks[index])
                wait([w.conn for w in self._workers] + [w.process.sentinel for w in self._workers])
                for w in list(self._workers):
                    left -= self._receive(w, tasks, on_record, on_start)
                    if w.process.is_alive():
                        continue
                    w.process.join()
                    w.conn.close()
                    self._workers.remove(w)
                    if w.index is not None:
                        index, code = w.index, w.process.exitcode
                        deaths[index] = deaths.get(index, 0) + 1
                        if deaths[index] > self.retries:
                            on_record(
                                self.failed_record(
                                    tasks[index],
                                    f"worker died (exit code {code}) {times(deaths[index])}",
                                    started_at=w.started_at,
                                    wall_s=time.perf_counter() - w.t0,
                                )
                            )
                            left -= 1
                        else:
                            queue.appendleft(index)
                    if queue:  # a fresh worker in the dead one's place, on the same GPU
                        self._workers.append(_Worker(ctx, w.slot, w.env))
        except BaseException:  # Ctrl-C or a failing callback: no worker outlives the driver's attention
            self._stop(now=True)
            raise

    def close(self) -> None:
        self._stop(now=False)

    def _stop(self, now: bool) -> None:
        for w in self._workers:
            w.stop(now=now)
        self._workers = []

    @staticmethod
    def _receive(w: _Worker, tasks, on_record, on_start) -> int:
        """Handle what a worker sent; the number of records it delivered."""
        delivered = 0
        while True:
            try:
                if not w.conn.poll():
                    return delivered
                message = w.conn.recv()
            except (EOFError, OSError):  # it died; the caller sees that through the process
                return delivered
            if message[0] == "start":
                if on_start is not None:
                    on_start(tasks[message[1]])
            else:
                w.index = None
                on_record(message[2])
                delivered += 1


@hookimpl
def register_launchers(register) -> None:
    register(MultiGpuLauncher)
