"""The record, the engine's last phase: what one cell produced and what it cost."""

from __future__ import annotations

from typing import Any

import torch

import tlbench
from tlbench.data.domains import DomainSpec
from tlbench.models.transfer import count_parameters
from tlbench.plugins.provenance import provenance
from tlbench.runtime import describe_runtime
from tlbench.spec.cell import Cell
from tlbench.spec.evaluations import CheckpointEvaluations
from tlbench.spec.record import CellRecord, cell_fields
from tlbench.training.curves import Curves
from tlbench.training.evaluation import Evaluation
from tlbench.training.frozen import FrozenOutputs
from tlbench.training.loop import LoopTiming
from tlbench.training.setup import CellSetup


def cell_provenance(cell: Cell, registry) -> dict[str, Any]:
    """The code behind a cell's names: its strategy's, dataset's and shifts' plugins, versions and
    source digests (see :mod:`tlbench.plugins.provenance`)."""
    shifts = {name for spec in (cell.source, cell.target) for name, _ in DomainSpec.parse(spec).shifts}
    return {
        "strategy": provenance(registry, "strategy", cell.strategy),
        "dataset": provenance(registry, "dataset", cell.dataset),
        "shifts": {name: provenance(registry, "shift", name) for name in sorted(shifts)},
    }


def ok_record(
    setup: CellSetup,
    *,
    evaluation: Evaluation,
    evaluations: CheckpointEvaluations | None,
    timing: LoopTiming,
    metrics: dict[str, float],
    curves: Curves,
    provenance: dict[str, Any],
    frozen: FrozenOutputs,
    trainable_params: int,
    peak_mem_mb: float | None,
    wall_s: float,
    started_at: str,
    device: str,
    teacher_sha256: str | None = None,
) -> CellRecord:
    """The record of a cell that trained to its last step; ``teacher_sha256`` names the trained
    teacher (kd's teacher, the source model of adda or a source-free method) it started from."""
    import timm

    cell, recipe = setup.cell, setup.recipe
    extra: dict[str, Any] = dict(metrics)
    extra.update(
        {
            "timm_version": timm.__version__,
            "weights": setup.weights_used,
            "network": cell.backbone,
            "backbone_provider": setup.backbone.provider,
            "in_chans": setup.backbone.in_chans,
            "deterministic": setup.deterministic,
            "precision": "bf16" if setup.precision.bf16 else "fp32",
            "channels_last": setup.precision.channels_last,
            "compiled": bool(recipe.compile),
            "feature_cache": frozen.feature_steps > 0,
            "feature_cache_steps": frozen.feature_steps,
            "teacher_views": frozen.teacher_views,
            "train_images": len(setup.data.source_images),
            "target_images": len(setup.data.target),
            "train_seconds": timing.seconds,
            "provenance": {**provenance, "weights": dict(setup.backbone.weights)},
        }
    )
    if teacher_sha256:
        extra["teacher_sha256"] = teacher_sha256
    if setup.device.type == "cpu":
        extra["cpu_runtime"] = describe_runtime()  # the allocator and OpenMP waits this process ran with
    if evaluations is not None and len(evaluations):
        extra["checkpoint_target_images"] = int(evaluations.target_logits.shape[1])  # recipe.eval_points_images
    split = setup.data.task_split
    if split is not None:  # finetune: how the task was cut
        extra.update(
            {
                "labelled_images": len(split.labelled),
                "unlabelled_images": len(split.unlabelled),
                "official_split": split.official,
                "score_on": cell.score_on,
            }
        )
    train_images = split.train_size if split is not None else len(setup.data.source_images)
    return CellRecord(
        **cell_fields(cell),
        status="ok",
        target_acc=evaluation.target_acc,
        source_acc=evaluation.source_acc,
        train_img_per_s=timing.images_per_second,
        eval_img_per_s=evaluation.eval_img_per_s,
        peak_mem_mb=peak_mem_mb,
        trainable_params=trainable_params,
        total_params=count_parameters(setup.model) + count_parameters(setup.strategy),
        steps=setup.total_steps,
        wall_s=wall_s,
        device=device,
        torch_version=torch.__version__,
        tlbench_version=tlbench.__version__,
        started_at=started_at,
        train_images=train_images,
        test_images=len(setup.data.target),
        extra=extra,
        curves=curves.to_dict(),
        evaluations=evaluations,
    )
