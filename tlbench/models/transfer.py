"""The network every strategy trains: a provider's backbone, then the harness's head.

The head is the standard domain-adaptation one: a bottleneck (Linear–BatchNorm–ReLU, 256 units
by default, TLlib's ``ImageClassifier``) and a linear classifier; the bottleneck may stack layers
and drop the norm (Ganin et al., JMLR 2016, Fig. 4: the MNIST label predictor is fc 100, fc 100
without normalisation). Every model exposes the same few methods, whatever the
backbone: ``forward``, ``forward_all`` (features, embedding, logits), ``head_parameters`` and
``backbone_stages`` (the stages the backbone's provider declared, or timm's ``group_matcher``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn


@dataclass
class Outputs:
    features: Tensor  # pooled backbone features (N×D)
    embedding: Tensor  # bottleneck output (N×E)
    logits: Tensor  # class scores (N×C)


class TransferModel(nn.Module):
    """Backbone + bottleneck + classifier.

    ``forward_all`` takes images (N×3×H×W) or already-pooled backbone features (N×D): the
    latter lets a frozen backbone's features be computed once and reused.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        *,
        bottleneck_dim: int = 256,
        bottleneck_layers: int = 1,
        bottleneck_norm: str = "batch",
        backbone_lr_scale: float = 0.1,
        backbone_name: str = "",
        feature_dim: int | None = None,
        stages: list[list[str]] | None = None,
    ):
        super().__init__()
        activations_out_of_place(backbone)
        self.backbone = backbone
        self.backbone_name = backbone_name
        self.backbone_lr_scale = backbone_lr_scale
        self.feature_dim = int(feature_dim if feature_dim is not None else cast(int, backbone.num_features))
        self.stage_names = stages
        self.num_classes = num_classes
        if bottleneck_dim > 0:
            self.bottleneck: nn.Module = make_bottleneck(
                self.feature_dim, bottleneck_dim, bottleneck_layers, bottleneck_norm
            )
            self.embed_dim = bottleneck_dim
        else:
            self.bottleneck = nn.Identity()
            self.embed_dim = self.feature_dim
        self.classifier = nn.Linear(self.embed_dim, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """Pooled backbone features; a 2-D input is taken as features already."""
        if x.dim() == 2:
            return x
        return self.backbone(x)

    def forward_all(self, x: Tensor) -> Outputs:
        f = self.features(x)
        e = self.bottleneck(f)
        return Outputs(f, e, self.classifier(e))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.bottleneck(self.features(x)))

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.bottleneck.parameters()) + list(self.classifier.parameters())

    def backbone_stages(self) -> list[list[nn.Parameter]]:
        """The backbone's parameters grouped by stage, from the input side to the output side.

        The stages its provider declared (parameter names); without them the model's own
        ``group_matcher(coarse=True)`` (every timm model has one), so it works for any
        architecture without hard-coded layer names.
        """
        if self.stage_names is None:
            return backbone_stages(self.backbone)
        params = dict(self.backbone.named_parameters())
        return [[params[n] for n in names] for names in self.stage_names]


def make_bottleneck(in_dim: int, dim: int, layers: int = 1, norm: str = "batch") -> nn.Sequential:
    """``layers`` times Linear(→dim), BatchNorm1d (``norm="batch"``) or nothing (``"none"``), ReLU.

    One layer with BatchNorm is TLlib's bottleneck; the parameter names of that default
    (``0.weight``, ``1.running_mean``, ...) are the ones earlier checkpoints hold.
    """
    if norm not in ("batch", "none"):
        raise ValueError(f"bottleneck norm must be 'batch' or 'none', got {norm!r}")
    modules: list[nn.Module] = []
    for i in range(layers):
        modules.append(nn.Linear(in_dim if i == 0 else dim, dim))
        if norm == "batch":
            modules.append(nn.BatchNorm1d(dim))
        modules.append(nn.ReLU(inplace=True))
    return nn.Sequential(*modules)


def backbone_stages(backbone: nn.Module) -> list[list[nn.Parameter]]:
    from timm.models import group_parameters

    params = dict(backbone.named_parameters())
    matcher = getattr(backbone, "group_matcher", None)
    if matcher is None:
        return [list(params.values())]
    groups = group_parameters(backbone, matcher(coarse=True))
    ordered = [groups[k] for k in sorted(groups)]
    return [[params[n] for n in names] for names in ordered if names]


def set_batchnorm_eval_where_frozen(module: nn.Module) -> None:
    """Keep running statistics fixed in every norm layer whose parameters do not train."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            frozen = all(not p.requires_grad for p in m.parameters(recurse=False))
            if frozen:
                m.eval()


#: activations whose in-place form makes autograd copy its input: their backward reads the input
#: (hardtanh_backward(grad, self), silu's, hardswish's, mish's), which the in-place op overwrites, so
#: autograd saves a clone first. ReLU, LeakyReLU, ELU, CELU and SELU read their output instead.
INPLACE_COPIES_INPUT = (nn.Hardtanh, nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.Mish)  # nn.ReLU6 is a Hardtanh
#: timm's own activation modules of the same kind (timm.layers.activations), by class name; its Mish
#: keeps no ``inplace``, its Sigmoid and Tanh read their output
TIMM_INPLACE_COPIES_INPUT = frozenset({"Swish", "HardSwish", "HardSigmoid", "HardMish"})


def activations_out_of_place(module: nn.Module) -> int:
    """Turn off ``inplace`` on the activations whose in-place form costs a copy in training; the
    number of modules changed.

    Under autograd an in-place ReLU6 (EfficientNet-Lite, MobileNetV2) or SiLU (EfficientNet) clones
    its input before overwriting it, because its backward needs that input: a full extra copy of
    every activation, 13 % of a 224 px Lite0 ``dann`` cell's CPU time in the profile
    (benchmarks/RESULTS.md, "In-place activations"). Out of place, the input is kept instead of a
    copy of it (the same memory) and the values are bit for bit the same.
    """
    changed = 0
    for m in module.modules():
        kind = isinstance(m, INPLACE_COPIES_INPUT) or type(m).__name__ in TIMM_INPLACE_COPIES_INPUT
        if kind and getattr(m, "inplace", False):
            cast(Any, m).inplace = False  # a plain bool attribute of the activation, not a submodule
            changed += 1
    return changed


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def to_channels_last(model: nn.Module) -> nn.Module:
    return model.to(memory_format=torch.channels_last)
