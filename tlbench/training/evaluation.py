"""Evaluation, the engine's fourth phase: the last model on every target image and the held-out source.

Also the one place target labels are read during training: :class:`PseudoLabelAudit` measures a
strategy's pseudo-labels against them for the record and never feeds anything back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn

from tlbench.training.augment import Augmenter
from tlbench.training.measure import Stopwatch
from tlbench.training.setup import CellSetup

if TYPE_CHECKING:
    from tlbench.training.frozen import CachedTestViews


@dataclass
class ModelOutputs:
    """One pass of a model over a set of images, on the host: what accuracies and validators read."""

    logits: Tensor  # N×C float32
    embedding: Tensor | None  # N×E float32 (the classifier's input); None for a model without forward_all
    img_per_s: float


@dataclass
class Evaluation:
    """Accuracies (percent) of the trained model, the evaluation throughput, and the outputs behind them
    (for the last checkpoint's evaluation, :mod:`tlbench.training.checkpoints`)."""

    target_acc: float
    eval_img_per_s: float
    source_acc: float | None
    target_outputs: ModelOutputs | None = None
    source_outputs: ModelOutputs | None = None


@torch.no_grad()
def model_outputs(
    model: nn.Module, images: Tensor, augmenter: Augmenter, batch_size: int, device: torch.device, autocast
) -> ModelOutputs:
    """Logits and embeddings of ``model`` on uint8 ``images`` at the test crop, timed (one transfer to the host)."""
    model.eval()
    full = hasattr(model, "forward_all")
    logits, embeds = [], []
    watch = Stopwatch(device)
    watch.start()
    for i in range(0, len(images), batch_size):
        x = augmenter.test(images[i : i + batch_size].to(device, non_blocking=True))
        with autocast():
            out: Any = cast(Any, model).forward_all(x) if full else None  # a TransferModel's Outputs
            logits.append((out.logits if full else model(x)).float())
            if full:
                embeds.append(out.embedding.float())
    seconds = watch.stop()
    return ModelOutputs(
        torch.cat(logits).cpu(), torch.cat(embeds).cpu() if full else None, len(images) / max(seconds, 1e-9)
    )


@torch.no_grad()
def head_outputs(model: nn.Module, features: Tensor, batch_size: int, autocast) -> ModelOutputs:
    """Logits and embeddings of a :class:`TransferModel`'s head on a frozen backbone's cached test-view
    features (N×D): the backbone's share of the test pass, computed once for every cell that shares it.
    Its ``img_per_s`` is the head's alone, not a deployment figure (NaN)."""
    model.eval()
    logits, embeds = [], []
    for i in range(0, len(features), batch_size):
        with autocast():
            out: Any = cast(Any, model).forward_all(features[i : i + batch_size])
            logits.append(out.logits.float())
            embeds.append(out.embedding.float())
    return ModelOutputs(torch.cat(logits).cpu(), torch.cat(embeds).cpu(), float("nan"))


def accuracy(logits: Tensor, labels: Tensor) -> float:
    """Percent of rows whose arg-max is the label."""
    return 100.0 * (logits.argmax(1) == labels.to(logits.device)).sum().item() / max(len(labels), 1)


def evaluate(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    augmenter: Augmenter,
    batch_size: int,
    device: torch.device,
    autocast,
) -> tuple[float, float]:
    """(accuracy in percent, images per second) of ``model`` on uint8 ``images``."""
    out = model_outputs(model, images, augmenter, batch_size, device, autocast)
    return accuracy(out.logits, labels), out.img_per_s


def evaluate_cell(
    setup: CellSetup, target_images: Tensor, target_labels: Tensor, cached: CachedTestViews | None = None
) -> Evaluation:
    """The current model on all target images (timed) and on the source's held-out split, one pass each.

    With ``cached`` (a frozen backbone's test-view features, for a cell whose backbone never trained)
    only the head runs, on the target's and the held-out source's features; the evaluation
    throughput is then the whole model's, timed on :data:`DEPLOYMENT_TIMING_IMAGES` held-out images
    (target images in a source-free cell, which has no source).
    """
    holdout = setup.data.source_holdout
    if cached is None or (holdout is not None and cached.holdout is None):
        return _evaluate_images(setup, target_images, target_labels)
    bs = setup.recipe.eval_batch_size
    target = head_outputs(setup.model, cached.target, bs, setup.autocast)
    source, source_acc = None, None
    if holdout is not None and cached.holdout is not None:
        source = head_outputs(setup.model, cached.holdout, bs, setup.autocast)
        source_acc = accuracy(source.logits, holdout.labels)
    # timed on the held-out source where there is one (a source-free cell has none: its target)
    rate = deployment_throughput(setup, holdout.images if holdout is not None else target_images)
    return Evaluation(accuracy(target.logits, target_labels), rate, source_acc, target, source)


def _evaluate_images(setup: CellSetup, target_images: Tensor, target_labels: Tensor) -> Evaluation:
    """The whole model on every target image (the evaluation throughput) and the held-out source."""
    bs = setup.recipe.eval_batch_size
    target = model_outputs(setup.model, target_images, setup.augmenter, bs, setup.device, setup.autocast)
    source, source_acc = None, None
    holdout = setup.data.source_holdout
    if holdout is not None:
        source = model_outputs(
            setup.model, holdout.images.to(setup.device), setup.augmenter, bs, setup.device, setup.autocast
        )
        source_acc = accuracy(source.logits, holdout.labels)
    return Evaluation(accuracy(target.logits, target_labels), target.img_per_s, source_acc, target, source)


#: images a frozen-backbone cell times its whole model on (after one warm-up batch): the deployment
#: figure every head-tier cell of a backbone shares, at a cost that does not grow with the source
DEPLOYMENT_TIMING_IMAGES = 64
DEPLOYMENT_WARMUP_IMAGES = 8


def deployment_throughput(setup: CellSetup, images: Tensor) -> float:
    """Images per second of the whole model (backbone and head) on up to
    :data:`DEPLOYMENT_TIMING_IMAGES` uint8 ``images`` at the test crop, after a warm-up batch."""
    bs = setup.recipe.eval_batch_size
    warmup = images[:DEPLOYMENT_WARMUP_IMAGES].to(setup.device)
    model_outputs(setup.model, warmup, setup.augmenter, bs, setup.device, setup.autocast)
    timed = images[:DEPLOYMENT_TIMING_IMAGES].to(setup.device)
    return model_outputs(setup.model, timed, setup.augmenter, bs, setup.device, setup.autocast).img_per_s


class PseudoLabelAudit:
    """Measures pseudo-labels against the true target labels; never feeds them back."""

    def __init__(self, labels: Tensor):
        self.labels = labels
        self.seen = torch.zeros((), device=labels.device)
        self.kept = torch.zeros((), device=labels.device)
        self.correct = torch.zeros((), device=labels.device)

    def __call__(self, index: Tensor, pseudo: Tensor, mask: Tensor) -> None:
        mask = mask.bool()
        self.seen += index.numel()
        self.kept += mask.sum()
        self.correct += ((pseudo == self.labels[index]) & mask).sum()

    def metrics(self) -> dict[str, float]:
        seen, kept = self.seen.item(), self.kept.item()
        if seen == 0:
            return {}
        out = {"pseudo_label_coverage": 100.0 * kept / seen}
        if kept:
            out["pseudo_label_acc"] = 100.0 * self.correct.item() / kept
        return out
