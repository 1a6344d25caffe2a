"""The step loop, the engine's third phase, and its step observers.

One step: the schedule lets due groups join and sets learning rates, the batch source serves the
batch, the strategy returns its loss (under autocast), the engine steps the optimizer; a strategy
with several updates a step (MCD, ADDA) yields them one by one, and each gets its own backward and
optimizer step over the groups it names. Everything
that watches training is a :class:`StepObserver`: it sees every step's output without forcing a
host synchronisation, and is asked at logging points (every ``log_every`` steps and the last),
the only places the loop waits on the device. New observers (curves, checkpoint evaluations) go
here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from tlbench.errors import DivergedError, UserError
from tlbench.training.measure import Stopwatch
from tlbench.training.schedule import ParamSchedule
from tlbench.training.strategy import Batch, StepContext, StepOutput, Strategy, Update


class StepObserver:
    """Watches the loop. ``after_step`` must not synchronise with the device; ``at_log_point`` may."""

    def before_step(self, step: int) -> None:
        """Before ``step``'s batch is served (a whole-target pass a strategy asked for, ``refresh``)."""

    def after_step(self, step: int, loss: Tensor, out: StepOutput) -> None:
        """After the optimizer step of ``step``; ``loss`` is the float32 loss that was minimised."""

    def untimed_at(self, step: int) -> bool:
        """Whether ``after_step`` of ``step`` does work that is not training (a checkpoint evaluation):
        the loop then runs it with the clock paused, so training throughput stays what training cost."""
        return False

    def at_log_point(self, step: int, loss: Tensor) -> None:
        """After ``step`` when it is a logging point (may read values off the device, or raise)."""

    def close(self) -> None:
        """After the last step, or when the loop ends early."""


class NonFiniteCheck(StepObserver):
    """Remembers the first step whose loss was not finite, on the device; raises at the next
    logging point (so a diverged cell stops within ``log_every`` steps and says where it went)."""

    def __init__(self, device: torch.device):
        self.bad_step = torch.full((), -1, dtype=torch.long, device=device)
        self.bad_value = torch.zeros((), device=device)

    def after_step(self, step: int, loss: Tensor, out: StepOutput) -> None:
        first_bad = (self.bad_step < 0) & ~torch.isfinite(loss)  # stays on the device: no sync here
        self.bad_value = torch.where(first_bad, loss.detach(), self.bad_value)
        self.bad_step = torch.where(first_bad, step, self.bad_step)

    def at_log_point(self, step: int, loss: Tensor) -> None:
        if self.bad_step.item() >= 0:
            raise DivergedError(int(self.bad_step.item()), float(self.bad_value.item()))


class ProgressBar(StepObserver):
    """A tqdm bar per cell, updated at logging points with the current loss."""

    def __init__(self, total: int, description: str):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc=description, unit="step", leave=False, dynamic_ncols=True)

    def at_log_point(self, step: int, loss: Tensor) -> None:
        self.bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        self.bar.update(step + 1 - self.bar.n)

    def close(self) -> None:
        self.bar.close()


def apply_updates(updates: Iterator[Update], schedule: ParamSchedule, autocast: Any) -> tuple[Tensor, StepOutput]:
    """Run one step's updates, each its own backward and optimizer step over the groups it names.

    The strategy's code runs under autocast, the backward outside it (float32 loss). Returns what
    the observers see: the float32 sum of the updates' losses (non-finite when any is) and one
    :class:`StepOutput` carrying every update's metrics, plus ``loss/<name>`` per named update when
    there are several (a later update's metric replaces an earlier one of the same name), and the
    first update's test-time predictions. An update over no group (``groups == ()``) moves nothing:
    its loss is logged, never backpropagated.
    """
    losses: list[Tensor] = []
    metrics: dict[str, Tensor | float] = {}
    named: dict[str, Tensor] = {}
    predictions: Tensor | None = None
    while True:
        with autocast():
            update = next(updates, None)
        if update is None:
            break
        loss = update.loss.float()
        if predictions is None:
            predictions = update.predictions
        if update.groups == ():  # moves nothing by design (BN-adapt): no backward, no optimizer step
            losses.append(loss.detach())
            metrics.update(update.metrics)
            continue
        if not schedule.trains_any(update.groups):
            raise UserError(
                f"strategy {schedule.strategy_name!r}: its update {update.name or '(unnamed)'!r} trains only "
                f"{', '.join(update.groups or ())}, which recipe.trainable: {schedule.recipe.trainable} freezes, "
                "so the method cannot run at this tier; leave trainable at all for it, or train part of the "
                "backbone (top1, top2, ...)"
            )
        schedule.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        schedule.step(update.groups)
        losses.append(loss)
        metrics.update(update.metrics)
        if update.name:
            named[f"loss/{update.name}"] = loss.detach()
    if not losses:
        raise RuntimeError(f"strategy {schedule.strategy_name!r}: training_updates yielded no update")
    total = losses[0] if len(losses) == 1 else torch.stack(losses).sum()
    if len(losses) > 1:
        metrics.update(named)
    return total, StepOutput(total, metrics, predictions)


@dataclass
class LoopTiming:
    """Training time of the steps after the warm-up, device synchronised."""

    seconds: float
    measured_steps: int
    images_per_step: int

    @property
    def images_per_second(self) -> float:
        return self.measured_steps * self.images_per_step / max(self.seconds, 1e-9)


class BatchServer(Protocol):
    """What serves the step loop its batches: :class:`BatchSource`, or a test-time cell's stream."""

    def batch(self, step: int) -> Batch: ...

    @property
    def images_per_step(self) -> int: ...


def run_steps(
    strategy: Strategy,
    schedule: ParamSchedule,
    batches: BatchServer,
    ctx: StepContext,
    autocast: Any,
    observers: list[StepObserver],
    *,
    total_steps: int,
    log_every: int,
    warmup_steps: int,
    device: torch.device,
) -> LoopTiming:
    """Train ``total_steps`` steps; the clock starts after ``warmup_steps`` (at most all but one)."""
    warmup = min(warmup_steps, max(0, total_steps - 1))
    watch = Stopwatch(device)
    try:
        for step in range(total_steps):
            if step == warmup:
                watch.start()
            schedule.before_step(step)
            ctx.step = step
            for observer in observers:
                observer.before_step(step)
            batch = batches.batch(step)
            loss, out = apply_updates(strategy.training_updates(batch, ctx), schedule, autocast)
            for observer in observers:
                if observer.untimed_at(step):
                    with watch.paused():
                        observer.after_step(step, loss, out)
                else:
                    observer.after_step(step, loss, out)
            if (step + 1) % log_every == 0 or step + 1 == total_steps:
                for observer in observers:
                    observer.at_log_point(step, loss)
        seconds = watch.stop()
    finally:
        for observer in observers:
            observer.close()
    return LoopTiming(seconds, total_steps - warmup, batches.images_per_step)
