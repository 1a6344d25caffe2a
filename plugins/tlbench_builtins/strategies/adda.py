"""``adda``: adversarial discriminative domain adaptation, a target encoder against a frozen source model."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from tlbench import (
    Batch,
    ParamGroup,
    SetupContext,
    StepContext,
    Strategy,
    TransferModel,
    Update,
    UserError,
    hookimpl,
)
from tlbench_builtins.strategies.dann import DomainDiscriminator, reversal_coefficient, reverse_gradient


def discriminator_loss(d_source: Tensor, d_target: Tensor) -> Tensor:
    """The discriminator's objective: ``BCE(d(source), 1) + BCE(d(target), 0)``, each averaged over its
    images (Tzeng et al. 2017, Eq. 7's ``L_advD``; logits in, so the sigmoid is folded in)."""
    return F.binary_cross_entropy_with_logits(d_source, torch.ones_like(d_source)) + F.binary_cross_entropy_with_logits(
        d_target, torch.zeros_like(d_target)
    )


def inverted_label_loss(d_target: Tensor) -> Tensor:
    """The target encoder's objective: ``BCE(d(target), 1)``, the GAN loss with inverted labels
    (Tzeng et al. 2017, Eq. 9's ``L_advM``): it gives the encoder strong gradients even when the
    discriminator wins, where minimising ``-L_advD`` would saturate."""
    return F.binary_cross_entropy_with_logits(d_target, torch.ones_like(d_target))


class Adda(Strategy):
    """ADDA: a target encoder, started as the source model, learns to fool a domain discriminator (Tzeng et al. 2017).

    Tzeng, Hoffman, Saenko & Darrell, "Adversarial Discriminative Domain Adaptation", CVPR 2017.
    Reference implementation: TLlib, ``tllib/alignment/adda.py`` and
    ``examples/domain_adaptation/image_classification/adda.py``.

    Two stages. The source model (backbone + bottleneck + classifier) is first trained on the
    labelled source alone: it is this cell's teacher, a ``teacher_strategy`` cell of the same
    backbone, pair and seed that the runner trains once and shares, as it does for ``kd`` (a
    ``source_only`` row of the same suite is that very cell). The target model starts as a copy
    of it; the source model stays frozen and embeds the source images, and the classifier is
    never trained again: only the target encoder (backbone + bottleneck) and a domain
    discriminator on the embeddings learn, and the target is classified by the source classifier
    on the target encoder's embeddings. Loss terms (embeddings ``e``, discriminator logits ``d``):

    - ``updates: alternating`` (the paper's): each step two updates, the discriminator
      minimising ``BCE(d(e_s), 1) + BCE(d(e_t), 0)`` (:func:`discriminator_loss`), then the target
      encoder minimising ``BCE(d(e_t), 1)`` (:func:`inverted_label_loss`), each moving only its
      own parameters.
    - ``updates: grl`` (TLlib's adda.py): one update through a gradient reversal layer, the
      DANN form: ``0.5 * (BCE(d(e_s), 1) + BCE(d(e_t), 0))`` with the reversal coefficient rising
      from 0 to ``grl_max`` as ``grl_max * (2 / (1 + exp(-gamma p)) - 1)`` (TLlib's
      ``WarmStartGradientReverseLayer(hi=2, max_iters=1000)``; on a 2,500-step run gamma 2.5 is
      its schedule exactly).

    The discriminator is TLlib's (dann's: Linear-BN-ReLU ×2, 1024 wide; the paper's had 500-500
    without BatchNorm). TLlib pretrains its source model with its own epochs and rate
    (``--pretrain-epochs``, ``--pretrain-lr``); here the teacher cell uses the suite's recipe.

    Parameters:
        teacher_strategy ("source_only"): the registered strategy that trains the source model.
        teacher_params ({}): its parameters (its defaults when empty).
        updates ("alternating"): ``alternating`` (the paper's two updates a step) or ``grl``
            (TLlib's one update through gradient reversal).
        hidden (1024): width of the discriminator's two hidden layers (TLlib's).
        grl_max (2.0): the reversal coefficient's final value under ``grl`` (TLlib's ``hi``).
        gamma (10.0): steepness of its ramp under ``grl`` (dann's; 2.5 reproduces TLlib on 2,500 steps).
    """

    @dataclass
    class Params:
        teacher_strategy: str = "source_only"
        teacher_params: dict[str, Any] = field(default_factory=dict)
        updates: Literal["alternating", "grl"] = "alternating"
        hidden: int = 1024
        grl_max: float = 2.0
        gamma: float = 10.0

        def __post_init__(self) -> None:
            if self.updates not in ("alternating", "grl"):
                raise UserError(f"adda: params.updates must be 'alternating' or 'grl', got {self.updates!r}")
            if self.hidden < 1:
                raise UserError(f"adda: params.hidden must be a positive width, got {self.hidden}")
            if self.grl_max <= 0:
                raise UserError(f"adda: params.grl_max must be > 0, got {self.grl_max}")
            if not isinstance(self.teacher_params, dict):
                raise UserError(f"adda: params.teacher_params must be a mapping, got {self.teacher_params!r}")

    name = "adda"
    protocols = ("uda",)  # a source model adapted to an unlabelled target domain
    target_views = ("weak",)
    trains_backbone = True
    needs_teacher = True

    def setup(self, model: TransferModel, ctx: SetupContext) -> None:
        if ctx.teacher is None:
            raise UserError("adda needs its trained source model (the teacher cell); none was given")
        model.load_state_dict(ctx.teacher.state_dict())  # the target encoder starts as the source model
        self.discriminator = DomainDiscriminator(ctx.embed_dim, self.params.hidden)

    def param_groups(self, model: TransferModel) -> list[ParamGroup]:
        """The target encoder and the discriminator; the source classifier stays as trained."""
        return [
            ParamGroup("backbone", list(model.backbone.parameters()), lr_scale=model.backbone_lr_scale),
            ParamGroup("bottleneck", list(model.bottleneck.parameters())),
            ParamGroup("discriminator", list(self.discriminator.parameters())),
        ]

    def training_updates(self, batch: Batch, ctx: StepContext) -> Iterator[Update]:
        if batch.target is None:
            raise ValueError("adda needs target images: the batch has no 'weak' target view")
        source_model = ctx.teacher
        if not isinstance(source_model, TransferModel):
            raise ValueError("adda needs its trained source model (a TransferModel) as ctx.teacher")
        with torch.no_grad():
            e_source = source_model.forward_all(batch.source).embedding
        e_target = ctx.model.forward_all(batch.target).embedding
        if self.params.updates == "grl":
            yield self._grl_update(e_source, e_target, ctx.progress)
            return
        n = len(e_source)
        d = self.discriminator(torch.cat([e_source, e_target.detach()])).squeeze(1)
        with torch.no_grad():
            domain_acc = torch.cat([d[:n] > 0, d[n:] <= 0]).float().mean()
        yield Update("discriminator", discriminator_loss(d[:n], d[n:]), ("discriminator",), {"domain_acc": domain_acc})
        # the discriminator sees the same mixed batch as in its own update (its BatchNorm normalises
        # over both domains); only the target half carries a gradient to the encoder
        fooled = inverted_label_loss(self.discriminator(torch.cat([e_source, e_target])).squeeze(1)[n:])
        yield Update("encoder", fooled, ("backbone", "bottleneck"), {"encoder_loss": fooled.detach()})

    def _grl_update(self, e_source: Tensor, e_target: Tensor, progress: float) -> Update:
        coeff = self.params.grl_max * reversal_coefficient(progress, self.params.gamma)
        n = len(e_source)
        d = self.discriminator(reverse_gradient(torch.cat([e_source, e_target]), coeff)).squeeze(1)
        loss = 0.5 * discriminator_loss(d[:n], d[n:])
        with torch.no_grad():
            domain_acc = torch.cat([d[:n] > 0, d[n:] <= 0]).float().mean()
        return Update("", loss, None, {"domain_loss": loss.detach(), "domain_acc": domain_acc, "grl_coeff": coeff})


@hookimpl
def register_strategies(register):
    register(Adda)
