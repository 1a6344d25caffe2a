"""Evaluation, the engine's fourth phase: the last model on every target image and the held-out source.

Also the one place target labels are read during training: :class:`PseudoLabelAudit` measures a
strategy's pseudo-labels against them for the record and never feeds anything back.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from tlbench.training.augment import Augmenter
from tlbench.training.measure import Stopwatch
from tlbench.training.setup import CellSetup


@dataclass
class Evaluation:
    """Accuracies (percent) of the trained model and the evaluation throughput."""

    target_acc: float
    eval_img_per_s: float
    source_acc: float | None


@torch.no_grad()
def evaluate(model: nn.Module, images: Tensor, labels: Tensor, augmenter: Augmenter, batch_size: int,
             device: torch.device, autocast) -> tuple[float, float]:
    """(accuracy in percent, images per second) of ``model`` on uint8 ``images``."""
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=device)
    watch = Stopwatch(device)
    watch.start()
    for i in range(0, len(images), batch_size):
        x = augmenter.test(images[i:i + batch_size].to(device, non_blocking=True))
        with autocast():
            logits = model(x)
        correct += (logits.argmax(1) == labels[i:i + batch_size].to(device)).sum()
    seconds = watch.stop()
    return 100.0 * correct.item() / len(images), len(images) / max(seconds, 1e-9)


def evaluate_cell(setup: CellSetup, target_images: Tensor, target_labels: Tensor) -> Evaluation:
    """The last checkpoint on all target images (timed) and on the source's held-out split."""
    bs = setup.recipe["eval_batch_size"]
    target_acc, eval_img_per_s = evaluate(setup.model, target_images, target_labels, setup.augmenter, bs,
                                          setup.device, setup.autocast)
    source_acc = None
    holdout = setup.data.source_holdout
    if holdout is not None:
        source_acc, _ = evaluate(setup.model, holdout.images.to(setup.device), holdout.labels.to(setup.device),
                                 setup.augmenter, bs, setup.device, setup.autocast)
    return Evaluation(target_acc, eval_img_per_s, source_acc)


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
