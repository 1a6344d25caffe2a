"""``coral``: Deep CORAL, aligning the covariance of source and target features."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from tlbench import Batch, StepContext, StepOutput, Strategy, UserError, hookimpl

LAYERS = ("embedding", "logits")


def covariance(x: Tensor) -> Tensor:
    """Unbiased covariance of the rows of ``x`` (n×d): ``(xᵀx - (1ᵀx)ᵀ(1ᵀx) / n) / (n - 1)``, Eq. 2 of the paper."""
    centred = x - x.mean(dim=0, keepdim=True)
    return centred.T @ centred / (len(x) - 1)


def coral_loss(source: Tensor, target: Tensor) -> Tensor:
    """The CORAL loss ``||C_S - C_T||²_F / (4 d²)`` between two feature batches (n×d and m×d).

    Sun & Saenko 2016, Eq. 1; ``C_S``, ``C_T`` are the unbiased covariances (Eq. 2-3) and ``d``
    the feature dimension. Computed in float32 whatever the autocast precision: covariances of
    bf16 features lose the small differences the loss is made of.
    """
    if source.dim() != 2 or target.dim() != 2 or source.shape[1] != target.shape[1]:
        raise ValueError(
            f"coral_loss needs two n×d batches of one width, got {tuple(source.shape)} and {tuple(target.shape)}"
        )
    if len(source) < 2 or len(target) < 2:
        raise ValueError(
            f"coral_loss needs at least 2 samples on each side (a covariance), got {len(source)} and {len(target)}"
        )
    with torch.autocast(device_type=source.device.type, enabled=False):
        d = source.shape[1]
        diff = covariance(source.float()) - covariance(target.float())
        return diff.pow(2).sum() / (4.0 * d * d)


class Coral(Strategy):
    """Deep CORAL: align the covariances of source and target features (Sun & Saenko 2016).

    The paper: Sun & Saenko, "Deep CORAL: Correlation Alignment for Deep Domain Adaptation", ECCV
    Workshops 2016.

    Source and target images go through the model as one batch; the loss is
    CE(source) + ``trade_off`` * ``||C_S - C_T||²_F / (4 d²)``, where ``C_S`` and ``C_T`` are the
    unbiased covariance matrices of the source and target features of one layer and ``d`` its
    width. Only second-order statistics are aligned: a constant offset between the domains costs
    nothing. Backbone at ``model.backbone_lr_scale`` times the head's learning rate (the default
    parameter groups).

    Parameters:
        trade_off (1.0): weight of the CORAL loss (the paper's lambda; it suggests a value that makes
            the two losses about equal at the end of training).
        layer ("embedding"): which features are aligned: ``embedding`` (the bottleneck, as tllib and
            most later benchmarks do) or ``logits`` (the paper's choice, AlexNet's last layer fc8).
    """

    @dataclass
    class Params:
        trade_off: float = 1.0
        layer: str = "embedding"

        def __post_init__(self) -> None:
            if self.layer not in LAYERS:
                raise UserError(f"coral: params.layer must be one of {', '.join(LAYERS)}, got {self.layer!r}")
            if not self.trade_off >= 0:
                raise UserError(f"coral: params.trade_off must be a number >= 0, got {self.trade_off!r}")

    name = "coral"
    target_views = ("weak",)
    trains_backbone = True

    def training_step(self, batch: Batch, ctx: StepContext) -> StepOutput:
        if batch.target is None:
            raise ValueError("coral needs target images: the batch has no 'weak' target view")
        n_source = len(batch.source)
        out = ctx.model.forward_all(torch.cat([batch.source, batch.target]))
        logits_s = out.logits[:n_source]
        cls_loss = F.cross_entropy(logits_s, batch.source_labels)
        features = out.embedding if self.params.layer == "embedding" else out.logits
        alignment = coral_loss(features[:n_source], features[n_source:])
        loss = cls_loss + self.params.trade_off * alignment
        source_acc = (logits_s.detach().argmax(1) == batch.source_labels).float().mean()
        return StepOutput(loss, {"source_ce": cls_loss.detach(), "source_acc": source_acc, "coral": alignment.detach()})


@hookimpl
def register_strategies(register):
    register(Coral)
