"""Training-step throughput: tlbench's engine against a plain PyTorch loop, same data, same process.

(a) engine: ``tlbench.training.engine.train_cell`` on a cell built from the arguments (image_folder
    dataset, the strategy from the registry, the engine's own optimizer, precision, memory
    format, augmentation and timing); the figure is the record's ``train_img_per_s`` (warm-up
    steps excluded, device synchronised).
(b) baseline, written the way peers write it: torchvision ``ImageFolder`` + ``DataLoader``
    decoding the JPEGs every step (RandomResizedCrop, flip, ToTensor, Normalize), float32,
    contiguous memory, ``model(x) -> cross-entropy -> backward -> SGD step``.
    With ``--from-memory`` it instead reads preloaded float tensors (no decoding) and uses the
    engine's precision, memory format and optimizer, so the ratio is the engine's own overhead.

Both train the same architecture (timm backbone + the harness's bottleneck and classifier) on the
same files. A strategy with target views (dann, mmd, ...) puts ``batch_size`` source and
``batch_size`` target images through the model per step; the baseline then uses batches of the same
total size, so both count the images that went through the network.

    .venv/bin/python benchmarks/step_throughput.py --backbone resnet50 --strategy dann --image-size 224 \\
        --batch-size 32 --steps 30 --warmup 5 --device cuda --json out/step.json
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (  # noqa: E402
    default_data_root,
    environment,
    find_class_folder,
    generate_jpeg_folder,
    linked_train_eval_folders,
    make_cell,
    make_recipe,
    run_engine_cell,
    write_json,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--backbone", default="resnet50", help="timm model name (default resnet50)")
    p.add_argument(
        "--weights", default="random", help="weights of the engine's backbone (speed does not depend on them)"
    )
    p.add_argument("--strategy", default="source_only", help="registered strategy name (default source_only)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument(
        "--batch-size", type=int, default=32, help="images per step from each domain (the recipe's batch_size)"
    )
    p.add_argument("--steps", type=int, default=30, help="measured steps (after the warm-up)")
    p.add_argument("--warmup", type=int, default=5, help="steps run first and not measured")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument(
        "--data-root",
        type=Path,
        default=None,
        help="folder holding --domain (default $TLBENCH_DATA_ROOT or ../shared/datasets)",
    )
    p.add_argument(
        "--domain",
        default="office31/amazon",
        help="class folder under the data root (<domain>[/images]/<class>/*.jpg); a generated JPEG "
        "folder is used when it is absent (default office31/amazon)",
    )
    p.add_argument("--workers", type=int, default=4, help="DataLoader worker processes of the JPEG baseline")
    p.add_argument(
        "--from-memory",
        action="store_true",
        help="baseline reads preloaded float tensors with the engine's precision and memory format",
    )
    p.add_argument("--memory-images", type=int, default=512, help="size of the preloaded pool for --from-memory")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument(
        "--cache-dir", type=Path, default=None, help="tlbench cache (default $TLBENCH_CACHE or ~/.cache/tlbench)"
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="measure engine and baseline this many times, alternating; report the medians",
    )
    p.add_argument(
        "--sync-debug",
        action="store_true",
        help="CUDA: count the engine's synchronising calls (torch.cuda.set_sync_debug_mode) by source line",
    )
    p.add_argument("--json", default=None, help="write the figures to this JSON file")
    p.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="instead of the comparison: run the engine's cell once under torch.profiler and write "
        "its operators by own time (training and the cell's evaluation together) to this file",
    )
    p.add_argument("--profile-rows", type=int, default=30, help="operators in the --profile table")
    p.add_argument(
        "--profile-shapes",
        action="store_true",
        help="with --profile: a second table of the operators by input shape (which layer's "
        "convolution or BatchNorm the time goes to)",
    )
    return p.parse_args(argv)


# -- data ----------------------------------------------------------------------------------------
def data_folders(args: argparse.Namespace, cache_dir: Path) -> tuple[Path, str]:
    """(linked train/eval root, description of the data)."""
    root = args.data_root or default_data_root()
    folder = find_class_folder(root, args.domain) if root.is_dir() else None
    if folder is None:
        folder = generate_jpeg_folder(cache_dir / "benchmarks" / "generated-jpegs")
        what = f"generated JPEG folder {folder} (31 classes x 16 images, 300 px; {root / args.domain} absent)"
    else:
        what = f"{folder}"
    return linked_train_eval_folders(folder, cache_dir / "benchmarks"), what


# -- the engine ----------------------------------------------------------------------------------
def measure_engine(args, linked: Path, cache_dir: Path, registry) -> dict:
    total = args.warmup + args.steps
    recipe = make_recipe(
        steps=total,
        batch_size=args.batch_size,
        image_size=args.image_size,
        timing_warmup_steps=args.warmup,
        log_every=total,
        source_holdout=0.0,
        eval_batch_size=max(64, args.batch_size),
    )
    cell = make_cell(
        dataset="image_folder",
        dataset_options={"path": str(linked)},
        source="train",
        target="eval",
        backbone=args.backbone,
        weights=args.weights,
        strategy=args.strategy,
        recipe=recipe,
        registry=registry,
    )
    t0 = time.perf_counter()
    syncs = None
    if args.sync_debug and torch.cuda.is_available():
        with _count_syncs() as syncs:
            record = run_engine_cell(cell, device=args.device, cache_dir=cache_dir, data_root=None, registry=registry)
    else:
        record = run_engine_cell(cell, device=args.device, cache_dir=cache_dir, data_root=None, registry=registry)
    if record.status != "ok":
        raise SystemExit(f"engine cell failed: {record.error}")
    views = registry.get("strategy", args.strategy).target_views
    return {
        "img_per_s": record.train_img_per_s,
        "train_seconds": record.extra["train_seconds"],
        "measured_steps": args.steps,
        "images_per_step": args.batch_size * (1 + len(views)),
        "precision": record.extra["precision"],
        "channels_last": record.extra["channels_last"],
        "deterministic": record.extra["deterministic"],
        "peak_mem_mb": record.peak_mem_mb,
        "train_images": record.extra["train_images"],
        "cell_wall_s": time.perf_counter() - t0,
        **({"synchronising_calls": syncs} if syncs is not None else {}),
    }


def profile_engine(args, linked: Path, cache_dir: Path, registry) -> int:
    """The engine's cell once under torch.profiler: which operators its time goes to (their own time,
    so a convolution's backward is not counted again in its callers)."""
    from torch.profiler import ProfilerActivity, profile

    from tlbench.training.measure import select_device

    cuda = torch.cuda.is_available() and args.device != "cpu"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    sort_by = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    with profile(activities=activities, record_shapes=args.profile_shapes) as prof:
        engine = measure_engine(args, linked, cache_dir, registry)
    table = prof.key_averages().table(sort_by=sort_by, row_limit=args.profile_rows)
    if args.profile_shapes:
        table += "\n# by input shape\n" + prof.key_averages(group_by_input_shape=True).table(
            sort_by=sort_by, row_limit=args.profile_rows, max_shapes_column_width=70
        )
    env = environment(select_device(args.device))
    text = (
        f"# {args.backbone} {args.strategy} {args.image_size}px, {engine['images_per_step']} images/step, "
        f"{args.warmup}+{args.steps} steps, under the profiler: {engine['img_per_s']:.1f} img/s "
        f"({engine['cell_wall_s']:.0f} s the cell); {env['device']}, torch threads {env['torch_threads']}\n"
        f"# command: {' '.join([Path(sys.argv[0]).name] + sys.argv[1:])}\n{table}\n"
    )
    args.profile.write_text(text)
    print(text)
    return 0


@contextlib.contextmanager
def _count_syncs():
    """Yields a dict filled with ``{"file:line": count}`` of the CUDA-synchronising calls made inside.

    The whole cell runs under it (data loading and evaluation too); a line counted at least once
    per step is a sync inside the step loop.
    """
    import warnings

    counts: dict[str, int] = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield counts
        finally:
            torch.cuda.set_sync_debug_mode("default")
    for w in caught:
        if "synchroniz" in str(w.message):
            key = f"{Path(w.filename).name}:{w.lineno}"
            counts[key] = counts.get(key, 0) + 1


# -- the baseline --------------------------------------------------------------------------------
def baseline_model(args, num_classes: int, device: torch.device, memory_format, registry):
    """The engine's architecture (timm backbone + bottleneck + classifier), random weights."""
    from tlbench.training.setup import build_model

    recipe = make_recipe(image_size=args.image_size)
    model, _, _ = build_model(args.backbone, "random", num_classes, recipe, registry)
    return model.to(device, memory_format=memory_format).train()


def timed_loop(steps: int, warmup: int, device: torch.device, step_fn) -> float:
    """Seconds of the steps after ``warmup``, the device synchronised at both ends."""
    from tlbench.training.measure import synchronize

    t0 = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            synchronize(device)
            t0 = time.perf_counter()
        step_fn()
    synchronize(device)
    return time.perf_counter() - t0


def measure_jpeg_baseline(args, linked: Path, device: torch.device, images_per_step: int, registry) -> dict:
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    from tlbench.models.weights import model_data_config

    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # what a careful peer sets too
    dataset = datasets.ImageFolder(str(linked / "train"))
    model = baseline_model(args, len(dataset.classes), device, torch.contiguous_format, registry)
    cfg = model_data_config(model.backbone)
    dataset.transform = transforms.Compose(
        [
            transforms.RandomResizedCrop(args.image_size),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(cfg["mean"], cfg["std"]),
        ]
    )
    if len(dataset) < images_per_step:
        raise SystemExit(f"{linked / 'train'} has {len(dataset)} images, fewer than one batch of {images_per_step}")
    loader = DataLoader(
        dataset,
        batch_size=images_per_step,
        shuffle=True,
        drop_last=True,
        num_workers=args.workers,
        pin_memory=device.type == "cuda",
        persistent_workers=args.workers > 0,
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-3)
    batches = itertools.chain.from_iterable(iter(loader) for _ in itertools.count())

    def step() -> None:
        x, y = next(batches)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    seconds = timed_loop(args.steps, args.warmup, device, step)
    return {
        "kind": "jpeg_dataloader",
        "img_per_s": args.steps * images_per_step / seconds,
        "train_seconds": seconds,
        "images_per_step": images_per_step,
        "workers": args.workers,
        "precision": "fp32",
        "channels_last": False,
        "images": len(dataset),
    }


def measure_memory_baseline(
    args, linked: Path, device: torch.device, images_per_step: int, engine: dict, registry
) -> dict:
    from tlbench.data.class_folders import class_folder_files
    from tlbench.data.domains import decode_image_files
    from tlbench.models.weights import model_data_config
    from tlbench.training.augment import Normalizer, center_crop
    from tlbench.training.schedule import make_optimizer as _make_optimizer

    files = class_folder_files(linked / "train")
    classes = sorted(files)
    paths = [(f, i) for i, c in enumerate(classes) for f in files[c]]
    g = torch.Generator().manual_seed(0)
    pick = torch.randperm(len(paths), generator=g)[: args.memory_images].tolist()
    images, kept, _ = decode_image_files([paths[i][0] for i in pick], args.image_size)
    labels = torch.tensor([paths[pick[k]][1] for k in kept], device=device)
    memory_format = torch.channels_last if engine["channels_last"] else torch.contiguous_format
    model = baseline_model(args, len(classes), device, memory_format, registry)
    cfg = model_data_config(model.backbone)
    pool = Normalizer(cfg["mean"], cfg["std"], device)(center_crop(images.to(device), args.image_size))
    pool = pool.contiguous(memory_format=memory_format)
    optimizer = _make_optimizer([{"params": list(model.parameters())}], make_recipe(image_size=args.image_size), device)
    bf16 = engine["precision"] == "bf16"
    autocast = (
        (lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    )
    gen = torch.Generator(device=device).manual_seed(0)

    def step() -> None:
        idx = torch.randint(0, len(pool), (images_per_step,), generator=gen, device=device)
        x, y = pool[idx], labels[idx]
        with autocast():
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.float().backward()
        optimizer.step()

    seconds = timed_loop(args.steps, args.warmup, device, step)
    return {
        "kind": "preloaded_float_tensors",
        "img_per_s": args.steps * images_per_step / seconds,
        "train_seconds": seconds,
        "images_per_step": images_per_step,
        "precision": engine["precision"],
        "channels_last": engine["channels_last"],
        "images": len(pool),
    }


def _median_run(runs: list[dict]) -> dict:
    """The run with the median img/s (the lower middle one for an even count), all rates attached."""
    ordered = sorted(runs, key=lambda r: r["img_per_s"])
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    chosen["all_img_per_s"] = [r["img_per_s"] for r in runs]
    return chosen


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from tlbench.data.cache import default_cache_dir
    from tlbench.plugins.registry import get_registry
    from tlbench.training.measure import select_device

    device = select_device(args.device)
    cache_dir = args.cache_dir or default_cache_dir()
    registry = get_registry()
    linked, data_desc = data_folders(args, cache_dir)
    if args.profile:
        return profile_engine(args, linked, cache_dir, registry)

    engines, baselines = [], []
    for _ in range(max(1, args.repeat)):
        engines.append(measure_engine(args, linked, cache_dir, registry))
        n = engines[-1]["images_per_step"]
        if args.from_memory:
            baselines.append(measure_memory_baseline(args, linked, device, n, engines[-1], registry))
        else:
            baselines.append(measure_jpeg_baseline(args, linked, device, n, registry))
    engine, baseline = _median_run(engines), _median_run(baselines)
    ratio = engine["img_per_s"] / baseline["img_per_s"]
    result = {
        "benchmark": "step_throughput",
        "backbone": args.backbone,
        "strategy": args.strategy,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "warmup": args.warmup,
        "repeat": args.repeat,
        "data": data_desc,
        "engine": engine,
        "baseline": baseline,
        "engine_over_baseline": ratio,
        "engine_overhead_pct": 100.0 * (1.0 / ratio - 1.0),
        "environment": environment(device),
        "command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
    }
    env = result["environment"]
    print(f"device: {env['device']} (torch threads {env['torch_threads']})")
    print(
        f"{args.backbone} {args.strategy} {args.image_size}px, {n} images/step, {args.steps} steps after "
        f"{args.warmup} warm-up; data: {data_desc}"
    )
    runs = lambda r: f"  runs: {', '.join(f'{x:.1f}' for x in r['all_img_per_s'])}" if args.repeat > 1 else ""
    print(
        f"  engine   : {engine['img_per_s']:10.1f} img/s  ({engine['precision']}, "
        f"channels_last={engine['channels_last']}){runs(engine)}"
    )
    print(
        f"  baseline : {baseline['img_per_s']:10.1f} img/s  ({baseline['kind']}, {baseline['precision']}"
        + (f", {args.workers} workers" if baseline["kind"] == "jpeg_dataloader" else "")
        + ")"
        + runs(baseline)
    )
    if "synchronising_calls" in engine:
        print(f"  CUDA-synchronising calls in the engine's cell (file:line -> count): {engine['synchronising_calls']}")
    print(
        f"  engine / baseline = {ratio:.3f}x"
        + (f"  (engine overhead {result['engine_overhead_pct']:+.1f}%)" if args.from_memory else "")
    )
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
