"""Shared pieces of the benchmark scripts: building a cell without a suite file, finding image data.

Not a test module (pytest never collects it); the scripts in this folder import it as a sibling.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA_ROOT = REPO.parent / "shared" / "datasets"


def default_data_root() -> Path:
    """``$TLBENCH_DATA_ROOT``, else ``../shared/datasets`` next to the repository."""
    env = os.environ.get("TLBENCH_DATA_ROOT")
    return Path(env).expanduser() if env else DEFAULT_DATA_ROOT


def add_run_options(p) -> None:
    """The options every cell benchmark shares: warm-up steps, device, threads, JSON output."""
    p.add_argument("--warmup", type=int, default=5, help="steps run first and not measured")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--json", default=None, help="write the figures to this JSON file")


def make_recipe(**overrides: Any):
    """The engine's recipe: the suite defaults (``tlbench.spec.recipe.Recipe``) with ``overrides``."""
    from tlbench.spec.recipe import Recipe

    return Recipe(**overrides)


def make_cell(
    *,
    dataset: str,
    dataset_options: dict[str, Any],
    source: str,
    target: str,
    backbone: str,
    weights: str,
    strategy: str,
    recipe,
    registry,
    seed: int = 0,
):
    """A :class:`tlbench.spec.cell.Cell` built the way ``expand_cells`` builds one (strategy defaults resolved)."""
    from tlbench.spec.cell import Cell

    cls = registry.get("strategy", strategy)
    if getattr(cls, "needs_teacher", False):
        raise SystemExit(
            f"strategy {strategy!r} needs a trained teacher; benchmark it through a suite (tlbench run) instead"
        )
    params = asdict(cls.parse_params({}))
    return Cell(
        suite="benchmark",
        dataset=dataset,
        dataset_options=dataset_options,
        backbone=backbone,
        weights=weights,
        strategy=strategy,
        label=strategy,
        params=params,
        source=source,
        target=target,
        seed=seed,
        recipe=recipe,
    )


def teacherless_cells(suite_path: str | Path, registry, **narrowing: Any):
    """(cells, suite): the cells a suite plans, narrowed as ``load_suite`` narrows (pairs, strategies,
    backbones, seeds, data_root, overrides), without the kd cells and the teachers they need."""
    from tlbench.spec.loading import load_suite
    from tlbench.spec.plan import plan

    suite = load_suite(Path(suite_path), **narrowing)
    cells = plan(suite, registry).cells
    return [c for c in cells if c.teacher is None and not registry.get("strategy", c.strategy).needs_teacher], suite


def run_engine_cell(cell, *, device: str, cache_dir: Path | None, data_root: Path | None, registry):
    """Train one cell with ``tlbench.training.engine.train_cell`` (no progress bar); returns its CellRecord."""
    from tlbench.spec.cell import CellTask
    from tlbench.training.engine import train_cell

    task = CellTask(
        cell=cell,
        out_dir=str(cache_dir or "."),
        data_root=str(data_root) if data_root else None,
        cache_dir=str(cache_dir) if cache_dir else None,
        device=device,
        show_progress=False,
    )
    return train_cell(task, registry)


def find_class_folder(data_root: Path, domain: str) -> Path | None:
    """``<root>/<domain>/images`` or ``<root>/<domain>`` when it holds class folders of images; else None."""
    for folder in (data_root / domain / "images", data_root / domain):
        if folder.is_dir() and any(p.is_dir() for p in folder.iterdir()):
            return folder
    return None


def generate_jpeg_folder(folder: Path, *, classes: int = 31, per_class: int = 16, size: int = 300) -> Path:
    """A deterministic class folder of smooth synthetic JPEGs (photo-like to a JPEG decoder), made once."""
    import numpy as np
    from PIL import Image

    done = folder / ".complete"
    if done.exists():
        return folder
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for c in range(classes):
        sub = folder / f"class_{c:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            f = rng.uniform(1, 6, size=(3, 2))
            ph = rng.uniform(0, 2 * np.pi, size=3)
            img = np.stack(
                [127 + 100 * np.sin(2 * np.pi * (f[k, 0] * xx + f[k, 1] * yy) + ph[k]) for k in range(3)], -1
            )
            img += rng.normal(0, 6, img.shape)
            Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(sub / f"img_{i:03d}.jpg", quality=90)
    done.write_text("ok\n")
    return folder


def linked_train_eval_folders(class_folder: Path, work_dir: Path, eval_per_class: int = 1) -> Path:
    """``<work>/{train,eval}/<class>/`` of symbolic links into ``class_folder``; returns ``<work>``.

    ``train`` links every image (the data both loops read), ``eval`` the first ``eval_per_class``
    of each class, so the engine's pair ``train->eval`` trains on the whole folder and evaluates on a
    handful (evaluation is not what is measured). The location depends only on the folder, so the
    engine's decoded-image cache is reused between runs.
    """
    digest = hashlib.sha256(str(class_folder.resolve()).encode()).hexdigest()[:12]
    root = work_dir / f"linked-{class_folder.name}-{digest}"
    if (root / ".complete").exists():
        return root
    from tlbench.data.class_folders import class_folder_files

    for cls, files in class_folder_files(class_folder).items():
        for split, chosen in (("train", files), ("eval", files[:eval_per_class])):
            sub = root / split / cls
            sub.mkdir(parents=True, exist_ok=True)
            for f in chosen:
                link = sub / f.name
                if not link.exists():
                    link.symlink_to(f.resolve())
    (root / ".complete").write_text("ok\n")
    return root


def environment(device: torch.device) -> dict[str, Any]:
    """What the figures depend on: device, threads, versions, load."""
    from tlbench.training.measure import device_name

    env: dict[str, Any] = {
        "device": device_name(device),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }
    try:
        import timm
        import torchvision

        env.update(timm=timm.__version__, torchvision=torchvision.__version__)
    except ImportError:
        pass
    try:
        env["load_average_1m"] = os.getloadavg()[0]
    except OSError:
        pass
    if device.type == "cuda":
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
    return env


def write_json(path: str | None, payload: dict[str, Any]) -> None:
    if not path:
        return
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    print(f"wrote {p}", file=sys.stderr)
