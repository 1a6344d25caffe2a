"""``mcc``: Minimum Class Confusion, penalising the target predictions' between-class confusion."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from tlbench import Batch, StepContext, StepOutput, Strategy, UserError, hookimpl

#: the constant TLlib's ``tllib.modules.entropy.entropy`` adds inside the log
ENTROPY_EPS = 1e-5


def class_confusion_loss(logits: Tensor, temperature: float = 2.5) -> Tensor:
    """MCC's class-confusion loss of a batch of target logits (N×C), computed in float32.

    With ``p = softmax(logits / temperature)`` (N×C), per-example entropies
    ``H_i = -sum_c p_ic log(p_ic + 1e-5)`` and weights ``w_i = 1 + exp(-H_i)`` rescaled so that they
    sum to N (``w_i <- N w_i / sum_j w_j``), the weighted confusion matrix ``M = p^T diag(w) p``
    (C×C) has each row divided by its sum, and the loss is the sum of the off-diagonal entries of
    the normalised matrix divided by C. It lies in [0, (C-1)/C]: 0 when no sample's probability is
    split between classes. The weights are detached, as in TLlib: they rank the examples, and the
    gradient reaches the logits only through ``p`` in the matrix. (Rescaling the weights to sum to
    N, as TLlib does, cancels in the row normalisation; it is kept for parity.)

    TLlib divides by ``M.sum(dim=1)`` without keepdim, which broadcasts to dividing column j by row
    j's sum; ``M`` is symmetric, so the loss (and its gradient) equals that of the row
    normalisation done here. A row whose sum underflows to 0 (a class no sample gives any
    probability, only possible with extreme logits) counts as 0 instead of TLlib's NaN.
    """
    n, c = logits.shape
    with torch.autocast(device_type=logits.device.type, enabled=False):
        p = F.softmax(logits.float() / temperature, dim=1)
        with torch.no_grad():
            h = -(p * torch.log(p + ENTROPY_EPS)).sum(dim=1)
            w = 1.0 + torch.exp(-h)
            w = n * w / w.sum()
        confusion = (p * w.unsqueeze(1)).t() @ p
        row_sums = confusion.sum(dim=1, keepdim=True).clamp_min(torch.finfo(confusion.dtype).tiny)
        confusion = confusion / row_sums
        return (confusion.sum() - confusion.trace()) / c


class Mcc(Strategy):
    """MCC: minimise the class confusion of the target predictions (Jin et al. 2020).

    Jin, Wang, Long and Wang, "Minimum Class Confusion for Versatile Domain Adaptation", ECCV 2020;
    implementation after TLlib's ``tllib/self_training/mcc.py`` (``MinimumClassConfusionLoss``)
    and ``examples/domain_adaptation/image_classification/mcc.py``.

    Source and target images go through the model as one batch (as TLlib does). Loss =
    CE(source) + ``trade_off`` * MCC(target logits), where MCC softens the target predictions with
    ``temperature`` (``p = softmax(logits / T)``), weights each target example by
    ``1 + exp(-H(p_i))`` (confident examples count more; weights detached and rescaled to sum to
    the batch size), forms the class-confusion matrix ``M = p^T diag(w) p``, normalises each row of
    ``M`` by its sum, and takes the sum of its off-diagonal entries divided by the number of classes
    (:func:`class_confusion_loss`). No domain discriminator or extra module: the model alone trains.

    TLlib's default recipe (``mcc.py`` argparse; a suite's ``recipe``, not parameters): SGD lr 0.005,
    momentum 0.9, Nesterov, weight decay 1e-3, backbone at 0.1 of the lr, batch 36, 20 epochs of
    1000 iterations with TLlib's ``(1 + 0.001 i)^-0.75`` decay. Its digits lines (``mcc.sh``,
    MNIST→USPS) keep ``temperature`` and ``trade_off`` at their defaults and change only the
    recipe: lr 0.01 (0.1 for USPS→MNIST), batch 128, 2500 iterations per epoch, LeNet from scratch.

    Parameters:
        trade_off (1.0): weight of the MCC loss (TLlib's ``--trade-off`` default; its DomainNet
            lines use 10.0).
        temperature (2.5): softmax temperature of the target predictions (TLlib's ``--temperature``
            default; its VisDA-2017 line uses 3.0, its DomainNet lines 2.0).
    """

    @dataclass
    class Params:
        trade_off: float = 1.0
        temperature: float = 2.5

        def __post_init__(self) -> None:
            if self.trade_off < 0:
                raise UserError(f"mcc: params.trade_off must be >= 0, got {self.trade_off}")
            if self.temperature <= 0:
                raise UserError(f"mcc: params.temperature must be > 0, got {self.temperature}")

    name = "mcc"
    protocols = ("uda",)  # it regularises predictions on a target domain besides the labelled source
    target_views = ("weak",)
    trains_backbone = True
    accepts_features = True  # through ctx.model only: runs on a frozen backbone's features (trainable: head)

    def training_step(self, batch: Batch, ctx: StepContext) -> StepOutput:
        joint = self.joint_pass(batch, ctx)
        transfer = class_confusion_loss(joint.target_logits, self.params.temperature)
        loss = joint.source_ce + self.params.trade_off * transfer
        return StepOutput(
            loss, {"source_ce": joint.source_ce.detach(), "source_acc": joint.source_acc, "mcc": transfer.detach()}
        )


@hookimpl
def register_strategies(register):
    register(Mcc)
