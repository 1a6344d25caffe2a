"""Checkpoint evaluations: the model's outputs at K evenly spaced points of training, for validators.

A :class:`CheckpointEvaluator` is a step observer. At each point before the last it evaluates the
model once on the checkpoint subset of the target (``recipe.eval_points_images``, 1,000 by default:
a fixed random subset drawn from a constant seed, never from labels, so every checkpoint and every
cell on that target read the same images; all of them when the target is no larger) and on the
source's held-out split (the test crop, no randomness drawn, every module's train/eval mode restored
afterwards, the clock paused), so training goes on exactly as without it. The last point is the
engine's final evaluation itself, cut to the same subset (:meth:`finish`): the last checkpoint costs
no second pass. Evaluating every image of a large target at every point would cost more than the
training of a short schedule (on the digits suite, 21-42 % of a cell's wall time for USPS's 9,298
images; benchmarks/RESULTS.md). What is kept is :class:`tlbench.spec.evaluations.
CheckpointEvaluations`; target labels only turn into each point's accuracy, the oracle.

Model selection without target labels needs these outputs (Musgrave et al., "Benchmarking
Validation Methods for Unsupervised Domain Adaptation", 2021): validators score them afterwards,
when reports are written, so a new validator rescores finished runs without training again.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import cast

import numpy as np
import torch
from torch import Tensor, nn

from tlbench.spec.evaluations import CheckpointEvaluations, compact_embeddings
from tlbench.training.evaluation import Evaluation, ModelOutputs, accuracy, evaluate_cell
from tlbench.training.frozen import CachedTestViews
from tlbench.training.loop import StepObserver
from tlbench.training.setup import CellSetup
from tlbench.training.strategy import StepOutput

#: the seed of the checkpoint subset: a constant, so the subset depends on the target's size only
SUBSET_SEED = 0


def checkpoint_subset(n: int, cap: int) -> Tensor | None:
    """Sorted positions of the ``cap`` target images checkpoints read, or None for all of them
    (``cap`` 0, or a target of at most ``cap`` images)."""
    if cap <= 0 or n <= cap:
        return None
    g = torch.Generator().manual_seed(SUBSET_SEED)
    return torch.randperm(n, generator=g)[:cap].sort().values


def checkpoint_steps(total_steps: int, points: int) -> list[int]:
    """``points`` evenly spaced step counts in 1..total_steps, the last step included (fewer when
    training has fewer steps than points)."""
    return sorted({max(1, round(total_steps * (i + 1) / points)) for i in range(points)})


class CheckpointEvaluator(StepObserver):
    """Evaluates the model at ``checkpoint_steps``; the last point comes from the final evaluation."""

    def __init__(
        self,
        setup: CellSetup,
        target_images: Tensor,
        target_labels: Tensor,
        points: int,
        cached: CachedTestViews | None = None,
    ):
        self.subset = checkpoint_subset(len(target_images), setup.recipe.eval_points_images)
        if self.subset is not None:
            index = self.subset.to(target_images.device)
            target_images, target_labels = target_images[index], target_labels[index]
            if cached is not None:
                cached = dataclasses.replace(cached, target=cached.target[index.to(cached.target.device)])
        self.setup, self.target_images, self.target_labels = setup, target_images, target_labels
        self.cached = cached  # a frozen backbone's cached test views: only the head runs
        self.steps = checkpoint_steps(setup.total_steps, points)
        self._due = set(self.steps[:-1])  # 0-based steps after which to evaluate are step_done - 1
        self._points: list[tuple[int, float, ModelOutputs, ModelOutputs | None]] = []

    def untimed_at(self, step: int) -> bool:
        return step + 1 in self._due

    def after_step(self, step: int, loss: Tensor, out: StepOutput) -> None:
        if step + 1 in self._due:
            with kept_modes(self.setup.model, self.setup.strategy):
                self._add(
                    step + 1,
                    evaluate_cell(self.setup, self.target_images, self.target_labels, self.cached),
                )

    def finish(self, evaluation: Evaluation) -> CheckpointEvaluations:
        """The evaluations, the final ``evaluation`` (of the last step, on every target image) as the
        last point, cut to the checkpoint subset."""
        self._add(self.setup.total_steps, self._on_subset(evaluation))
        target_embed = np.stack([_embed(p[2]) for p in self._points])
        holdout = self.setup.data.source_holdout
        empty = ModelOutputs(torch.zeros(0, self._points[0][2].logits.shape[1]), None, 0.0)
        source = [p[3] or empty for p in self._points]
        return CheckpointEvaluations(
            steps=np.array([p[0] for p in self._points], dtype=np.int64),
            target_acc=np.array([p[1] for p in self._points], dtype=np.float64),
            target_logits=np.stack([p[2].logits.numpy().astype(np.float16) for p in self._points]),
            target_embed=target_embed,
            source_logits=np.stack([o.logits.numpy().astype(np.float16) for o in source]),
            source_embed=np.stack(
                [_embed(o) if len(o.logits) else np.zeros((0, target_embed.shape[2]), np.float16) for o in source]
            ),
            source_labels=(
                holdout.labels.cpu().numpy().astype(np.int64) if holdout is not None else np.zeros(0, np.int64)
            ),
        )

    def _on_subset(self, evaluation: Evaluation) -> Evaluation:
        if self.subset is None:
            return evaluation
        out = cast(ModelOutputs, evaluation.target_outputs)  # evaluate_cell always sets it
        index = self.subset.to(out.logits.device)
        logits = out.logits[index]
        embedding = out.embedding[index] if out.embedding is not None else None
        acc = accuracy(logits, self.target_labels)
        return dataclasses.replace(
            evaluation, target_acc=acc, target_outputs=ModelOutputs(logits, embedding, out.img_per_s)
        )

    def _add(self, step: int, evaluation: Evaluation) -> None:
        target = cast(ModelOutputs, evaluation.target_outputs)  # evaluate_cell always sets it
        self._points.append((step, evaluation.target_acc, target, evaluation.source_outputs))


def _embed(outputs: ModelOutputs) -> np.ndarray:
    if outputs.embedding is None:  # a model without embeddings: its logits stand in for them
        return compact_embeddings(outputs.logits.numpy())
    return compact_embeddings(outputs.embedding.numpy())


@contextlib.contextmanager
def kept_modes(*roots: nn.Module) -> Iterator[None]:
    """Restores every module's train/eval flag on exit (an evaluation switches the model to eval mode;
    frozen norm layers stay in eval mode during training, so one flag for the whole model would not do)."""
    modes = [(m, m.training) for root in roots for m in root.modules()]
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training
