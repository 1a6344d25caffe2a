"""``kd``: the teacher run on every batch against its logits cached on fixed views (``teacher_views``).

A teacher cell is trained first (short; its accuracy is not the point), then the same student cell
three times in this process by ``tlbench.training.engine.train_cell``: ``teacher_views: 0`` (the teacher's
forward in every step), ``teacher_views: K`` with an empty disk cache (the cell computes the
teacher's logits on K views of every source and target image inside its own wall time), and
``teacher_views: K`` again with another seed (what every later student, seed or run of that
teacher pays: the logits come from the disk cache). Step time excludes the first ``--warmup`` steps.

    .venv/bin/python benchmarks/teacher_views.py                      # digits -> inverted digits, 32 px
    .venv/bin/python benchmarks/teacher_views.py --dataset office31 --pair 'A->W' --image-size 224 \\
        --teacher-backbone resnet50 --data-root ../shared/datasets --device cuda --json out/teacher_views.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import add_run_options, default_data_root, environment, write_json  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--backbone", default="tf_efficientnet_lite0", help="the student's backbone")
    p.add_argument("--teacher-backbone", default="", help="the teacher's backbone (default: the student's)")
    p.add_argument("--weights", default="random", help="backbone weights (speed does not depend on them)")
    p.add_argument("--dataset", default="sklearn_digits")
    p.add_argument("--dataset-options", default="{}", help="dataset options as JSON")
    p.add_argument("--pair", default="digits->digits+invert")
    p.add_argument("--data-root", type=Path, default=None, help="default $TLBENCH_DATA_ROOT or ../shared/datasets")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--views", type=int, default=4, help="K: fixed views per image")
    p.add_argument("--steps", type=int, default=100, help="measured student steps (after the warm-up)")
    p.add_argument("--teacher-steps", type=int, default=20)
    add_run_options(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from tlbench.plugins.registry import get_registry
    from tlbench.spec.cell import CellTask
    from tlbench.spec.loading import load_suite
    from tlbench.spec.plan import plan
    from tlbench.spec.store import ResultsDir
    from tlbench.training.engine import train_cell
    from tlbench.training.measure import select_device

    device = select_device(args.device)
    registry = get_registry()
    data_root = args.data_root or default_data_root()
    work = Path(tempfile.mkdtemp(prefix="tlbench-teacher-views-"))
    small = args.image_size < 64
    recipe = {
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "timing_warmup_steps": args.warmup,
        "log_every": 1000,
        "hflip": not small,
        "source_holdout": 0,
    }
    if small:
        recipe.update(resize_size=args.image_size + args.image_size // 8, crop_scale=[0.6, 1.0])
    params = {"teacher_strategy": "source_only", "teacher_backbone": args.teacher_backbone, "teacher_views": args.views}
    suite_doc = {
        "name": "teacher_views",
        "dataset": args.dataset,
        "dataset_options": json.loads(args.dataset_options),
        "pairs": [args.pair],
        "backbones": [
            {"name": b, "weights": args.weights}
            for b in dict.fromkeys([args.backbone, args.teacher_backbone or args.backbone])
        ],
        "strategies": [{"name": "kd", "params": params}],
        "seeds": [0],
        "recipe": {**recipe, "steps": args.warmup + args.steps},
        "data_root": str(data_root),
    }
    (work / "suite.yaml").write_text(json.dumps(suite_doc))  # JSON is YAML
    cells = plan(load_suite(work / "suite.yaml"), registry).cells
    teacher = next(c for c in cells if c.strategy != "kd")
    student = next(c for c in cells if c.strategy == "kd" and c.backbone == args.backbone)

    def run(cell, *, save_model=False, teacher_model=None):
        task = CellTask(
            cell=cell,
            out_dir=str(work / "out"),
            data_root=str(data_root),
            cache_dir=str(work / "cache"),
            device=args.device,
            show_progress=False,
            save_model=save_model,
            teacher_model=teacher_model,
        )
        t0 = time.perf_counter()
        record = train_cell(task, registry)
        return record, time.perf_counter() - t0

    teacher = dataclasses.replace(teacher, recipe=teacher.recipe.model_copy(update={"steps": args.teacher_steps}))
    run(teacher, save_model=True)  # also loads the domains into the in-process cache: not measured
    model_path = str(ResultsDir(work / "out").model_path(teacher.id))
    student = dataclasses.replace(student, teacher=teacher)

    results = {}
    for name, views, seed in (("online", 0, 0), ("cached_cold", args.views, 0), ("cached_warm", args.views, 1)):
        cell = dataclasses.replace(student, seed=seed, params={**student.params, "teacher_views": views})
        record, wall = run(cell, teacher_model=model_path)
        if record.extra.get("teacher_views") != views:
            raise SystemExit("the engine did not take the path asked for")
        secs = record.extra["train_seconds"]
        results[name] = {
            "teacher_views": views,
            "seed": seed,
            "train_seconds": secs,
            "step_ms": 1e3 * secs / args.steps,
            "train_img_per_s": record.train_img_per_s,
            "cell_wall_s": wall,
            "target_acc": record.target_acc,
        }
    on, cold, warm = results["online"], results["cached_cold"], results["cached_warm"]
    out = {
        "benchmark": "teacher_views",
        "backbone": args.backbone,
        "teacher_backbone": args.teacher_backbone or args.backbone,
        "pair": args.pair,
        "dataset": args.dataset,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "views": args.views,
        "steps": args.steps,
        "warmup": args.warmup,
        **results,
        "step_speedup": on["train_seconds"] / warm["train_seconds"],
        "cold_cell_speedup": on["cell_wall_s"] / cold["cell_wall_s"],
        "warm_cell_speedup": on["cell_wall_s"] / warm["cell_wall_s"],
        "environment": environment(device),
        "command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
    }
    env = out["environment"]
    print(f"device: {env['device']} (torch threads {env['torch_threads']})")
    print(
        f"kd, student {args.backbone}, teacher {out['teacher_backbone']}, {args.image_size}px, {args.dataset} "
        f"{args.pair}, batch {args.batch_size} per domain, {args.steps} measured steps after {args.warmup}, "
        f"K = {args.views}"
    )
    for name, v in results.items():
        print(f"  {name:12s}: step {v['step_ms']:8.2f} ms   cell total {v['cell_wall_s']:8.2f} s")
    print(
        f"  speedup: step {out['step_speedup']:.2f}x, cell total {out['cold_cell_speedup']:.2f}x cold cache, "
        f"{out['warm_cell_speedup']:.2f}x warm"
    )
    write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
