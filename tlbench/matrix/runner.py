"""The matrix runner: validate a suite, expand it into cells, skip what is done, launch the rest.

Planning (``planning``), preflight (``preflight``) and what a rerun skips or retries (``resume``) have
their own modules; this one is the driver that calls them in order.

The runner is the driver: whatever launcher trains the cells, records come back here and only
here are they written (atomically), so a worker that dies loses at most its own cell and a
killed run resumes where it stopped. An exclusive lock keeps two runs out of one directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tlbench.errors import RunLockedError, UserError
from tlbench.matrix.cells import CellTask
from tlbench.matrix.planning import open_dataset, plan, waves
from tlbench.matrix.preflight import check_device, check_output_dir, preflight
from tlbench.matrix.results import CellRecord, ResultsDir, column_label, evaluation_files
from tlbench.matrix.resume import check_stale, failed_teacher_record, is_skipped, killed_cells
from tlbench.matrix.tracking import TrackerFeed, tracker_entries


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


def run_suite(suite, options: RunOptions, registry) -> RunSummary:
    """Run (or resume) a validated suite into ``options.out_dir``."""
    from tlbench.data.cache import default_cache_dir, usable_cache_dir

    check_device(options.device)
    cells, pairs = plan(suite, registry)
    for name in options.trackers:  # the suite's own were checked by plan()
        registry.get("tracker", name)
    out = ResultsDir(options.out_dir)
    check_output_dir(out, suite.data_root, [c.id for c in cells])
    check_stale(cells, out, registry, force=options.force, keep=options.keep_stale)
    cache_dir = usable_cache_dir(options.cache_dir or default_cache_dir())
    teacher_ids = {c.teacher.id for c in cells if c.teacher is not None}
    preflight(
        suite,
        [c for c in cells if options.force or c.id in teacher_ids or not out.is_done(c.id)],
        registry,
        cache_dir,
        options.device,
    )
    launcher_name = options.launcher or suite.launcher.name
    launcher_opts = {**suite.launcher.options, **options.launcher_options}
    launcher = registry.get("launcher", launcher_name)(**launcher_opts)
    by_id = {c.id: c for c in cells}

    with run_lock(options.out_dir):
        meta = _suite_meta(suite, pairs, registry)
        out.write_suite(meta)
        feed = TrackerFeed(tracker_entries(suite.trackers, options.trackers), options.out_dir, meta, registry)
        records: list[CellRecord] = []
        skipped = 0
        progress = _matrix_progress(len(cells), options.quiet)
        running = _Running(progress, out)
        killed = killed_cells(cells, out)

        def finished(rec: CellRecord) -> None:
            _write(out, rec, records, progress)
            feed.log_cell(by_id[rec.cell_id], rec)

        try:
            for rec in killed:  # recorded now, not run: not counted among the cells run
                _write(out, rec, [], progress)
                out.running_path(rec.cell_id).unlink(missing_ok=True)
            killed_ids = {rec.cell_id for rec in killed}
            for wave in waves(cells):
                tasks = []
                for cell in wave:
                    if cell.id in killed_ids:
                        continue
                    if is_skipped(cell, out, teacher_ids, options.force):
                        skipped += 1
                        progress.update(1)
                        continue
                    blocked = failed_teacher_record(cell, out)
                    if blocked:
                        finished(blocked)
                        continue
                    tasks.append(
                        CellTask(
                            cell=cell,
                            out_dir=str(options.out_dir),
                            data_root=suite.data_root,
                            cache_dir=str(cache_dir) if cache_dir else None,
                            device=options.device,
                            save_model=cell.id in teacher_ids,
                            teacher_model=str(out.model_path(cell.teacher.id)) if cell.teacher else None,
                            show_progress=not options.quiet,
                            strict_plugins=options.strict_plugins,
                            debug=options.debug,
                        )
                    )
                if tasks:
                    from tlbench.training.engine import run_cell

                    def on_record(rec: CellRecord) -> None:
                        finished(rec)
                        running.end(rec.cell_id)

                    if _accepts_on_start(launcher):
                        launcher.launch(tasks, run_cell, on_record, on_start=running.start)
                    else:  # a launcher written before on_start existed
                        launcher.launch(tasks, run_cell, on_record)
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                running.interrupted()  # Ctrl-C is not a death: the cells in flight simply run again
            feed.close()
            raise
        finally:
            launcher.close()
            progress.close()
            out.write_tables()
        report_files = []
        try:
            if options.reports:
                from tlbench.reporting.selection import read_checkpoint_tables
                from tlbench.reporting.write import write_reports

                report_files = write_reports(
                    options.out_dir,
                    out.records(curves=True),
                    out.read_suite(),
                    suite.reports,
                    registry=registry,
                    evaluations=evaluation_files([options.out_dir]),
                    stored_checkpoints=read_checkpoint_tables([options.out_dir]),
                )
                feed.log_reports(report_files)
        finally:
            feed.close()
    matrix = [r for r in (out.read_record(c.id) for c in cells) if r is not None]
    return RunSummary(options.out_dir, len(cells), skipped, records, report_files, matrix)


def _write(out: ResultsDir, record: CellRecord, records: list[CellRecord], progress) -> None:
    out.write_record(record)
    out.write_tables()
    records.append(record)
    progress.update(1)
    if record.status != "ok":
        progress.write(
            f"cell {record.cell_id} {record.backbone} {record.strategy} {record.column} "
            f"seed={record.seed}: {record.status}: {record.error.splitlines()[0] if record.error else ''}"
        )


def _suite_meta(suite, pairs: list[tuple[str, str]], registry) -> dict:
    """What reports need to know about the suite; reference pairs use the same canonical names."""
    from tlbench.matrix.cells import canonical_pair

    dataset = open_dataset(suite, registry)
    finetune = suite.protocol == "finetune"
    references = []
    for ref in suite.reference:
        r = ref.model_dump()
        if not finetune:  # finetune references name their columns ('amazon 10%') as written
            r["acc"] = {"->".join(canonical_pair(k, dataset)): v for k, v in ref.acc.items()}
        references.append(r)
    # the leaderboard's columns: pairs, or task × budget
    columns = [column_label(suite.protocol, s, t, b) for s, t in pairs for b in (suite.budgets if finetune else [""])]
    return {
        "name": suite.name,
        "description": suite.description,
        "dataset": suite.dataset,
        "protocol": suite.protocol,
        "pairs": columns,
        "backbones": [b.name for b in suite.backbones],
        **({"tasks": [s for s, _ in pairs], "budgets": suite.budgets, "score_on": suite.score_on} if finetune else {}),
        # backbones that run only some pairs: how many (backbone, pair) runs a strategy and seed have
        "backbone_pair_runs": sum(len(b.pairs) if b.pairs is not None else len(columns) for b in suite.backbones),
        "strategies": [s.label or s.name for s in suite.strategies],
        "seeds": suite.seeds,
        "recipe": json.loads(suite.recipe.model_dump_json()),
        "recipe_sweep": suite.recipe_sweep,
        "selection": suite.selection,
        "reference": references,
    }


def _accepts_on_start(launcher) -> bool:
    import inspect

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
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="matrix", unit="cell", dynamic_ncols=True)
