"""What the harness costs a training step, in one process: the engine's step loop on a real cell against
the same loop served one batch again and again (issue 17).

A bare loop in another process is not a fair bound: two processes differ in their memory, their
threads and the machine's moment. Here every arm runs in one process, on one model, alternating
``--rounds`` times, on the first cell the suite plans (its pair, backbone, strategy and recipe):

  engine   ``tlbench.training.loop.run_steps`` as the engine calls it: a new augmented batch each step
           from the cell's ``BatchSource``, the strategy's loss, backward, the optimizer step and the
           observers that watch every step (the non-finite check, the curves);
  reused   the same loop, served the first batch at every step: engine minus reused is what serving
           the batches costs (cropping, flipping, normalising two views a step);
  batches  ``BatchSource.batch`` alone, as many steps: the serving's own time, without training.

A first round, not measured, touches the memory every arm needs. Then each round runs each arm's
``--warmup`` unmeasured steps and ``--steps`` timed ones (device synchronised); the figure of an arm is its
median over the rounds. The default, one step an arm a round over many rounds, interleaves the arms
step by step, so that a slow spell of the machine (on a shared VM, tens of percent for minutes) falls on
all of them alike. Training goes on from arm to arm (speed does not depend on the weights). Per arm
it also reports the process's user and system CPU seconds a step. Like the ``tlbench`` command, it
starts itself again under tlbench's CPU runtime (allocator and waits, :mod:`tlbench.runtime`;
``TLBENCH_CPU_RUNTIME=off`` measures without). Run it alone on the machine::

    .venv/bin/python benchmarks/harness_cost.py suites/office31.yaml --data-root ../shared/datasets \\
        --pairs 'A->W' --backbones tf_efficientnet_lite0 --strategies dann --rounds 16
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
from pathlib import Path

if __name__ == "__main__":  # before torch loads, as the tlbench command does
    from tlbench.runtime import reexec_with_settings

    reexec_with_settings(list(sys.orig_argv[1:]))

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import environment, teacherless_cells, write_json  # noqa: E402


def plan_cell(args, registry):
    """The first cell the narrowed suite plans that trains without a teacher."""
    split = lambda s: s.split(",") if s else None
    cells, suite = teacherless_cells(
        args.suite,
        registry,
        pairs=split(args.pairs),
        strategies=split(args.strategies),
        backbones=split(args.backbones),
        seeds=[0],
        data_root=args.data_root,
        overrides=args.set,
    )
    if not cells:
        raise SystemExit("the narrowed suite plans no cell without a teacher; narrow it to a strategy such as dann")
    return cells[0], suite


class CellSteps:
    """The cell's training pieces, built as ``tlbench.training.engine.train_cell`` builds them."""

    def __init__(self, task, registry, device: torch.device):
        from tlbench.training.batches import BatchSource
        from tlbench.training.curves import CurveRecorder
        from tlbench.training.evaluation import PseudoLabelAudit
        from tlbench.training.frozen import prepare_frozen_outputs
        from tlbench.training.loop import NonFiniteCheck
        from tlbench.training.setup import set_up_cell
        from tlbench.training.strategy import StepContext

        self.setup = setup = set_up_cell(task, registry, device)
        self.device = device
        data = setup.data
        g = torch.Generator(device=device).manual_seed(task.cell.seed)
        src_images, src_labels = data.source_train.images.to(device), data.source_train.labels.to(device)
        pool_images = data.served_target.images.to(device)
        frozen = prepare_frozen_outputs(setup, setup.schedule, src_images, pool_images, None, None)
        if frozen.feature_steps:
            raise SystemExit(
                f"{task.cell.strategy} first trains on cached features of a frozen backbone; "
                f"measure a strategy that trains the backbone from its first step"
            )
        self.batches = BatchSource.build(
            src_images,
            src_labels,
            pool_images,
            frozen,
            target_views=type(setup.strategy).target_views,
            augmenter=setup.augmenter,
            recipe=setup.recipe,
            g=g,
        )
        self.ctx = StepContext(
            step=0,
            total_steps=setup.total_steps,
            model=setup.model,
            device=device,
            num_classes=data.num_classes,
            teacher=setup.teacher,
            score_pseudo_labels=PseudoLabelAudit(data.served_target.labels.to(device)),
        )
        self.observers = [NonFiniteCheck(device), CurveRecorder(setup.schedule)]
        self.reused = ReusedBatch(self.batches.batch(0), self.batches.images_per_step)

    def train(self, batches, steps: int, warmup: int) -> float:
        """img/s of ``steps`` engine steps after ``warmup`` (the engine's own loop and clock)."""
        from tlbench.training.loop import run_steps

        timing = run_steps(
            self.setup.strategy,
            self.setup.schedule,
            batches,
            self.ctx,
            self.setup.autocast,
            self.observers,
            total_steps=warmup + steps,
            log_every=warmup + steps,
            warmup_steps=warmup,
            device=self.device,
        )
        return timing.images_per_second

    def serve(self, steps: int, warmup: int) -> float:
        """img/s of serving ``steps`` batches after ``warmup``, without training."""
        from tlbench.training.measure import Stopwatch

        for step in range(warmup):
            self.batches.batch(step)
        watch = Stopwatch(self.device)
        watch.start()
        for step in range(warmup, warmup + steps):
            self.batches.batch(step)
        return steps * self.batches.images_per_step / watch.stop()


class ReusedBatch:
    """A batch source that serves one batch at every step."""

    def __init__(self, batch, images_per_step: int):
        self._batch, self.images_per_step = batch, images_per_step

    def batch(self, step: int):
        return self._batch


def cpu_seconds() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def measure(cell: CellSteps, args) -> dict:
    arms = {
        "engine": lambda: cell.train(cell.batches, args.steps, args.warmup),
        "reused": lambda: cell.train(cell.reused, args.steps, args.warmup),
        "batches": lambda: cell.serve(args.steps, args.warmup),
    }
    for arm in arms.values():  # not measured: first touches of the memory, the allocator's first blocks
        arm()
    rates: dict[str, list[float]] = {name: [] for name in arms}
    cpu: dict[str, list[tuple[float, float]]] = {name: [] for name in arms}
    for r in range(args.rounds):
        for name, arm in arms.items():
            before = cpu_seconds()
            rates[name].append(arm())
            after = cpu_seconds()
            steps = args.steps + args.warmup
            cpu[name].append(((after[0] - before[0]) / steps, (after[1] - before[1]) / steps))
        print(f"round {r + 1}: " + ", ".join(f"{n} {v[-1]:.2f} img/s" for n, v in rates.items()), flush=True)
    out = {
        name: {
            "img_per_s": statistics.median(v),
            "rounds": v,
            "user_s_per_step": statistics.median(u for u, _ in cpu[name]),
            "sys_s_per_step": statistics.median(s for _, s in cpu[name]),
        }
        for name, v in rates.items()
    }
    engine, reused = out["engine"]["img_per_s"], out["reused"]["img_per_s"]
    step_s = {name: cell.batches.images_per_step / out[name]["img_per_s"] for name in out}
    out["serving_share_of_step"] = (step_s["engine"] - step_s["reused"]) / step_s["engine"]
    out["engine_over_reused"] = engine / reused
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("suite", help="a suite file; its first cell (after narrowing) is measured")
    p.add_argument("--data-root")
    p.add_argument("--pairs", help="narrow the suite (comma-separated), as tlbench run --pairs")
    p.add_argument("--backbones")
    p.add_argument("--strategies")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, as tlbench run --set")
    p.add_argument("--steps", type=int, default=1, help="timed steps of each arm a round (default 1)")
    p.add_argument("--warmup", type=int, default=0, help="unmeasured steps of each arm before them (default 0)")
    p.add_argument("--rounds", type=int, default=16, help="alternating rounds (default 16)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--cache-dir", help="tlbench's cache (default $TLBENCH_CACHE or ~/.cache/tlbench)")
    p.add_argument("--json", help="write the figures to this JSON file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from tlbench import runtime
    from tlbench.data.cache import default_cache_dir
    from tlbench.plugins.registry import get_registry
    from tlbench.spec.cell import CellTask
    from tlbench.training.measure import select_device

    registry = get_registry()
    device = select_device(args.device)
    cell_def, suite = plan_cell(args, registry)
    task = CellTask(
        cell=cell_def,
        out_dir=".",
        data_root=suite.data_root,
        cache_dir=str(args.cache_dir or default_cache_dir()),
        device=str(device),
        show_progress=False,
    )
    cell = CellSteps(task, registry, device)
    print(
        f"{cell_def.describe()}: {cell.batches.images_per_step} images a step, {args.warmup} + {args.steps} "
        f"steps an arm, {args.rounds} rounds",
        flush=True,
    )
    result = {
        "benchmark": "harness_cost",
        "cell": cell_def.describe(),
        "recipe": cell_def.recipe.model_dump(mode="json"),
        "steps": args.steps,
        "warmup": args.warmup,
        "rounds": args.rounds,
        "images_per_step": cell.batches.images_per_step,
        **measure(cell, args),
        "cpu_runtime": runtime.describe_runtime() if device.type == "cpu" else None,
        "environment": environment(device),
        "command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
    }
    print(
        f"engine {result['engine']['img_per_s']:.2f} img/s, reused batch {result['reused']['img_per_s']:.2f}, "
        f"serving alone {result['batches']['img_per_s']:.1f}: serving is "
        f"{100 * result['serving_share_of_step']:.1f} % of the engine's step",
        flush=True,
    )
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
