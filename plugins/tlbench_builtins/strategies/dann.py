"""``dann``: domain-adversarial training through a gradient reversal layer."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tlbench import Batch, SetupContext, StepContext, StepOutput, Strategy, TransferModel, UserError, hookimpl


class GradientReversal(torch.autograd.Function):
    """Identity forward; multiplies the incoming gradient by ``-coeff`` backward (Ganin & Lempitsky 2015)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, coeff: float) -> Tensor:
        ctx.coeff = float(coeff)
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad.neg() * ctx.coeff, None


def reverse_gradient(x: Tensor, coeff: float = 1.0) -> Tensor:
    return GradientReversal.apply(x, coeff)


def reversal_coefficient(progress: float, gamma: float = 10.0) -> float:
    """The DANN schedule ``2 / (1 + exp(-gamma * p)) - 1``: 0 at the start, towards 1 at the end.

    It damps the discriminator's noisy gradient early in training (Ganin et al. 2016).
    """
    return 2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0


class DomainDiscriminator(nn.Sequential):
    """Source-vs-target classifier on the bottleneck embedding, one logit per image.

    tllib style: Linear–BN–ReLU–Linear–BN–ReLU–Linear; optional dropout after each ReLU."""

    def __init__(self, in_features: int, hidden: int = 1024, dropout: float = 0.0):
        def block(n_in: int) -> list[nn.Module]:
            layers: list[nn.Module] = [nn.Linear(n_in, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)]
            return layers + ([nn.Dropout(dropout)] if dropout > 0 else [])

        super().__init__(*block(in_features), *block(hidden), nn.Linear(hidden, 1))


class Dann(Strategy):
    """DANN: align the domains adversarially through a gradient reversal layer (Ganin et al. 2016).

    Ganin et al., "Domain-Adversarial Training of Neural Networks", JMLR 17(59), 2016.

    Source and target images go through the model as one batch. A domain discriminator learns to
    tell their bottleneck embeddings apart, while a gradient reversal layer between the embedding
    and the discriminator makes the feature extractor learn to confuse it, aligning the two
    domains. Loss = CE(source) + ``trade_off`` * BCE(domain), the domain loss being the mean of
    the source (label 1) and target (label 0) binary cross-entropies. The reversal coefficient
    follows ``2 / (1 + exp(-gamma * p)) - 1`` with ``p`` the fraction of training done. The
    discriminator is the strategy's own module and trains at the full learning rate.

    Parameters:
        trade_off (1.0): weight of the domain-adversarial loss (tllib's default).
        gamma (10.0): steepness of the reversal-coefficient ramp (the paper's 10).
        hidden (1024): width of the discriminator's two hidden layers (the paper's 1024).
        dropout (0.0): dropout after each hidden ReLU of the discriminator (tllib's variant
            without BatchNorm uses 0.5; with BatchNorm, as here and in tllib's default, none).
    """

    @dataclass
    class Params:
        trade_off: float = 1.0
        gamma: float = 10.0
        hidden: int = 1024
        dropout: float = 0.0

        def __post_init__(self) -> None:
            if self.trade_off < 0:
                raise UserError(f"dann: params.trade_off must be >= 0, got {self.trade_off}")
            if self.hidden < 1:
                raise UserError(f"dann: params.hidden must be a positive width, got {self.hidden}")
            if not 0.0 <= self.dropout < 1.0:
                raise UserError(f"dann: params.dropout must lie in [0, 1), got {self.dropout}")

    name = "dann"
    protocols = ("uda",)  # it aligns a source with a target domain: fine-tuning has one domain
    target_views = ("weak",)
    trains_backbone = True
    accepts_features = True  # through ctx.model only: runs on a frozen backbone's features (trainable: head)

    def setup(self, model: TransferModel, ctx: SetupContext) -> None:
        self.discriminator = DomainDiscriminator(ctx.embed_dim, self.params.hidden, self.params.dropout)

    def training_step(self, batch: Batch, ctx: StepContext) -> StepOutput:
        joint = self.joint_pass(batch, ctx)
        out, n_source = joint.outputs, joint.n_source

        coeff = reversal_coefficient(ctx.progress, self.params.gamma)
        domain_logits = self.discriminator(reverse_gradient(out.embedding, coeff)).squeeze(1)
        is_source = torch.zeros_like(domain_logits)
        is_source[:n_source] = 1.0
        d_s, d_t = domain_logits[:n_source], domain_logits[n_source:]
        domain_loss = 0.5 * (
            F.binary_cross_entropy_with_logits(d_s, is_source[:n_source])
            + F.binary_cross_entropy_with_logits(d_t, is_source[n_source:])
        )
        loss = joint.source_ce + self.params.trade_off * domain_loss

        with torch.no_grad():
            domain_acc = ((domain_logits > 0).float() == is_source).float().mean()
        return StepOutput(
            loss,
            {
                "source_ce": joint.source_ce.detach(),
                "source_acc": joint.source_acc,
                "domain_loss": domain_loss.detach(),
                "domain_acc": domain_acc,
                "grl_coeff": coeff,
            },
        )


@hookimpl
def register_strategies(register):
    register(Dann)
