"""``freeze`` with the frozen-backbone feature cache against recomputing the backbone every step.

Two cells that differ only in the recipe's ``feature_cache`` (true / false), trained one after the
other in this process by ``tlbench.engine.train_cell`` on the same data. A short warm-up cell
first loads the domains into the in-process cache, so neither measured cell pays for decoding.
No disk cache is used: the cached cell computes its features (every view of every image) inside
its own wall time, which is what "total" compares.

    .venv/bin/python benchmarks/feature_cache.py                       # digits -> inverted digits, 32 px
    .venv/bin/python benchmarks/feature_cache.py --dataset office31 --pair W->D --image-size 224 \\
        --data-root ../shared/datasets --device cuda --json out/feature_cache.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import default_data_root, environment, make_cell, make_recipe, run_engine_cell, write_json  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="tf_efficientnet_lite0")
    p.add_argument("--weights", default="random", help="backbone weights (speed does not depend on them)")
    p.add_argument("--dataset", default="sklearn_digits", help="registered dataset name (default sklearn_digits)")
    p.add_argument("--dataset-options", default="{}", help='dataset options as JSON, e.g. {"files": {...}}')
    p.add_argument("--pair", default="digits->digits+invert", help="SOURCE->TARGET (default digits->digits+invert)")
    p.add_argument("--data-root", type=Path, default=None, help="default $TLBENCH_DATA_ROOT or ../shared/datasets")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=100, help="measured steps (after the warm-up)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--json", default=None, help="write the figures to this JSON file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from tlbench.data import parse_pair
    from tlbench.measure import select_device
    from tlbench.registry import get_registry

    device = select_device(args.device)
    registry = get_registry()
    source, target = parse_pair(args.pair)
    data_root = args.data_root or default_data_root()
    options = json.loads(args.dataset_options)
    total = args.warmup + args.steps

    def cell(feature_cache: bool, steps: int, warmup: int):
        recipe = make_recipe(steps=steps, batch_size=args.batch_size, image_size=args.image_size,
                             timing_warmup_steps=warmup, log_every=steps, feature_cache=feature_cache,
                             hflip=True)
        return make_cell(dataset=args.dataset, dataset_options=options, source=source, target=target,
                         backbone=args.backbone, weights=args.weights, strategy="freeze", recipe=recipe,
                         registry=registry)

    def run(c) -> tuple[dict, float]:
        t0 = time.perf_counter()
        record = run_engine_cell(c, device=args.device, cache_dir=None, data_root=data_root, registry=registry)
        wall = time.perf_counter() - t0
        if record.status != "ok":
            raise SystemExit(f"cell failed: {record.error}")
        return record, wall

    run(cell(True, 2, 0))  # loads the domains and imports; not measured
    results = {}
    for name, flag in (("cached", True), ("recomputed", False)):
        record, wall = run(cell(flag, total, args.warmup))
        assert record.extra["feature_cache"] is flag, "the engine did not take the path asked for"
        secs = record.extra["train_seconds"]
        results[name] = {"feature_cache": flag, "train_seconds": secs, "step_ms": 1e3 * secs / args.steps,
                         "train_img_per_s": record.train_img_per_s, "cell_wall_s": wall,
                         "target_acc": record.target_acc, "train_images": record.extra["train_images"]}
    c, r = results["cached"], results["recomputed"]
    out = {"benchmark": "feature_cache", "backbone": args.backbone, "pair": args.pair, "dataset": args.dataset,
           "image_size": args.image_size, "batch_size": args.batch_size, "steps": args.steps, "warmup": args.warmup,
           "cached": c, "recomputed": r, "train_speedup": r["train_seconds"] / c["train_seconds"],
           "total_speedup": r["cell_wall_s"] / c["cell_wall_s"], "environment": environment(device),
           "command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:]))}
    env = out["environment"]
    print(f"device: {env['device']} (torch threads {env['torch_threads']})")
    print(f"freeze, {args.backbone} {args.image_size}px, {args.dataset} {args.pair}, batch {args.batch_size}, "
          f"{args.steps} measured steps after {args.warmup}")
    for name, v in results.items():
        print(f"  {name:10s}: step {v['step_ms']:9.2f} ms   train {v['train_seconds']:8.2f} s   "
              f"cell total {v['cell_wall_s']:8.2f} s")
    print(f"  speedup: training {out['train_speedup']:.1f}x, cell total {out['total_speedup']:.1f}x")
    write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
