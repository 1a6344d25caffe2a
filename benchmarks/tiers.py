"""What each tier of "what trains" costs: the same strategy and pair at every tier, in one process.

Issue 36's tiers, for ``source_only`` (the fine-tuning recipe) on one pair: the frozen backbone served
from the feature cache (``trainable: head``), the same recomputing the backbone every step
(``feature_cache: false``), the top K stages (``top1``, ``top2``), BitFit (biases), LoRA (peft adapters)
and everything (``all``). Each arm is one cell trained by ``tlbench.training.engine.train_cell`` with the
harness's own timing (warm-up steps excluded, device synchronised); a short cell first loads the domains
and a frozen-backbone cell fills the disk cache, so no measured cell pays for decoding or for computing
the cached features (which every later strategy, seed and run reuses).

    .venv/bin/python benchmarks/tiers.py                                     # digits -> inverted digits, 32 px
    .venv/bin/python benchmarks/tiers.py --dataset office31 --pair A->W --image-size 224 \\
        --weights auto --data-root ../shared/datasets --steps 30 --json out/tiers.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (  # noqa: E402  (benchmarks/ is not a package)
    add_run_options,
    default_data_root,
    environment,
    make_cell,
    make_recipe,
    run_engine_cell,
    write_json,
)

#: (arm, strategy, recipe keys): the tiers from the cheapest step to the dearest
ARMS: tuple[tuple[str, str, dict], ...] = (
    ("head (cached features)", "source_only", {"trainable": "head"}),
    ("head (recomputed)", "source_only", {"trainable": "head", "feature_cache": False}),
    ("top1", "source_only", {"trainable": "top1"}),
    ("top2", "source_only", {"trainable": "top2"}),
    ("bitfit", "bitfit", {}),
    ("lora", "lora", {}),
    ("all", "source_only", {}),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--backbone", default="tf_efficientnet_lite0")
    p.add_argument("--weights", default="random", help="backbone weights (speed does not depend on them)")
    p.add_argument("--dataset", default="sklearn_digits", help="registered dataset name (default sklearn_digits)")
    p.add_argument("--dataset-options", default="{}", help='dataset options as JSON, e.g. {"files": {...}}')
    p.add_argument("--pair", default="digits->digits+invert", help="SOURCE->TARGET (default digits->digits+invert)")
    p.add_argument("--data-root", type=Path, default=None, help="default $TLBENCH_DATA_ROOT or ../shared/datasets")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=50, help="measured steps (after the warm-up)")
    p.add_argument("--arms", default=None, help="comma-separated arm names (default: every arm)")
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
    wanted = set(args.arms.split(",")) if args.arms else None
    arms = [a for a in ARMS if wanted is None or a[0] in wanted]
    disk_cache = Path(tempfile.mkdtemp(prefix="tlbench-tiers-"))

    def cell(strategy: str, keys: dict, steps: int, warmup: int):
        recipe = make_recipe(
            steps=steps,
            batch_size=args.batch_size,
            image_size=args.image_size,
            timing_warmup_steps=warmup,
            log_every=steps,
            **keys,
        )
        return make_cell(
            dataset=args.dataset,
            dataset_options=options,
            source=source,
            target=target,
            backbone=args.backbone,
            weights=args.weights,
            strategy=strategy,
            recipe=recipe,
            registry=registry,
        )

    def run(c):
        record = run_engine_cell(c, device=args.device, cache_dir=disk_cache, data_root=data_root, registry=registry)
        if record.status != "ok":
            raise SystemExit(f"cell failed: {record.error}")
        return record

    run(cell("source_only", {"trainable": "head"}, 2, 0))  # decodes the domains, fills the feature cache
    results = {}
    for name, strategy, keys in arms:
        record = run(cell(strategy, keys, args.warmup + args.steps, args.warmup))
        results[name] = {
            "strategy": strategy,
            "recipe": keys,
            "feature_cache": record.extra["feature_cache"],
            "train_img_per_s": record.train_img_per_s,
            "step_ms": 1e3 * record.extra["train_seconds"] / args.steps,
            "trainable_params": record.trainable_params,
            "total_params": record.total_params,
            "cell_wall_s": record.wall_s,
            "peak_mem_mb": record.peak_mem_mb,
        }
    shutil.rmtree(disk_cache, ignore_errors=True)
    full = results.get("all", {}).get("train_img_per_s")
    out = {
        "benchmark": "tiers",
        "backbone": args.backbone,
        "pair": args.pair,
        "dataset": args.dataset,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "warmup": args.warmup,
        "arms": results,
        "environment": environment(device),
        "command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
    }
    env = out["environment"]
    print(f"device: {env['device']} (torch threads {env['torch_threads']})")
    print(
        f"source_only's tiers, {args.backbone} {args.image_size}px, {args.dataset} {args.pair}, "
        f"batch {args.batch_size}, {args.steps} measured steps after {args.warmup}"
    )
    for name, v in results.items():
        ratio = f"   {v['train_img_per_s'] / full:7.1f}x all" if full else ""
        print(
            f"  {name:22s}: {v['train_img_per_s']:9.1f} img/s  step {v['step_ms']:8.1f} ms  "
            f"trainable {v['trainable_params']:>10,} of {v['total_params']:>10,}{ratio}"
        )
    write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
