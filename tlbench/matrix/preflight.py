"""Preflight: what would fail hours into a matrix, found before the first cell trains.

Every domain decoded (into the cache), every pretrained weight loaded, the device and the output
folder checked, and on the CPU a step that cannot fit in memory refused: each problem is one
:class:`tlbench.UserError` line (exit 2) and no cell runs.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

from tlbench.data.budgets import Budget
from tlbench.data.cache import load_domain
from tlbench.data.domains import Domain
from tlbench.data.memory import available_memory
from tlbench.data.tasks import split_task
from tlbench.errors import UserError
from tlbench.spec.cell import Cell
from tlbench.spec.plan import Plan
from tlbench.spec.store import ResultsDir


def preflight(run_plan: Plan, cells: list[Cell], registry: Any, cache_dir: Path | None, device: str = "auto") -> None:
    """Decode every domain and load every pretrained backbone the cells will use, before any trains.

    Datasets decode lazily, so without this a corrupt image, an empty domain or a weights file
    that does not fit would only surface when its cell runs, hours into a matrix. Everything
    found here is a :class:`UserError` (exit 2, nothing trained). The domains land in the disk
    cache (and this process's LRU), so the cells reuse them instead of decoding again. Files
    skipped under ``on_bad_image: skip`` are reported once per domain as a warning.
    """
    if not cells:
        return
    loaded: dict[str, Domain] = {}
    for cell in cells:
        for spec in (cell.source, cell.target):
            if spec not in loaded:
                loaded[spec] = _decode(run_plan, spec, cell, registry, cache_dir)
        _check_same_classes(cell, loaded[cell.source], loaded[cell.target])
        _check_target_classes(cell, loaded)
        if cell.finetune:  # a budget the training split cannot give, a class without training images
            split_task(loaded[cell.source], Budget.parse(cell.budget), cell.seed, cell.score_on)
    _preflight_weights(cells, registry)
    if _trains_on_cpu(device):
        _preflight_memory(cells, registry, available_memory())


def _decode(run_plan: Plan, spec: str, cell: Cell, registry: Any, cache_dir: Path | None) -> Domain:
    """One domain decoded at the cell's stored size (into the cache); its skipped files said once."""
    name = run_plan.suite.dataset
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            domain = load_domain(
                run_plan.dataset,
                spec,
                cell.recipe.stored_size,
                cache_dir=cache_dir,
                shift_seed=cell.shift_seed,
                registry=registry,
            )
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever a dataset plugin raises, the user gets one line
            first = (str(exc).splitlines() or [""])[0]
            raise UserError(
                f"dataset {name!r}: domain {spec!r} cannot be loaded ({type(exc).__name__}: {first}); no cell was run"
            ) from exc
    for w in caught:  # per-file skip warnings are summed up below, the rest passed on
        if not str(w.message).startswith("skipping "):
            warnings.warn(str(w.message), w.category, stacklevel=3)
    if domain.skipped:
        warnings.warn(
            f"dataset {name!r}: domain {spec!r}: {len(domain.skipped)} unreadable "
            f"image(s) skipped (on_bad_image: skip), e.g. {domain.skipped[0]}",
            stacklevel=3,
        )
    return domain


def _check_same_classes(cell: Cell, source: Domain, target: Domain) -> None:
    """Source and target name the same classes in the same order."""
    if list(source.classes) == list(target.classes):
        return
    src, tgt = set(source.classes), set(target.classes)
    only_src, only_tgt = sorted(src - tgt), sorted(tgt - src)
    detail = "; ".join(
        part
        for part in (
            f"only in {cell.source}: {', '.join(only_src[:5])}" if only_src else "",
            f"only in {cell.target}: {', '.join(only_tgt[:5])}" if only_tgt else "",
        )
        if part
    )
    raise UserError(
        f"pair {cell.pair}: source and target have different classes "
        f"({detail or 'same names, different order'}); every domain needs the same classes"
    )


def _check_target_classes(cell: Cell, loaded: dict[str, Domain]) -> None:
    """Every class the source teaches must have images in the target, or its accuracy means nothing."""
    source, target = (set(loaded[spec].labels.unique().tolist()) for spec in (cell.source, cell.target))
    absent = sorted(source - target)
    if absent:
        names = ", ".join(str(i) for i in absent[:5]) + (", ..." if len(absent) > 5 else "")
        raise UserError(
            f"pair {cell.pair}: {len(absent)} class(es) of the source have no image in the target "
            f"(class index {names}); every domain needs images of every class"
        )


def check_device(device: str) -> None:
    """``--device cuda`` on a machine without a usable GPU is bad input, found before any cell runs."""
    if device != "cuda":
        return
    import torch

    if not torch.cuda.is_available():
        raise UserError(
            "--device cuda: no CUDA GPU is available here (torch.cuda.is_available() is False); "
            "use --device cpu or --device auto"
        )


def _trains_on_cpu(device: str) -> bool:
    import torch

    return device == "cpu" or (device == "auto" and not torch.cuda.is_available())


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
        key = (cell.backbone, int(cell.recipe.image_size))
        if key not in per_image:
            per_image[key] = activation_bytes(*key, registry=registry)
        need = images * per_image[key]
        if need > available:
            raise UserError(
                f"{cell.describe()}: one training step needs at least {need / 2**30:.1f} GiB of memory "
                f"({images} images of {key[1]}px through {cell.backbone}) and {available / 2**30:.1f} GiB are "
                f"available; lower recipe.batch_size (now {cell.recipe.batch_size}) or recipe.image_size"
            )


def _images_per_step(cell: Cell, registry) -> int:
    """How many images one step sends through the backbone with gradients kept (0: features only)."""
    cls = registry.get("strategy", cell.strategy)
    if getattr(cls, "accepts_features", False) and not getattr(cls, "trains_backbone", True):
        return 0  # a frozen backbone's features are computed once, in evaluation batches
    return int(cell.recipe.batch_size) * (1 + len(getattr(cls, "target_views", ())))


def activation_bytes(backbone: str, image_size: int, *, registry) -> int:
    """float32 bytes of every layer's output for one image: what a training step keeps per image."""
    import torch

    from tlbench.models.weights import load_backbone

    made, _ = load_backbone(backbone, "random", registry=registry)
    model = made.network
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
            model.eval()(torch.zeros(1, made.in_chans, image_size, image_size))
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
            raise UserError(
                f"backbone {cell.backbone!r}: weights {cell.weights!r} cannot be loaded "
                f"({type(exc).__name__}: {first}); no cell was run"
            ) from exc


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
        raise UserError(
            f"{given} is inside the data root {data_root}, which tlbench only reads (an output "
            "folder there would become a domain); choose a folder outside it"
        )
    existing = next(p for p in (root.absolute(), *root.absolute().parents) if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{given}: {existing} is not writable; choose another --out or fix its permissions")
    for path in (root / "cells", *(out.cell_dir(i) for i in cell_ids)):
        if path.is_symlink():  # records written through it would land outside the output folder
            raise UserError(
                f"{path} is a symbolic link, and tlbench writes only inside {given}; "
                "remove the link (tlbench makes the folder) and run again"
            )
    for path, kind in [
        (root / ".lock", "file"),
        (root / "cells", "folder"),
        (root / "suite.json", "file"),
        *((out.record_path(i), "file") for i in cell_ids),
    ]:
        if path.exists() and path.is_dir() != (kind == "folder"):
            raise UserError(f"{path} should be a {kind} but is not; remove it (tlbench writes it) and run again")


def check_tracker_paths(
    entries: list[tuple[str, dict[str, Any]]], out_dir: Path, data_root: str | None, registry: Any
) -> None:
    """No tracker may write inside the data root, which tlbench only reads (as :func:`check_output_dir`
    refuses ``--out`` there): each tracker's :meth:`~tlbench.Tracker.local_paths` for its options,
    checked before any is made (making one may already create its store) and before any cell trains."""
    if not data_root:
        return
    for name, options in entries:
        for path in registry.get("tracker", name).local_paths(Path(out_dir), dict(options)):
            if _inside(path, Path(data_root)):
                raise UserError(
                    f"tracker {name!r} would write {path}, inside the data root {data_root}, which tlbench "
                    "only reads; point its options (in the suite's trackers) outside it"
                )


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except (ValueError, OSError):
        return False
