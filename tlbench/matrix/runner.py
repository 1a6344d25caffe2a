"""The matrix runner: validate a suite, expand it into cells, skip what is done, launch the rest.

Planning (:mod:`tlbench.spec.plan`), preflight (``preflight``) and what a rerun skips or retries
(``resume``) have their own modules; this one is the driver that calls them in order.

The runner is the driver: whatever launcher trains the cells, records come back here and only
here are they written (atomically), so a worker that dies loses at most its own cell and a
killed run resumes where it stopped. An exclusive lock keeps two runs out of one directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import inspect
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from tlbench.data.cache import default_cache_dir, memory_cache_bytes, point_tool_caches_into, usable_cache_dir
from tlbench.errors import RunLockedError, Terminated, UserError
from tlbench.matrix.preflight import check_device, check_output_dir, check_tracker_paths, preflight
from tlbench.matrix.resume import check_stale, failed_teacher_record, is_skipped, killed_cells
from tlbench.matrix.tracking import TrackerFeed, tracker_entries
from tlbench.reporting.selection import read_checkpoint_tables
from tlbench.reporting.write import write_reports
from tlbench.spec.cell import Cell, CellTask
from tlbench.spec.plan import Plan, plan
from tlbench.spec.record import CellRecord
from tlbench.spec.store import ResultsDir, evaluation_files
from tlbench.spec.suite import Suite
from tlbench.training.engine import run_cell


@dataclass
class RunOptions:
    out_dir: Path
    device: str = "auto"
    launcher: str | None = None
    launcher_options: dict = field(default_factory=dict)
    force: bool = False
    quiet: bool = False
    debug: bool = False
    strict_plugins: bool = False
    cache_dir: Path | None = None
    reports: bool = True
    trackers: list[str] = field(default_factory=list)  # --tracker NAME, beside the suite's own
    keep_stale: bool = False  # keep finished cells whose code has changed since (else: refuse, exit 2)
    #: called once, when the suite is valid and at least one cell is about to train (the CLI's allocator hint)
    before_training: Callable[[], None] | None = None


@dataclass
class RunSummary:
    out_dir: Path
    total: int
    skipped: int
    records: list[CellRecord]  # the cells run (or found killed) this time
    report_files: list[Path]
    matrix: list[CellRecord] = field(default_factory=list)  # every cell's record now, those done before included

    @property
    def failures(self) -> list[CellRecord]:
        """Cells of the whole matrix that are not ok, whether they ran this time or before."""
        return [r for r in self.matrix or self.records if r.status != "ok"]

    @property
    def exit_code(self) -> int:
        return 1 if self.failures else 0


@contextlib.contextmanager
def run_lock(out_dir: Path) -> Iterator[None]:
    """An exclusive lock on the output directory; the second run names the holder."""
    path = out_dir / ".lock"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:  # check_output_dir found what it could; a file system may still refuse
        raise UserError(f"--out {out_dir}: cannot write there ({exc.strerror}); choose another --out") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "another process"
            raise RunLockedError(
                f"{out_dir} is in use by {holder}; wait for it to finish or use another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"tlbench pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock, also when the process is killed


@contextlib.contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """While the driver runs (the ``tlbench run`` command), SIGTERM raises :class:`Terminated`, the path
    Ctrl-C takes: the cells in flight lose their running marks instead of counting as deaths (out of
    memory?) next time. Only in the driver's own process (a launcher's workers keep their own handling),
    from the main thread, and once: a second SIGTERM while the first unwinds is ignored. The previous
    handler comes back after."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    raised = False

    def stop(signum, frame) -> None:
        nonlocal raised
        if not raised:
            raised = True
            raise Terminated

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def run_suite(suite: Suite, options: RunOptions, registry: Any) -> RunSummary:
    """Run (or resume) a validated suite into ``options.out_dir``."""
    check_device(options.device)
    run_plan = plan(suite, registry)
    for name in options.trackers:  # the suite's own were checked by plan()
        registry.get("tracker", name)
    out = ResultsDir(options.out_dir)
    check_output_dir(out, suite.data_root, [c.id for c in run_plan.cells])
    check_tracker_paths(tracker_entries(suite.trackers, options.trackers), options.out_dir, suite.data_root, registry)
    check_stale(run_plan.cells, out, registry, force=options.force, keep=options.keep_stale)
    cache_dir = usable_cache_dir(  # created only now: a refused suite leaves no cache folder behind
        Path(options.cache_dir).expanduser() if options.cache_dir else default_cache_dir(),
        "--cache" if options.cache_dir else "the cache folder",
    )
    point_tool_caches_into(cache_dir)
    memory_cache_bytes()  # a bad TLBENCH_MEMORY_CACHE_MB: one line now, not at the first domain decoded
    to_run = [c for c in run_plan.cells if options.force or c.id in run_plan.teacher_ids or not out.is_done(c.id)]
    preflight(run_plan, to_run, registry, cache_dir, options.device)
    if to_run and options.before_training is not None:
        options.before_training()
    launcher_opts = {**suite.launcher.options, **options.launcher_options}
    launcher = registry.get("launcher", options.launcher or suite.launcher.name)(**launcher_opts)

    with run_lock(options.out_dir):
        summary = run_plan.summary()
        out.write_suite(summary)
        feed = TrackerFeed(
            tracker_entries(suite.trackers, options.trackers), options.out_dir, summary.to_dict(), registry
        )
        try:
            driver = _Driver(run_plan, options, out, cache_dir, feed)
            try:
                driver.run(launcher)
            finally:
                launcher.close()
            report_files = _write_reports(run_plan, options, out, registry) if options.reports else []
            feed.log_reports(report_files)
        finally:
            feed.close()
    matrix = [r for r in (out.read_record(c.id) for c in run_plan.cells) if r is not None]
    return RunSummary(options.out_dir, len(run_plan.cells), driver.skipped, driver.records, report_files, matrix)


class _Driver:
    """One run's waves: what to skip, what to record without running, what to hand the launcher,
    and every record written (with the results tables) as it comes back."""

    def __init__(self, run_plan: Plan, options: RunOptions, out: ResultsDir, cache_dir: Path | None, feed):
        self.plan, self.options, self.out, self.cache_dir, self.feed = run_plan, options, out, cache_dir, feed
        self.by_id = {c.id: c for c in run_plan.cells}
        self.records: list[CellRecord] = []  # the cells run (or found killed) this time
        self.skipped = 0
        self.progress = _matrix_progress(len(run_plan.cells), options.quiet)
        self.running = _Running(self.progress, out)

    def run(self, launcher: Any) -> None:
        try:
            killed = killed_cells(self.plan.cells, self.out)
            for rec in killed:  # recorded now, not run: not counted among the cells run
                self._write(rec, counted=False)
                self.out.running_path(rec.cell_id).unlink(missing_ok=True)
            killed_ids = {rec.cell_id for rec in killed}
            for wave in self.plan.waves():
                tasks = [t for t in (self._task(c) for c in wave if c.id not in killed_ids) if t is not None]
                if tasks:
                    self._launch(launcher, tasks)
        except (KeyboardInterrupt, UserError):
            # Ctrl-C, or a run stopped by what the user must fix (a full disk), is not a death: the
            # cells in flight simply run again, and are never blamed on the out-of-memory killer
            self.running.interrupted()
            raise
        finally:
            self.progress.close()
            self.out.write_tables()

    def _task(self, cell: Cell) -> CellTask | None:
        """The cell's task, or None when it is skipped (done) or recorded as failed (its teacher failed)."""
        if is_skipped(cell, self.out, self.plan.teacher_ids, self.options.force):
            self.skipped += 1
            self.progress.update(1)
            return None
        blocked = failed_teacher_record(cell, self.out)
        if blocked:
            self._finished(blocked)
            return None
        return CellTask(
            cell=cell,
            out_dir=str(self.options.out_dir),
            data_root=self.plan.suite.data_root,
            cache_dir=str(self.cache_dir) if self.cache_dir else None,
            device=self.options.device,
            save_model=cell.id in self.plan.teacher_ids,
            teacher_model=str(self.out.model_path(cell.teacher.id)) if cell.teacher else None,
            show_progress=not self.options.quiet,
            strict_plugins=self.options.strict_plugins,
            debug=self.options.debug,
        )

    def _launch(self, launcher: Any, tasks: list[CellTask]) -> None:
        def on_record(rec: CellRecord) -> None:
            self._finished(rec)
            self.running.end(rec.cell_id)

        if _accepts_on_start(launcher):
            launcher.launch(tasks, run_cell, on_record, on_start=self.running.start)
        else:  # a launcher written before on_start existed
            launcher.launch(tasks, run_cell, on_record)

    def _finished(self, record: CellRecord) -> None:
        self._write(record)
        self.feed.log_cell(self.by_id[record.cell_id], record)

    def _write(self, record: CellRecord, *, counted: bool = True) -> None:
        self.out.write_record(record)
        self.out.write_tables()
        if counted:
            self.records.append(record)
        self.progress.update(1)
        if record.status != "ok":
            first = record.error.splitlines()[0] if record.error else ""
            self.progress.write(
                f"cell {record.cell_id} {record.backbone} {record.label} {record.column} "
                f"seed={record.seed}: {record.status}: {first}"
            )


def _write_reports(run_plan: Plan, options: RunOptions, out: ResultsDir, registry: Any) -> list[Path]:
    """Every report of the output folder, from all its records (those of earlier runs included)."""
    return write_reports(
        options.out_dir,
        out.records(curves=True),
        out.read_suite(),
        run_plan.suite.reports,
        registry=registry,
        evaluations=evaluation_files([options.out_dir]),
        stored_checkpoints=read_checkpoint_tables([options.out_dir]),
    )


def _accepts_on_start(launcher: Any) -> bool:
    params = inspect.signature(launcher.launch).parameters
    return "on_start" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


class _Running:
    """The cells running now across all workers, shown as "running N" after the matrix bar, each
    marked by a ``running.json`` until its record is written (so a run that dies names them later)."""

    def __init__(self, progress, out: ResultsDir):
        self.progress, self.out = progress, out
        self.ids: set[str] = set()

    def start(self, task: CellTask) -> None:
        self.ids.add(task.cell.id)
        self.out.write_running(task.cell.id, self.out.read_deaths(task.cell.id))
        self.progress.set_postfix_str(f"running {len(self.ids)}")

    def end(self, cell_id: str) -> None:
        self.ids.discard(cell_id)
        self.out.running_path(cell_id).unlink(missing_ok=True)
        self.progress.set_postfix_str(f"running {len(self.ids)}")

    def interrupted(self) -> None:
        for cell_id in self.ids:
            self.out.running_path(cell_id).unlink(missing_ok=True)


class _NoProgress:
    def update(self, n: int = 1) -> None: ...

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None: ...

    def write(self, s: str) -> None:
        print(s)

    def close(self) -> None: ...


def _matrix_progress(total: int, quiet: bool):
    if quiet:
        return _NoProgress()
    return tqdm(total=total, desc="matrix", unit="cell", dynamic_ncols=True)
