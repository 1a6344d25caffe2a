"""What checkpoint evaluations cost: the same cells with recipe.eval_points = 1 and = K, alternating.

Issue 16's budget: five checkpoints add at most 10 % to a cell's wall time. Each chosen cell of a suite
is trained in both arms, alternating ``--repeats`` times; the figure is the median wall time of a cell
per arm and their ratio (the last checkpoint's accuracy is checked equal in both arms: evaluations
must not change training), plus the size of the stored evaluations.

    python benchmarks/eval_points_overhead.py suites/digits.yaml --data-root ../shared/datasets \\
        --pairs mnist->usps --strategies source_only,dann --points 5 --repeats 3

Run it on a quiet machine. Prints a JSON summary (and writes it with ``--json``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _cells(args, registry):
    from bench_common import teacherless_cells

    overrides = [f"recipe.steps={args.steps}"] if args.steps else []
    return teacherless_cells(
        args.suite,
        registry,
        pairs=args.pairs,
        strategies=args.strategies,
        seeds=[0],
        data_root=args.data_root,
        overrides=overrides,
    )


def _train(cell, points: int, suite, cache: Path, registry):
    from tlbench.spec.cell import CellTask
    from tlbench.training.engine import train_cell

    cell = dataclasses.replace(cell, recipe=cell.recipe.model_copy(update={"eval_points": points}))
    task = CellTask(
        cell=cell,
        out_dir=str(cache / "out"),
        data_root=suite.data_root,
        cache_dir=str(cache),
        device="cpu",
        show_progress=False,
    )
    t0 = time.perf_counter()
    record = train_cell(task, registry)
    return record, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("suite")
    p.add_argument("--data-root")
    p.add_argument("--pairs", type=lambda s: s.split(","))
    p.add_argument("--strategies", type=lambda s: s.split(","))
    p.add_argument("--points", type=int, default=5)
    p.add_argument("--steps", type=int, help="override recipe.steps (a smoke test)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)

    from tlbench.plugins.registry import get_registry

    registry = get_registry()
    cells, suite = _cells(args, registry)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp)
        _train(cells[0], 1, suite, cache, registry)  # warm the domain cache and the allocator
        for cell in cells:
            times: dict[int, list[float]] = {1: [], args.points: []}
            accs: dict[int, float] = {}
            size = 0
            for _ in range(args.repeats):
                for points in (1, args.points):
                    record, seconds = _train(cell, points, suite, cache, registry)
                    times[points].append(seconds)
                    accs[points] = record.target_acc
                    if points == args.points:
                        size = len(record.evaluations.to_bytes())
            base, with_points = statistics.median(times[1]), statistics.median(times[args.points])
            rows.append(
                {
                    "cell": cell.describe(),
                    "steps": int(cell.recipe.steps),
                    "wall_s_1": base,
                    f"wall_s_{args.points}": with_points,
                    "overhead_pct": 100 * (with_points / base - 1),
                    "same_final_accuracy": accs[1] == accs[args.points],
                    "evaluations_bytes": size,
                }
            )
    summary = {
        "points": args.points,
        "repeats": args.repeats,
        "cells": rows,
        "max_overhead_pct": max(r["overhead_pct"] for r in rows),
    }
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0 if all(r["same_final_accuracy"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
