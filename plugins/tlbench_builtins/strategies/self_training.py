"""``self_training``: FixMatch-style confidence-thresholded pseudo-labelling of target images."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from tlbench import Batch, StepContext, StepOutput, Strategy, UserError, hookimpl


def pseudo_labels(logits: Tensor, threshold: float) -> tuple[Tensor, Tensor, Tensor]:
    """Hard pseudo-labels, their confidence, and the mask of those at or above ``threshold``."""
    confidence, labels = logits.detach().float().softmax(1).max(1)
    return labels, confidence, confidence >= threshold


def masked_pseudo_label_loss(logits_strong: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
    """FixMatch's unlabelled loss: CE on the strong view, averaged over *all* target images
    (images below the threshold count as zero), so it is exactly 0 when none is kept."""
    ce = F.cross_entropy(logits_strong, labels, reduction="none")
    return (ce * mask.to(ce.dtype)).mean()


class SelfTraining(Strategy):
    """Self-training: confident pseudo-labels of target images train the strong view (FixMatch).

    FixMatch, Sohn et al. 2020, NeurIPS; pseudo-labelling, Lee 2013, ICML workshop. Under
    protocol ``finetune`` the target images are the training images whose labels the budget
    holds back, which is FixMatch's own semi-supervised setting.

    Cross-entropy on labelled source images throughout. After a source-only warm-up, each weakly
    augmented target image is labelled by the current model (no gradient; its argmax); images whose
    top probability reaches ``threshold`` contribute cross-entropy of the model's prediction on the
    strongly augmented view against that pseudo-label, weighted by ``weight``. The loss of one step
    is CE(source) + ``weight`` * mean over target images of mask * CE(strong, pseudo-label).
    Each step reports its coverage (fraction of target images kept) as ``pseudo_coverage``, and
    hands the pseudo-labels to ``ctx.score_pseudo_labels`` so that the engine, which alone holds
    the target labels, can measure their coverage and accuracy over the run; those labels are
    never fed back into training.

    Parameters:
        threshold (0.9): minimum softmax confidence for a pseudo-label to be kept (FixMatch used
            0.95 on CIFAR; 0.9 is the usual choice for domain adaptation, e.g. tllib's FixMatch).
        weight (1.0): weight of the pseudo-label loss (FixMatch's lambda_u).
        warmup (0.1): fraction of training with source cross-entropy only, before pseudo-labels
            are used (lets the classifier become confident on something real first).
    """

    @dataclass
    class Params:
        threshold: float = 0.9
        weight: float = 1.0
        warmup: float = 0.1

        def __post_init__(self) -> None:
            if not 0.0 <= self.threshold <= 1.0:
                raise UserError(f"self_training: params.threshold must lie in [0, 1], got {self.threshold}")
            if not 0.0 <= self.warmup <= 1.0:
                raise UserError(
                    f"self_training: params.warmup must be a fraction of training in [0, 1], got {self.warmup}"
                )

    name = "self_training"
    protocols = ("uda", "finetune")
    target_views = ("weak", "strong")
    trains_backbone = True

    def training_step(self, batch: Batch, ctx: StepContext) -> StepOutput:
        if ctx.progress < self.params.warmup:
            logits_s = ctx.model(batch.source)
            cls_loss = F.cross_entropy(logits_s, batch.source_labels)
            source_acc = (logits_s.detach().argmax(1) == batch.source_labels).float().mean()
            return StepOutput(cls_loss, {"source_ce": cls_loss.detach(), "source_acc": source_acc})

        if batch.target is None or batch.target_strong is None:
            raise ValueError("self_training needs the 'weak' and 'strong' target views in every batch")
        with torch.no_grad():
            labels, _, mask = pseudo_labels(ctx.model(batch.target), self.params.threshold)

        n_source = len(batch.source)
        logits = ctx.model(torch.cat([batch.source, batch.target_strong]))
        logits_s, logits_strong = logits[:n_source], logits[n_source:]
        cls_loss = F.cross_entropy(logits_s, batch.source_labels)
        unsup = masked_pseudo_label_loss(logits_strong, labels, mask)
        loss = cls_loss + self.params.weight * unsup

        if ctx.score_pseudo_labels is not None and batch.target_index is not None:
            ctx.score_pseudo_labels(batch.target_index, labels, mask)
        source_acc = (logits_s.detach().argmax(1) == batch.source_labels).float().mean()
        return StepOutput(
            loss,
            {
                "source_ce": cls_loss.detach(),
                "source_acc": source_acc,
                "pseudo_loss": unsup.detach(),
                "pseudo_coverage": mask.float().mean(),
            },
        )


@hookimpl
def register_strategies(register):
    register(SelfTraining)
