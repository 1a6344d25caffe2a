"""The engine: trains and evaluates one cell. The one place that owns the training loop.

:func:`train_cell` is the whole path of one cell, one phase a line, each phase a module of
``tlbench.training``: setup (``setup``: data split, model, strategy, teacher, parameter groups
and optimizer) → frozen outputs computed once (``frozen``) → the batch source (``batches``) →
the step loop with its observers (``loop``; checkpoint evaluations, ``checkpoints``, among them) →
evaluation (``evaluation``, also the last checkpoint's) → the record
(``record``). :func:`run_cell` wraps it so that every cell ends in a record, whatever happens.
Device, precision (bf16 autocast on GPU), memory format and timing (warm-up excluded, device
synchronised) are decided here, so there is one place to make fast; inside the step loop
nothing waits on the device except at logging points.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import cast

import torch

from tlbench.data.files import checked_digest, save_checked
from tlbench.errors import DivergedError
from tlbench.spec.cell import CellTask
from tlbench.spec.record import CellRecord, failure_record, now
from tlbench.spec.store import ResultsDir
from tlbench.training.batches import BatchSource
from tlbench.training.checkpoints import CheckpointEvaluator
from tlbench.training.curves import CurveRecorder
from tlbench.training.evaluation import PseudoLabelAudit, evaluate_cell
from tlbench.training.frozen import prepare_frozen_outputs
from tlbench.training.loop import NonFiniteCheck, ProgressBar, StepObserver, run_steps
from tlbench.training.measure import PeakMemory, device_name, select_device
from tlbench.training.record import cell_provenance, ok_record
from tlbench.training.refresh import TargetRefresher
from tlbench.training.setup import set_up_cell
from tlbench.training.strategy import StepContext
from tlbench.training.stream import OnlinePredictions, TestStream


def train_cell(task: CellTask, registry=None) -> CellRecord:
    """Train and evaluate one cell; raises on failure (``run_cell`` turns that into a record)."""
    from tlbench.plugins.registry import get_registry

    registry = registry or get_registry(strict=task.strict_plugins)
    t_start, started = time.perf_counter(), now()
    device = select_device(task.device)
    memory = PeakMemory(device)
    memory.reset()
    setup = set_up_cell(task, registry, device)
    cell, recipe, data, strategy = setup.cell, setup.recipe, setup.data, setup.strategy

    g = torch.Generator(device=device).manual_seed(cell.seed)
    src_images, src_labels = data.source_images.to(device), data.source_labels.to(device)
    # the unlabelled images target views come from: the target (uda), the held-back training images (finetune)
    pool_images = data.served_target.images.to(device)
    pool_labels = data.served_target.labels.to(device)  # for the pseudo-label audit only
    frozen = prepare_frozen_outputs(
        setup,
        setup.schedule,
        src_images,
        pool_images,
        Path(task.cache_dir) if task.cache_dir else None,
        task.teacher_model,
    )
    batches: BatchSource | TestStream
    if cell.test_time:  # the target once, in a fixed order, at the test view
        batches = TestStream(pool_images, setup.augmenter, int(recipe.batch_size), cell.seed)
    else:
        batches = BatchSource.build(
            src_images,
            src_labels,
            pool_images,
            frozen,
            target_views=type(strategy).target_views,
            augmenter=setup.augmenter,
            recipe=recipe,
            g=g,
        )

    audit = PseudoLabelAudit(pool_labels)
    ctx = StepContext(
        step=0,
        total_steps=setup.total_steps,
        model=setup.model,
        device=device,
        num_classes=data.num_classes,
        teacher=setup.teacher,
        score_pseudo_labels=audit,
    )
    curves = CurveRecorder(setup.schedule)  # the metrics' means for the record come from its sums too
    cached_test_views = None
    if data.served_target is data.target:  # uda: every target image, the ones it was served, is scored
        scored_images, scored_labels = pool_images, pool_labels
        cached_test_views = frozen.scored_features(setup.total_steps)
    else:  # finetune: the task's test (or validation) split, never served
        scored_images, scored_labels = data.target.images.to(device), data.target.labels.to(device)
    checkpoints = CheckpointEvaluator(setup, scored_images, scored_labels, int(recipe.eval_points), cached_test_views)
    observers: list[StepObserver] = [NonFiniteCheck(device), curves, checkpoints]
    if strategy.target_refreshes:  # SHOT's pseudo-labels: a pass over every served target image
        observers.append(TargetRefresher(setup, ctx, pool_images, frozen.target_features, frozen.feature_steps))
    online = None
    if isinstance(batches, TestStream):  # test_time: the predictions made as each batch arrived
        online = OnlinePredictions(batches, len(pool_images), cell.strategy)
        observers.append(online)
    if task.show_progress:
        observers.append(ProgressBar(setup.total_steps, cell.describe()))
    timing = run_steps(
        strategy,
        setup.schedule,
        batches,
        ctx,
        setup.autocast,
        observers,
        total_steps=setup.total_steps,
        log_every=int(recipe.log_every),
        warmup_steps=int(recipe.timing_warmup_steps),
        device=device,
    )

    evaluation = evaluate_cell(setup, scored_images, scored_labels, cached_test_views)
    evaluations = checkpoints.finish(evaluation)
    stream_metrics = {}
    if online is not None:  # scored on the online predictions; the adapted model's own pass kept beside
        stream_metrics["adapted_model_acc"] = evaluation.target_acc
        evaluation = dataclasses.replace(evaluation, target_acc=online.accuracy(scored_labels))
    if task.save_model:  # a kd teacher: its students load these weights, checked by their digest
        save_checked(
            ResultsDir(Path(task.out_dir)).model_path(cell.id),
            {k: v.detach().cpu() for k, v in setup.model.state_dict().items()},
        )
    metrics = {**curves.means(setup.total_steps), **audit.metrics(), **strategy.extra_metrics(), **stream_metrics}
    return ok_record(
        setup,
        evaluation=evaluation,
        evaluations=evaluations,
        timing=timing,
        metrics=metrics,
        curves=curves.curves,
        provenance=cell_provenance(cell, registry),
        frozen=frozen,
        trainable_params=setup.schedule.trainable_params(),
        peak_mem_mb=memory.peak_mb(),
        wall_s=time.perf_counter() - t_start,
        started_at=started,
        device=device_name(device),
        teacher_sha256=checked_digest(Path(task.teacher_model)) if setup.teacher and task.teacher_model else None,
    )


def _failed(task: CellTask, status: str, error: str, started: str, t0: float, steps: int | None = None) -> CellRecord:
    """The record of a cell that stopped with ``error`` (``status`` failed or diverged)."""
    return failure_record(task.cell, status, error, started_at=started, wall_s=time.perf_counter() - t0, steps=steps)


class _HookError(Exception):
    """A ``before_cell`` hook raised; the cell fails with the hook named."""


def run_cell(task: CellTask) -> CellRecord:
    """Train one cell and always return a record: ok, failed (with the error) or diverged.

    Top-level and picklable, so launchers (processes, Ray, Slurm) can call it in a worker. Only
    ``KeyboardInterrupt`` (Ctrl-C, or a launcher stopping its worker) passes through; anything else,
    ``SystemExit`` included, becomes the cell's failure.
    """
    from tlbench.plugins.registry import format_traceback, get_registry

    started = now()
    t0 = time.perf_counter()
    registry = get_registry(strict=task.strict_plugins)
    record: CellRecord
    try:
        try:
            registry.hook.before_cell(cell=task.cell)
        except Exception as exc:  # a plugin hook that raises fails the cell, not the run
            raise _HookError(f"before_cell hook raised {type(exc).__name__}: {exc}") from exc
        record = train_cell(task, registry)
    except KeyboardInterrupt:
        raise
    except _HookError as exc:
        # a _HookError is always raised from the hook's exception
        message = str(exc) + ("\n" + format_traceback(cast(BaseException, exc.__cause__)) if task.debug else "")
        record = _failed(task, "failed", message, started, t0)
    except DivergedError as exc:
        record = _failed(task, "diverged", str(exc), started, t0, steps=exc.step)
    except torch.OutOfMemoryError as exc:
        record = _failed(task, "failed", f"out of memory: {str(exc).splitlines()[0]}", started, t0)
    except BaseException as exc:  # noqa: BLE001 - a strategy's sys.exit() fails its cell, not the matrix
        message = f"{type(exc).__name__}: {exc}"
        if task.debug:
            message += "\n" + format_traceback(exc)
        record = _failed(task, "failed", message, started, t0)
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    try:
        registry.hook.after_cell(cell=task.cell, record=record)
    except Exception as exc:  # noqa: BLE001 - a plugin hook that raises fails the cell, not the run
        record = _failed(task, "failed", f"after_cell hook raised {type(exc).__name__}: {exc}", started, t0)
    return record
