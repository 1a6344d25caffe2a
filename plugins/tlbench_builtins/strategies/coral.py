"""``coral``: Deep CORAL, aligning the covariances of source and target embeddings."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tlbench import Batch, StepContext, StepOutput, Strategy, UserError, hookimpl

#: Which features are aligned: the bottleneck embedding or the classifier's outputs.
LAYERS = ("embedding", "logits")
#: Which discrepancy: the paper's Eq. 1, or DomainBed's mean-and-covariance penalty.
LOSSES = ("paper", "domainbed")


def covariance(x: Tensor) -> Tensor:
    """Unbiased covariance of the rows of ``x`` (n×d), denominator ``n - 1`` (Sun & Saenko 2016, Eq. 2-3)."""
    centred = x - x.mean(dim=0, keepdim=True)
    return centred.T @ centred / (len(x) - 1)


def _check_batches(source: Tensor, target: Tensor) -> None:
    if source.dim() != 2 or target.dim() != 2 or source.shape[1] != target.shape[1]:
        raise ValueError(
            f"coral needs two n×d batches of one width, got {tuple(source.shape)} and {tuple(target.shape)}"
        )
    if len(source) < 2 or len(target) < 2:
        raise ValueError(
            f"coral needs at least 2 samples on each side (a covariance), got {len(source)} and {len(target)}"
        )


def coral_loss(source: Tensor, target: Tensor) -> Tensor:
    """The CORAL loss ``||C_S - C_T||²_F / (4 d²)`` between two feature batches (n×d and m×d), Eq. 1.

    Computed in float32 whatever the autocast precision: the covariances of bf16 features lose
    the small differences the loss is made of.
    """
    _check_batches(source, target)
    with torch.autocast(device_type=source.device.type, enabled=False):
        d = source.shape[1]
        diff = covariance(source.float()) - covariance(target.float())
        return diff.pow(2).sum() / (4.0 * d * d)


def mean_covariance_loss(source: Tensor, target: Tensor) -> Tensor:
    """DomainBed's CORAL penalty: ``||mu_S - mu_T||² / d + ||C_S - C_T||²_F / d²`` (element means), in float32.

    Unlike the paper's loss it also aligns the means, and it weighs the covariance term 4 times
    more (``1/d²`` instead of ``1/(4d²)``).
    """
    _check_batches(source, target)
    with torch.autocast(device_type=source.device.type, enabled=False):
        source, target = source.float(), target.float()
        mean_diff = (source.mean(dim=0) - target.mean(dim=0)).pow(2).mean()
        return mean_diff + (covariance(source) - covariance(target)).pow(2).mean()


class Coral(Strategy):
    """Deep CORAL: align the covariances of source and target embeddings (Sun & Saenko 2016).

    Sun & Saenko, "Deep CORAL: Correlation Alignment for Deep Domain Adaptation", ECCV 2016
    Workshops (TASK-CV). Reference implementations: the authors' Caffe code
    (VisionLearningGroup/CORAL), TLlib's ``tllib/alignment/coral.py`` (``CorrelationAlignmentLoss``,
    used by ``examples/domain_generalization/image_classification/coral.py``) and DomainBed's
    ``domainbed/algorithms.py`` (class ``CORAL``, Gulrajani & Lopez-Paz, "In Search of Lost Domain
    Generalization", ICLR 2021).

    Source and target images go through the model as one batch; the loss is
    CE(source) + ``trade_off`` * ``||C_S - C_T||²_F / (4 d²)`` (the paper's Eq. 1), where ``C_S`` and
    ``C_T`` are the unbiased covariance matrices (Eq. 2-3, denominator n - 1) of the source and
    target features of one batch and ``d`` their width. Only second-order statistics are aligned:
    a constant offset between the domains costs nothing. The weight is constant (no ramp), as in
    the paper, TLlib and DomainBed. No module of its own: backbone at ``model.backbone_lr_scale``
    times the head's learning rate (the default parameter groups).

    Which layer: the paper adds the loss to AlexNet's last layer (fc8, the class scores: here
    ``layer: logits``). The default is the bottleneck embedding, the features the classifier
    reads, which is where TLlib's and DomainBed's CORAL align (TLlib: the bottleneck output ``f``
    of its ``ImageClassifier``; DomainBed: the featurizer's output) and where tlbench's other
    alignment methods (``mmd``, ``dann``, ``jan``, ...) act, so that they compare like with like;
    with few classes, ``d`` = the number of classes leaves very few statistics to align.

    Parameters:
        trade_off (1.0): the paper's lambda, the weight of the CORAL loss. The paper chooses it so
            that the classification and CORAL losses are about equal at the end of training; 1.0
            is TLlib's ``--trade-off`` default and DomainBed's ``mmd_gamma``. (TLlib ships CORAL for
            domain generalisation only, so no digits recipe names another value.)
        layer ("embedding"): the features aligned: ``embedding`` (the bottleneck, as TLlib and
            DomainBed do) or ``logits`` (the paper's fc8).
        loss ("paper"): ``paper`` is Eq. 1 above; ``domainbed`` is the penalty of DomainBed's
            (and TLlib's) implementation, ``||mu_S - mu_T||² / d + ||C_S - C_T||²_F / d²`` (element
            means of the squared differences): it also aligns the means, and drops the paper's 1/4.
    """

    @dataclass
    class Params:
        trade_off: float = 1.0
        layer: str = "embedding"
        loss: str = "paper"

        def __post_init__(self) -> None:
            if not self.trade_off >= 0:
                raise UserError(f"coral: params.trade_off must be a number >= 0, got {self.trade_off!r}")
            if self.layer not in LAYERS:
                raise UserError(f"coral: params.layer must be one of {', '.join(LAYERS)}, got {self.layer!r}")
            if self.loss not in LOSSES:
                raise UserError(f"coral: params.loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")

    name = "coral"
    protocols = ("uda",)  # it aligns a source with a target domain: fine-tuning has one domain
    target_views = ("weak",)
    trains_backbone = True
    accepts_features = True  # through ctx.model only: runs on a frozen backbone's features (trainable: head)

    def training_step(self, batch: Batch, ctx: StepContext) -> StepOutput:
        joint = self.joint_pass(batch, ctx)
        if self.params.layer == "embedding":
            source, target = joint.source_embedding, joint.target_embedding
        else:
            source, target = joint.source_logits, joint.target_logits
        discrepancy = coral_loss if self.params.loss == "paper" else mean_covariance_loss
        alignment = discrepancy(source, target)
        loss = joint.source_ce + self.params.trade_off * alignment
        return StepOutput(
            loss,
            {"source_ce": joint.source_ce.detach(), "source_acc": joint.source_acc, "coral": alignment.detach()},
        )


@hookimpl
def register_strategies(register):
    register(Coral)
