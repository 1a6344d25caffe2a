"""``freeze`` (or ``unfreeze``) with the frozen-backbone feature cache against recomputing the backbone.

For ``unfreeze`` the cache serves only the head-only phase (the first ``at`` = 30% of steps by
default); the rest trains on images either way, so the whole-cell ratio is what it gains.
Two cells that differ only in the recipe's ``feature_cache`` (true / false), trained one after the
other in this process by ``tlbench.training.engine.train_cell`` on the same data. A short warm-up cell
first loads the domains into the in-process cache, so neither measured cell pays for decoding.
The cached cell starts with an empty disk cache, so it computes its features (every view of every
image) inside its own wall time ("cached"); a third cell, another seed, then reads them from the
disk cache as every later strategy, seed and run does ("cached_warm").

    .venv/bin/python benchmarks/feature_cache.py                       # digits -> inverted digits, 32 px
    .venv/bin/python benchmarks/feature_cache.py --dataset office31 --pair W->D --image-size 224 \\
        --data-root ../shared/datasets --device cuda --json out/feature_cache.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (
    add_run_options,
    default_data_root,
    environment,
    make_cell,
    make_recipe,
    run_engine_cell,
    write_json,
)  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--strategy", default="freeze", choices=["freeze", "unfreeze"])
    p.add_argument("--backbone", default="tf_efficientnet_lite0")
    p.add_argument("--weights", default="random", help="backbone weights (speed does not depend on them)")
    p.add_argument("--dataset", default="sklearn_digits", help="registered dataset name (default sklearn_digits)")
    p.add_argument("--dataset-options", default="{}", help='dataset options as JSON, e.g. {"files": {...}}')
    p.add_argument("--pair", default="digits->digits+invert", help="SOURCE->TARGET (default digits->digits+invert)")
    p.add_argument("--data-root", type=Path, default=None, help="default $TLBENCH_DATA_ROOT or ../shared/datasets")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=100, help="measured steps (after the warm-up)")
    add_run_options(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from tlbench.data.domains import parse_pair
    from tlbench.plugins.registry import get_registry
    from tlbench.training.measure import select_device

    device = select_device(args.device)
    registry = get_registry()
    source, target = parse_pair(args.pair)
    data_root = args.data_root or default_data_root()
    options = json.loads(args.dataset_options)
    total = args.warmup + args.steps

    def cell(feature_cache: bool, steps: int, warmup: int, seed: int = 0):
        recipe = make_recipe(
            steps=steps,
            batch_size=args.batch_size,
            image_size=args.image_size,
            timing_warmup_steps=warmup,
            log_every=steps,
            feature_cache=feature_cache,
            hflip=True,
        )
        return make_cell(
            dataset=args.dataset,
            dataset_options=options,
            source=source,
            target=target,
            backbone=args.backbone,
            weights=args.weights,
            strategy=args.strategy,
            recipe=recipe,
            registry=registry,
            seed=seed,
        )

    disk_cache = Path(tempfile.mkdtemp(prefix="tlbench-feature-cache-"))

    def run(c, cache_dir: Path | None = None) -> tuple[dict, float]:
        t0 = time.perf_counter()
        record = run_engine_cell(c, device=args.device, cache_dir=cache_dir, data_root=data_root, registry=registry)
        wall = time.perf_counter() - t0
        if record.status != "ok":
            raise SystemExit(f"cell failed: {record.error}")
        return record, wall

    run(cell(True, 2, 0))  # loads the domains and imports; not measured
    results = {}
    for name, flag, seed in (("cached", True, 0), ("cached_warm", True, 1), ("recomputed", False, 0)):
        record, wall = run(cell(flag, total, args.warmup, seed), disk_cache if flag else None)
        assert record.extra["feature_cache"] is flag, "the engine did not take the path asked for"
        secs = record.extra["train_seconds"]
        results[name] = {
            "feature_cache": flag,
            "train_seconds": secs,
            "step_ms": 1e3 * secs / args.steps,
            "train_img_per_s": record.train_img_per_s,
            "cell_wall_s": wall,
            "target_acc": record.target_acc,
            "train_images": record.extra["train_images"],
            "feature_cache_steps": record.extra.get("feature_cache_steps"),
        }
    shutil.rmtree(disk_cache, ignore_errors=True)
    c, w, r = results["cached"], results["cached_warm"], results["recomputed"]
    out = {
        "benchmark": "feature_cache",
        "strategy": args.strategy,
        "backbone": args.backbone,
        "pair": args.pair,
        "dataset": args.dataset,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "warmup": args.warmup,
        "cached": c,
        "cached_warm": w,
        "recomputed": r,
        "train_speedup": r["train_seconds"] / c["train_seconds"],
        "total_speedup": r["cell_wall_s"] / c["cell_wall_s"],
        "warm_total_speedup": r["cell_wall_s"] / w["cell_wall_s"],
        "environment": environment(device),
        "command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
    }
    env = out["environment"]
    print(f"device: {env['device']} (torch threads {env['torch_threads']})")
    print(
        f"{args.strategy}, {args.backbone} {args.image_size}px, {args.dataset} {args.pair}, batch {args.batch_size}, "
        f"{args.steps} measured steps after {args.warmup}"
    )
    for name, v in results.items():
        print(
            f"  {name:11s}: step {v['step_ms']:9.2f} ms   train {v['train_seconds']:8.2f} s   "
            f"cell total {v['cell_wall_s']:8.2f} s"
        )
    print(
        f"  speedup: training {out['train_speedup']:.1f}x, cell total {out['total_speedup']:.1f}x with the "
        f"features computed in the cell, {out['warm_total_speedup']:.1f}x read from the disk cache"
    )
    write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
