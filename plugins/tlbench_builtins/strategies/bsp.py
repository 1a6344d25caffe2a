"""``bsp``: batch spectral penalization on top of an adversarial method (DANN or CDAN)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from tlbench import Batch, SetupContext, StepContext, StepOutput, Strategy, TransferModel, UserError, hookimpl
from tlbench_builtins.strategies.cdan import (
    check_adversary_params,
    domain_adversarial_loss,
    make_conditional_adversary,
)
from tlbench_builtins.strategies.dann import DomainDiscriminator, reversal_coefficient

BASES = ("dann", "cdan")


def top_singular_values_squared(f: Tensor, k: int = 1) -> Tensor:
    """``sum_{i<=k} sigma_i(f)^2``: the squares of the ``k`` largest singular values of ``f`` (N×E).

    Computed in float32 at least, with autocast off (SVD has no half-precision kernel). ``k`` larger than
    ``min(N, E)`` sums them all (then it is ``||f||_F^2``). Its gradient is
    ``2 * sum_{i<=k} sigma_i u_i v_i^T``, well defined where ``sigma_k > sigma_{k+1}``.
    """
    with torch.autocast(device_type=f.device.type, enabled=False):
        s = torch.linalg.svdvals(f.to(torch.promote_types(f.dtype, torch.float32)))
        return s[:k].pow(2).sum()


def batch_spectral_penalty(f_s: Tensor, f_t: Tensor, k: int = 1) -> Tensor:
    """BSP: ``sum_{i<=k} (sigma_{s,i}^2 + sigma_{t,i}^2)`` over the source and the target batches,
    each decomposed on its own (Chen et al. 2019, Eq. 5; TLlib's ``BatchSpectralPenalizationLoss``
    with its ``k = 1``)."""
    return top_singular_values_squared(f_s, k) + top_singular_values_squared(f_t, k)


class Bsp(Strategy):
    """BSP: penalize the largest singular values of the embedding batches on top of DANN or CDAN (Chen et al. 2019).

    Chen, Wang, Long and Wang, "Transferability vs. Discriminability: Batch Spectral Penalization
    for Adversarial Domain Adaptation", ICML 2019; reference implementation TLlib
    (thuml/Transfer-Learning-Library) ``tllib/alignment/bsp.py`` and
    ``examples/domain_adaptation/image_classification/bsp.py`` (+ ``bsp.sh``).

    Adversarial alignment makes the features transferable but lets a few top eigen-directions
    dominate them, at the expense of discriminability; BSP penalizes those directions. With f the
    bottleneck embeddings (TLlib penalizes the same features its discriminator sees) of the N
    source images (F_s) and the N target images (F_t), each batch decomposed on its own:

        loss = CE(source) + ``trade_off`` * L_adv + ``trade_off_bsp`` * sum_{i<=k} (sigma_i(F_s)^2 + sigma_i(F_t)^2)

    L_adv is the adversarial loss of ``base``: ``dann`` (TLlib's ``bsp.py``: a discriminator on f
    behind a gradient reversal layer, composed from the ``dann`` built-in's pieces) or ``cdan``
    (the paper's other base: the ``cdan`` built-in's conditional adversary on the multilinear map
    of f and the detached softmax prediction, with its ``entropy``/``randomized`` options). The
    domain loss is the mean BCE over the joint batch, equal to TLlib's DANN mean of the source
    and the target halves (the two have the same size in tlbench's batches); the reversal
    coefficient is ``dann``'s ``2 / (1 + exp(-gamma * p)) - 1`` (TLlib's warm start at iteration
    i is ``2 / (1 + exp(-i / 1000)) - 1``, i.e. ``gamma = total_steps / 1000``: 2.5 over 2,500
    steps reproduces it exactly). The discriminator is the strategy's own module and trains at
    the full learning rate.

    Unlike TLlib's ``bsp.py``, there is no built-in source-only pre-training (TLlib first trains
    3 epochs on the source at lr 0.001, then adapts from that checkpoint at lr 0.003): the run
    starts from the backbone's weights as every strategy here does.

    Parameters:
        base ("dann"): the adversarial method penalized, ``dann`` (TLlib's) or ``cdan`` (the paper's).
        trade_off (1.0): weight of the adversarial loss (TLlib's ``--trade-off`` default).
        trade_off_bsp (2e-4): weight of the spectral penalty (TLlib's ``--trade-off-bsp`` default;
            its digits lines in ``bsp.sh``, "# Digits", use 1e-4).
        k (1): how many of the largest singular values are penalized per batch (TLlib's and the
            paper's 1).
        gamma (10.0): steepness of the reversal-coefficient ramp (DANN's 10, as ``dann``).
        hidden (1024): width of the discriminator's two hidden layers (TLlib's ``hidden_size``).
        dropout (0.0): dropout after each hidden ReLU of the discriminator (TLlib's, with BN: none).
        entropy (False): with ``base: cdan``, CDAN+E entropy conditioning (``cdan``'s default).
        randomized (False): with ``base: cdan``, the randomized multilinear map (``cdan``'s default).
        randomized_dim (1024): with ``base: cdan`` and ``randomized``, its width (``cdan``'s default).
    """

    @dataclass
    class Params:
        base: Literal["dann", "cdan"] = "dann"
        trade_off: float = 1.0
        trade_off_bsp: float = 2e-4
        k: int = 1
        gamma: float = 10.0
        hidden: int = 1024
        dropout: float = 0.0
        entropy: bool = False
        randomized: bool = False
        randomized_dim: int = 1024

        def __post_init__(self) -> None:
            if self.base not in BASES:
                raise UserError(f"bsp: params.base must be one of {', '.join(BASES)}, got {self.base!r}")
            check_adversary_params("bsp", self)
            if self.trade_off_bsp < 0:
                raise UserError(f"bsp: params.trade_off_bsp must be >= 0, got {self.trade_off_bsp}")
            if self.k < 1:
                raise UserError(f"bsp: params.k must be a positive number of singular values, got {self.k}")
            if self.base != "cdan" and (self.entropy or self.randomized):
                which = "entropy" if self.entropy else "randomized"
                raise UserError(f"bsp: params.{which} applies only to base: cdan, got base: {self.base}")

    name = "bsp"
    protocols = ("uda",)  # it aligns a source with a target domain: fine-tuning has one domain
    target_views = ("weak",)
    trains_backbone = True
    accepts_features = True  # through ctx.model only: runs on a frozen backbone's features (trainable: head)

    def setup(self, model: TransferModel, ctx: SetupContext) -> None:
        if self.params.base == "cdan":
            self.adversary = make_conditional_adversary(self.params, ctx)
        else:
            self.discriminator = DomainDiscriminator(ctx.embed_dim, self.params.hidden, self.params.dropout)

    def training_step(self, batch: Batch, ctx: StepContext) -> StepOutput:
        joint = self.joint_pass(batch, ctx)
        out, n_source = joint.outputs, joint.n_source

        coeff = reversal_coefficient(ctx.progress, self.params.gamma)
        if self.params.base == "cdan":
            domain_loss, domain_acc = self.adversary(out.embedding, out.logits, n_source, coeff)
        else:
            domain_loss, domain_acc = domain_adversarial_loss(self.discriminator, out.embedding, n_source, coeff)
        penalty = batch_spectral_penalty(out.embedding[:n_source], out.embedding[n_source:], self.params.k)
        loss = joint.source_ce + self.params.trade_off * domain_loss + self.params.trade_off_bsp * penalty

        return StepOutput(
            loss,
            {
                "source_ce": joint.source_ce.detach(),
                "source_acc": joint.source_acc,
                "domain_loss": domain_loss.detach(),
                "domain_acc": domain_acc,
                "grl_coeff": coeff,
                "bsp_penalty": penalty.detach(),
            },
        )


@hookimpl
def register_strategies(register):
    register(Bsp)
