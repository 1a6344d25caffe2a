"""What training curves and trackers cost: the same cells with and without them, alternating.

(a) curves: each chosen cell of a suite is trained with the engine's ``CurveRecorder`` and, in the
    other arm, with an observer that does nothing in its place, alternating arms ``--repeats`` times;
    the figure is the median wall time of a cell, per arm (the cell's numbers are checked equal).
(b) trackers: the finished records are sent through the TensorBoard and MLflow trackers as the
    runner does, in the driver, and the time of each ``log_cell`` is set against the cells' wall time.

    python benchmarks/curves_overhead.py suites/digits.yaml --data-root ../shared/datasets \\
        --pairs mnist->usps --strategies source_only,dann --repeats 3

Run it on a quiet machine. Prints a JSON summary (and writes it with ``--json``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _cells(args, registry):
    from bench_common import teacherless_cells

    return teacherless_cells(
        args.suite, registry, pairs=args.pairs, strategies=args.strategies, seeds=[0], data_root=args.data_root
    )


def _train(cell, suite, cache: Path, registry, curves: bool):
    import tlbench.training.engine as engine
    from tlbench.spec.cell import CellTask
    from tlbench.training.curves import Curves
    from tlbench.training.loop import StepObserver

    class NoCurves(StepObserver):
        """In the recorder's place: observes nothing, records nothing."""

        def __init__(self, schedule):
            self.curves = Curves()

        def means(self, steps: int) -> dict[str, float]:
            return {}

    saved = engine.CurveRecorder
    if not curves:
        engine.CurveRecorder = NoCurves
    try:
        task = CellTask(
            cell=cell,
            out_dir=str(cache / "out"),
            data_root=suite.data_root,
            cache_dir=str(cache),
            device="cpu",
            show_progress=False,
        )
        t0 = time.perf_counter()
        record = engine.train_cell(task, registry)
        return record, time.perf_counter() - t0
    finally:
        engine.CurveRecorder = saved


def measure_curves(cells, suite, cache: Path, registry, repeats: int) -> tuple[dict, list]:
    walls: dict[str, list[float]] = {"with": [], "without": []}
    records = []
    for cell in cells:
        _train(cell, suite, cache, registry, curves=True)  # warm-up: data decoded, caches filled
        per = {"with": [], "without": []}
        for _ in range(repeats):
            for arm in ("without", "with"):
                record, wall = _train(cell, suite, cache, registry, curves=arm == "with")
                per[arm].append(wall)
                if arm == "with":
                    with_record = record
                else:
                    without_record = record
            if (with_record.target_acc, with_record.source_acc) != (
                without_record.target_acc,
                without_record.source_acc,
            ):
                raise SystemExit(f"{cell.describe()}: curves changed the result")
        records.append((cell, with_record))
        for arm in per:
            walls[arm].append(statistics.median(per[arm]))
    total = {arm: sum(v) for arm, v in walls.items()}
    return {
        "cells": len(cells),
        "repeats": repeats,
        "median_cell_wall_s": walls,
        "curves_overhead": total["with"] / total["without"] - 1.0,
    }, records


def measure_trackers(records, suite_name: str, registry) -> dict:
    out = {}
    with tempfile.TemporaryDirectory(prefix="tlbench-trackers-") as tmp:
        for name in ("tensorboard", "mlflow"):
            tracker = registry.get("tracker", name)(Path(tmp) / name, {"name": suite_name})
            seconds = []
            for cell, record in records:
                t0 = time.perf_counter()
                tracker.log_cell(cell, record)
                seconds.append(time.perf_counter() - t0)
            tracker.close()
            out[name] = {
                "log_cell_s_median": statistics.median(seconds),
                "share_of_cell_wall": sum(seconds) / sum(r.wall_s for _, r in records),
            }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("suite")
    p.add_argument("--data-root")
    p.add_argument("--pairs", type=lambda s: s.split(","))
    p.add_argument("--strategies", type=lambda s: s.split(","))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json")
    args = p.parse_args(argv)
    import torch
    from bench_common import environment, write_json

    from tlbench.plugins.registry import get_registry

    if args.threads:
        torch.set_num_threads(args.threads)
    registry = get_registry()
    cells, suite = _cells(args, registry)
    with tempfile.TemporaryDirectory(prefix="tlbench-curves-") as tmp:
        curves, records = measure_curves(cells, suite, Path(tmp), registry, args.repeats)
    summary = {
        "environment": environment(torch.device("cpu")),
        "suite": suite.name,
        "curves": curves,
        "trackers": measure_trackers(records, suite.name, registry),
    }
    print(json.dumps(summary, indent=2))
    write_json(args.json, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
