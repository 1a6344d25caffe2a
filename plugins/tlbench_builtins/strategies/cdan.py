"""``cdan``: conditional domain-adversarial training on the multilinear map of embedding and prediction."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tlbench import Batch, SetupContext, StepContext, StepOutput, Strategy, TransferModel, UserError, hookimpl
from tlbench_builtins.strategies.dann import DomainDiscriminator, reversal_coefficient, reverse_gradient


def multilinear_map(f: Tensor, g: Tensor) -> Tensor:
    """The flattened outer product ``g ⊗ f`` of each row: ``(N, E)`` and ``(N, C)`` give ``(N, C*E)``.

    Entry ``c*E + e`` of row ``i`` is ``g[i, c] * f[i, e]`` (class-major, TLlib's ``MultiLinearMap``
    layout: ``bmm(g.unsqueeze(2), f.unsqueeze(1))`` flattened).
    """
    return (g.unsqueeze(2) * f.unsqueeze(1)).flatten(1)


def randomized_multilinear_map(f: Tensor, g: Tensor, r_f: Tensor, r_g: Tensor) -> Tensor:
    """``(f R_f) ⊙ (g R_g) / sqrt(d)`` with fixed random ``R_f`` (E×d) and ``R_g`` (C×d): ``(N, d)``.

    The randomized multilinear map of Long et al. 2018 (their Eq. 6), whose inner product
    approximates the full multilinear map's without its ``E*C`` width.
    """
    d = r_f.shape[1]
    return (f @ r_f.to(f.dtype)) * (g @ r_g.to(g.dtype)) / math.sqrt(d)


def entropy_weights(probs: Tensor) -> Tensor:
    """CDAN+E's per-sample weights ``w = 1 + exp(-H(p))``, rescaled to sum to the batch size.

    ``H(p) = -sum_c p_c log p_c`` with ``0 log 0 = 0`` (computed exactly; TLlib adds 1e-5 inside the
    log, which changes ``H`` by less than ``C * 1e-5``). Confident predictions (low entropy) weigh
    up to twice as much as uniform ones. No gradient flows through the weights.
    """
    p = probs.detach().float()
    h = -torch.special.xlogy(p, p).sum(1)
    w = 1.0 + torch.exp(-h)
    return w / w.sum() * len(w)


def domain_adversarial_loss(
    discriminator: nn.Module, h: Tensor, n_source: int, coeff: float, weight: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """The domain loss of a discriminator behind a gradient reversal layer, and its accuracy.

    ``h`` holds the source rows first (domain label 1), then the target rows (label 0). It passes
    through a gradient reversal of coefficient ``coeff`` into ``discriminator`` (one logit per
    row). The loss is the mean over all ``N`` rows of ``w_i * BCE(d_i, y_i)`` (``w_i = 1`` without
    ``weight``), TLlib's ``F.binary_cross_entropy(d, label, weight, reduction="mean")`` as its CDAN
    loss computes it; with as many source as target rows (always so in tlbench's batches) and no
    weights it equals DANN's mean of the source and the target halves' mean BCEs.
    """
    logits = discriminator(reverse_gradient(h, coeff)).squeeze(1)
    labels = torch.zeros_like(logits)
    labels[:n_source] = 1.0
    bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    loss = (bce * weight.to(bce.dtype)).mean() if weight is not None else bce.mean()
    with torch.no_grad():
        acc = ((logits >= 0).float() == labels).float().mean()  # TLlib: sigmoid >= 0.5 says source
    return loss, acc


class ConditionalAdversary(nn.Module):
    """CDAN's adversarial branch: the conditioning map, the discriminator on it, and its loss.

    ``embed_dim`` E and ``num_classes`` C size the map: the multilinear one (width ``E*C``) or,
    with ``randomized``, the randomized one (width ``randomized_dim``), whose matrices are drawn
    once from torch's global generator here (so a seed reproduces them) and kept as buffers (so
    they round-trip in ``state_dict``; TLlib keeps them as plain attributes). They never train.
    """

    r_f: Tensor
    r_g: Tensor

    def __init__(
        self,
        embed_dim: int,
        num_classes: int,
        *,
        hidden: int = 1024,
        dropout: float = 0.0,
        entropy: bool = False,
        randomized: bool = False,
        randomized_dim: int = 1024,
    ):
        super().__init__()
        self.entropy = entropy
        self.randomized = randomized
        if randomized:
            self.register_buffer("r_f", torch.randn(embed_dim, randomized_dim))
            self.register_buffer("r_g", torch.randn(num_classes, randomized_dim))
        width = randomized_dim if randomized else embed_dim * num_classes
        self.discriminator = DomainDiscriminator(width, hidden, dropout)

    def condition(self, f: Tensor, logits: Tensor) -> Tensor:
        """The discriminator's input: the map of ``f`` and the softmax of ``logits``, the latter
        detached as TLlib does (the classifier gets no gradient from the domain loss)."""
        g = F.softmax(logits.detach(), dim=1)
        if self.randomized:
            return randomized_multilinear_map(f, g, self.r_f, self.r_g)
        return multilinear_map(f, g)

    def forward(self, f: Tensor, logits: Tensor, n_source: int, coeff: float) -> tuple[Tensor, Tensor]:
        """The (entropy-weighted) domain loss and the discriminator's accuracy; source rows first."""
        weight = entropy_weights(F.softmax(logits.detach().float(), dim=1)) if self.entropy else None
        return domain_adversarial_loss(self.discriminator, self.condition(f, logits), n_source, coeff, weight)


class Cdan(Strategy):
    """CDAN: align the domains adversarially, conditioning the discriminator on the predictions (Long et al. 2018).

    Long, Cao, Wang and Jordan, "Conditional Adversarial Domain Adaptation", NeurIPS 2018;
    reference implementation TLlib (thuml/Transfer-Learning-Library) ``tllib/alignment/cdan.py``
    and ``examples/domain_adaptation/image_classification/cdan.py`` (+ ``cdan.sh``).

    Source and target images go through the model as one batch. The discriminator sees, for each
    image, the multilinear map ``T(f, g)`` of its bottleneck embedding ``f`` (E wide) and its
    softmax prediction ``g`` (C classes), the flattened outer product (E*C wide); ``g`` is
    detached as in TLlib, so the domain loss trains the discriminator and, through a gradient
    reversal layer, the embedding, never the classifier. With ``randomized`` the map is the
    randomized ``(R_f f ⊙ R_g g) / sqrt(d)`` with fixed Gaussian ``R_f``, ``R_g`` (d =
    ``randomized_dim``). The map is chosen explicitly, as TLlib's ``--randomized`` flag does (the
    paper's rule switches to the randomized map above 4096 dimensions; TLlib's Office-31 and
    Office-Home runs keep the full map at 256*31 and 256*65, its DomainNet run randomizes).

    Loss = CE(source) + ``trade_off`` * L_d, with L_d the mean over the 2N images of
    ``w_i * BCE(D(T(f_i, g_i)), y_i)`` (y = 1 source, 0 target), TLlib's weighting (equal to the
    mean of the two halves' BCEs, as ``dann`` writes it, since source and target batches have
    the same size). ``w_i = 1``, or with ``entropy`` (CDAN+E) ``w_i = 1 + exp(-H(g_i))``
    rescaled to sum to 2N over the joint batch. The reversal coefficient is dann's
    ``2 / (1 + exp(-gamma * p)) - 1`` (p = fraction of training done); TLlib's
    ``WarmStartGradientReverseLayer(alpha=1, max_iters=1000)`` is ``2 / (1 + exp(-i / 1000)) - 1``
    at iteration i, which is this schedule with ``gamma = total_steps / 1000``: exactly TLlib's
    for gamma 2.5 over 2,500 steps (20 for its 20 × 1000-iteration Office-31 runs). The
    discriminator (dann's: Linear–BN–ReLU twice, 1024 wide, TLlib's) is the strategy's own
    module and trains at the full learning rate.

    Parameters:
        trade_off (1.0): weight of the domain-adversarial loss (TLlib's ``--trade-off`` default).
        gamma (10.0): steepness of the reversal-coefficient ramp (DANN's 10, as ``dann``; see above
            for TLlib's equivalent).
        entropy (False): CDAN+E entropy conditioning (TLlib's ``--entropy`` defaults to off and no
            ``cdan.sh`` line turns it on; the paper's best variant has it on).
        randomized (False): use the randomized multilinear map (TLlib's ``--randomized``, off).
        randomized_dim (1024): its output width d (TLlib's ``--randomized-dim`` default; its
            DomainNet line uses 51200 with a 1024-wide bottleneck).
        hidden (1024): width of the discriminator's two hidden layers (TLlib's ``hidden_size``).
        dropout (0.0): dropout after each hidden ReLU of the discriminator (TLlib's, with BN: none).

    TLlib's digits lines (``cdan.sh``, "# Digits") change no strategy parameter: they train LeNet
    or DTN from scratch with batch size 128, 2,500 iterations per epoch, lr 0.01 (0.1 for
    USPS→MNIST), which are recipe settings here.

    Differences from TLlib, none of which changes a default: the reversal schedule is written in
    the fraction of training (above); the entropy is exact (``0 log 0 = 0``) where TLlib adds
    1e-5 inside the log; the discriminator ends in a logit and the BCE takes logits (TLlib: a
    sigmoid, then BCE on probabilities, the same values); the random matrices of the randomized
    map are buffers, saved in ``state_dict`` (TLlib's are plain attributes, not saved).
    """

    @dataclass
    class Params:
        trade_off: float = 1.0
        gamma: float = 10.0
        entropy: bool = False
        randomized: bool = False
        randomized_dim: int = 1024
        hidden: int = 1024
        dropout: float = 0.0

        def __post_init__(self) -> None:
            check_adversary_params("cdan", self)

    name = "cdan"
    protocols = ("uda",)  # it aligns a source with a target domain: fine-tuning has one domain
    target_views = ("weak",)
    trains_backbone = True
    accepts_features = True  # through ctx.model only: runs on a frozen backbone's features (trainable: head)

    def setup(self, model: TransferModel, ctx: SetupContext) -> None:
        self.adversary = make_conditional_adversary(self.params, ctx)

    def training_step(self, batch: Batch, ctx: StepContext) -> StepOutput:
        joint = self.joint_pass(batch, ctx)
        out, n_source = joint.outputs, joint.n_source
        coeff = reversal_coefficient(ctx.progress, self.params.gamma)
        domain_loss, domain_acc = self.adversary(out.embedding, out.logits, n_source, coeff)
        loss = joint.source_ce + self.params.trade_off * domain_loss
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


class AdversaryParams(Protocol):
    """The parameters of CDAN's adversary, which strategies built on it (``bsp``) share."""

    trade_off: float
    gamma: float
    entropy: bool
    randomized: bool
    randomized_dim: int
    hidden: int
    dropout: float


def check_adversary_params(who: str, p: AdversaryParams) -> None:
    """``UserError("<who>: params.x must ...")`` for the first of CDAN's adversary parameters that is invalid."""
    if p.trade_off < 0:
        raise UserError(f"{who}: params.trade_off must be >= 0, got {p.trade_off}")
    if p.gamma < 0:
        raise UserError(f"{who}: params.gamma must be >= 0 (0 keeps the reversal off), got {p.gamma}")
    if p.randomized_dim < 1:
        raise UserError(f"{who}: params.randomized_dim must be a positive width, got {p.randomized_dim}")
    if p.hidden < 1:
        raise UserError(f"{who}: params.hidden must be a positive width, got {p.hidden}")
    if not 0.0 <= p.dropout < 1.0:
        raise UserError(f"{who}: params.dropout must lie in [0, 1), got {p.dropout}")


def make_conditional_adversary(p: AdversaryParams, ctx: SetupContext) -> ConditionalAdversary:
    """CDAN's adversary for a model of ``ctx``'s sizes, with ``p``'s map, weighting and discriminator."""
    return ConditionalAdversary(
        ctx.embed_dim,
        ctx.num_classes,
        hidden=p.hidden,
        dropout=p.dropout,
        entropy=p.entropy,
        randomized=p.randomized,
        randomized_dim=p.randomized_dim,
    )


@hookimpl
def register_strategies(register):
    register(Cdan)
