"""``minent``: entropy minimisation, making the predictions on target images confident."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tlbench import Batch, StepContext, StepOutput, Strategy, UserError, hookimpl


def mean_entropy(logits: Tensor) -> Tensor:
    """The mean over the rows of ``logits`` (n×C) of the entropy ``H(p) = -sum_c p_c log p_c`` of ``p = softmax``.

    Computed from ``log_softmax`` (exact, no epsilon inside the logarithm) and in float32 whatever
    the autocast precision: a bf16 softmax rounds the small probabilities the entropy is made of.
    """
    if logits.dim() != 2 or len(logits) == 0:
        raise ValueError(f"mean_entropy needs an n×C batch of logits with n >= 1, got {tuple(logits.shape)}")
    with torch.autocast(device_type=logits.device.type, enabled=False):
        log_p = torch.log_softmax(logits.float(), dim=1)
        return -(log_p.exp() * log_p).sum(dim=1).mean()


class MinEnt(Strategy):
    """MinEnt: minimise the entropy of the predictions on unlabelled target images (Grandvalet & Bengio 2004).

    Grandvalet & Bengio, "Semi-supervised Learning by Entropy Minimization", NeurIPS 2004. A
    standard domain-adaptation baseline: the entropy term of Long et al.'s RTN ("Unsupervised
    Domain Adaptation with Residual Transfer Networks", NeurIPS 2016), the MinEnt of Vu et al.
    ("ADVENT: Adversarial Entropy Minimization for Domain Adaptation in Semantic Segmentation",
    CVPR 2019) and the ENT baseline of Saito et al. ("Semi-supervised Domain Adaptation via
    Minimax Entropy", ICCV 2019; code: VisionLearningGroup/SSDA_MME, ``utils/loss.py`` ``entropy``).

    Source and target images go through the model as one batch (``Strategy.joint_pass``); the
    loss is CE(source) + ``trade_off`` * mean over the target images of ``H(softmax(logits))``.
    The entropy term pushes the decision boundary away from dense regions of target data (the
    cluster assumption); it aligns nothing, so a target whose classes the source model confuses
    is made confidently wrong: run it next to ``source_only`` to see which. Unlike SSDA_MME's
    ENT, which takes a second optimizer step on the entropy alone, the two terms are summed in
    one step, as the other tlbench methods do. No module of its own.

    Parameters:
        trade_off (0.1): weight of the entropy term (SSDA_MME's ``--lamda`` default for its
            ENT baseline).
    """

    @dataclass
    class Params:
        trade_off: float = 0.1

        def __post_init__(self) -> None:
            if not self.trade_off >= 0:
                raise UserError(f"minent: params.trade_off must be a number >= 0, got {self.trade_off!r}")

    name = "minent"
    protocols = ("uda",)  # it needs unlabelled target images
    target_views = ("weak",)
    trains_backbone = True

    def training_step(self, batch: Batch, ctx: StepContext) -> StepOutput:
        joint = self.joint_pass(batch, ctx)
        entropy = mean_entropy(joint.target_logits)
        loss = joint.source_ce + self.params.trade_off * entropy
        return StepOutput(
            loss,
            {"source_ce": joint.source_ce.detach(), "source_acc": joint.source_acc, "target_entropy": entropy.detach()},
        )


@hookimpl
def register_strategies(register):
    register(MinEnt)
