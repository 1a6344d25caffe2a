"""``mdd``: margin disparity discrepancy, an adversarial classifier head behind a warm-start gradient reversal."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tlbench import Batch, SetupContext, StepContext, StepOutput, Strategy, TransferModel, UserError, hookimpl
from tlbench_builtins.strategies.dann import reversal_coefficient, reverse_gradient

#: tllib's ``shift_log`` offset: ``log(min(x + 1e-6, 1))`` keeps ``log(1 - p)`` finite when ``p`` reaches 1.
SHIFT_LOG_OFFSET = 1e-6


def warm_start_coefficient(progress: float, hi: float = 0.1, gamma: float = 10.0) -> float:
    """The reversal coefficient of tllib's ``WarmStartGradientReverseLayer`` (lo = 0), on progress ``p``.

    tllib computes ``2 * hi / (1 + exp(-alpha * i / max_iters)) - hi`` from the iteration ``i``
    (MDD: ``alpha = 1``, ``max_iters = 1000``, ``hi = 0.1``); with ``i = p * total_steps`` that is
    ``hi * (2 / (1 + exp(-gamma * p)) - 1)`` for ``gamma = total_steps / 1000``: ``hi`` times
    DANN's schedule. 0 at the start, rising towards ``hi``.
    """
    return hi * reversal_coefficient(progress, gamma)


def margin_disparity_terms(
    logits_s: Tensor, adv_logits_s: Tensor, logits_t: Tensor, adv_logits_t: Tensor
) -> tuple[Tensor, Tensor]:
    """The two disparities of MDD for classification, each averaged over its domain, in float32.

    With ``h = argmax`` of the main head's logits (no gradient flows through it) and ``σ`` the
    softmax of the adversarial head's logits:

    - source: ``CE(adv_logits_s, h_s) = -log σ(adv_s)[h_s]``: the adversary's disagreement with
      the main head on the source;
    - target: ``-log(min(1 - σ(adv_t)[h_t] + 1e-6, 1))``: tllib's ``shift_log`` form of the
      adversary's agreement with the main head on the target (large when it agrees).

    The margin disparity discrepancy tllib computes is ``-margin * source - target`` and the
    adversary maximises it; the transfer loss is its negative, ``margin * source + target``.
    """
    with torch.autocast(device_type=logits_s.device.type, enabled=False):
        pseudo_s = logits_s.detach().argmax(1)
        pseudo_t = logits_t.detach().argmax(1)
        source = F.cross_entropy(adv_logits_s.float(), pseudo_s)
        p_t = F.softmax(adv_logits_t.float(), dim=1).gather(1, pseudo_t.unsqueeze(1)).squeeze(1)
        target = -torch.log(torch.clamp(1.0 - p_t + SHIFT_LOG_OFFSET, max=1.0)).mean()
    return source, target


class AdversarialHead(nn.Sequential):
    """tllib's MDD ``adv_head``: Linear–ReLU–Dropout–Linear, weights N(0, 0.01²) and biases 0."""

    def __init__(self, in_features: int, num_classes: int, hidden: int = 1024, dropout: float = 0.5):
        first, last = nn.Linear(in_features, hidden), nn.Linear(hidden, num_classes)
        for layer in (first, last):
            nn.init.normal_(layer.weight, 0.0, 0.01)
            nn.init.zeros_(layer.bias)
        super().__init__(first, nn.ReLU(), nn.Dropout(dropout), last)


class Mdd(Strategy):
    """MDD: an adversarial classifier head maximises the margin disparity discrepancy that the features minimise.

    Zhang, Liu, Long and Jordan, "Bridging Theory and Algorithm for Domain Adaptation", ICML 2019;
    reference implementation tllib (thuml/Transfer-Learning-Library) ``tllib/alignment/mdd.py``
    (``ClassificationMarginDisparityDiscrepancy``, ``shift_log``, the ``ImageClassifier``'s
    ``adv_head`` and warm-start gradient reversal) and
    ``examples/domain_adaptation/image_classification/mdd.py`` (training step, defaults).

    Source and target images go through the model as one batch. The main head's argmax gives
    pseudo-labels ``h`` on both domains (detached). An adversarial head ``f'`` (the strategy's own
    module) sees the bottleneck embedding through a gradient reversal layer. Loss =
    CE(source) + ``trade_off`` * (``margin`` * CE(f'(x_s), h_s) − mean log(1 − softmax(f'(x_t))[h_t])),
    the second factor being tllib's ``-mdd``: minimising it, the adversarial head agrees with the
    main head on the source and disagrees with it on the target (it maximises the discrepancy),
    while the reversed gradient makes the features minimise that discrepancy. The main head
    receives no gradient from the transfer term (argmax). The reversal coefficient is tllib's
    warm start ``grl_hi * (2 / (1 + exp(-gamma * p)) - 1)``, ``p`` the fraction of training done:
    tllib writes it ``2 hi / (1 + exp(-i / 1000)) - hi`` in the iteration ``i``, so
    ``gamma = total_steps / 1000`` reproduces it exactly (2.5 on a 2,500-step run). The default 10
    is dann's and cdan's ramp: the coefficient is close to ``hi`` from mid-training on, as in tllib's
    own full-length recipes (Office-31 20 × 1,000 iterations, digits 20 × 2,500: ``gamma`` 20 and 50).

    Differences from tllib: there, the main head is a second MLP of the adversarial head's form
    (Linear(1024)–ReLU–Dropout(0.5)–Linear) on a 1024-wide bottleneck with Dropout(0.5) (2048 on
    Office-Home and DomainNet), so the two heads share one hypothesis class as the theory assumes;
    here the main classifier stays the TransferModel's linear one on its bottleneck
    (``bottleneck_dim`` is the recipe's, 256 by default, not this strategy's), and only the
    adversarial head is tllib's MLP, at width ``hidden`` on that bottleneck. The pseudo-label
    losses are averaged per domain (tllib sums the two per-sample losses and averages, which is
    the same for equal source and target batches and breaks for unequal ones).
    tllib's digits recipe (mdd.sh "# Digits") changes no parameter of this strategy: only the
    recipe (lr 0.01, batch 128, 2,500 iterations per epoch, LeNet/DTN from scratch).

    Parameters:
        margin (4.0): margin γ weighting the source disparity (tllib's ``--margin`` default;
            γ = 1 gives the plain disparity discrepancy).
        trade_off (1.0): weight of the transfer loss (tllib's ``--trade-off`` default).
        hidden (1024): width of the adversarial head's hidden layer (tllib's ``width``, which its
            script sets to ``--bottleneck-dim``, default 1024).
        dropout (0.5): dropout after the adversarial head's hidden ReLU (tllib's 0.5).
        grl_hi (0.1): the value the reversal coefficient rises towards (tllib's ``hi = 0.1``).
        gamma (10.0): steepness of the warm start in progress (dann's); ``total_steps / 1000``
            reproduces tllib's ``max_iters = 1000`` schedule, 2.5 for 2,500 steps.
    """

    @dataclass
    class Params:
        margin: float = 4.0
        trade_off: float = 1.0
        hidden: int = 1024
        dropout: float = 0.5
        grl_hi: float = 0.1
        gamma: float = 10.0

        def __post_init__(self) -> None:
            if self.margin <= 0:
                raise UserError(f"mdd: params.margin must be > 0 (tllib's default is 4), got {self.margin}")
            if self.trade_off < 0:
                raise UserError(f"mdd: params.trade_off must be >= 0, got {self.trade_off}")
            if self.hidden < 1:
                raise UserError(f"mdd: params.hidden must be a positive width, got {self.hidden}")
            if not 0.0 <= self.dropout < 1.0:
                raise UserError(f"mdd: params.dropout must lie in [0, 1), got {self.dropout}")
            if self.grl_hi <= 0:
                raise UserError(f"mdd: params.grl_hi must be > 0 (tllib's default is 0.1), got {self.grl_hi}")
            if self.gamma <= 0:
                raise UserError(f"mdd: params.gamma must be > 0, got {self.gamma}")

    name = "mdd"
    protocols = ("uda",)  # it aligns a source with a target domain: fine-tuning has one domain
    target_views = ("weak",)
    trains_backbone = True
    accepts_features = True  # through ctx.model only: runs on a frozen backbone's features (trainable: head)

    def setup(self, model: TransferModel, ctx: SetupContext) -> None:
        self.adv_head = AdversarialHead(ctx.embed_dim, ctx.num_classes, self.params.hidden, self.params.dropout)

    def training_step(self, batch: Batch, ctx: StepContext) -> StepOutput:
        joint = self.joint_pass(batch, ctx)
        out, n_source = joint.outputs, joint.n_source
        logits_s, logits_t = joint.source_logits, joint.target_logits

        coeff = warm_start_coefficient(ctx.progress, self.params.grl_hi, self.params.gamma)
        adv_logits = self.adv_head(reverse_gradient(out.embedding, coeff))
        source_term, target_term = margin_disparity_terms(
            logits_s, adv_logits[:n_source], logits_t, adv_logits[n_source:]
        )
        transfer = self.params.margin * source_term + target_term
        loss = joint.source_ce + self.params.trade_off * transfer

        with torch.no_grad():
            agree_t = (adv_logits[n_source:].argmax(1) == logits_t.argmax(1)).float().mean()
        return StepOutput(
            loss,
            {
                "source_ce": joint.source_ce.detach(),
                "source_acc": joint.source_acc,
                "transfer_loss": transfer.detach(),
                "source_disparity": source_term.detach(),
                "target_disparity": target_term.detach(),
                "adv_target_agreement": agree_t,
                "grl_coeff": coeff,
            },
        )


@hookimpl
def register_strategies(register):
    register(Mdd)
