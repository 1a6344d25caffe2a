"""Tiny parts for fast strategy tests: timm's 99k-parameter ``test_efficientnet``, 3 classes, 32 px."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from tlbench.models.transfer import TransferModel
from tlbench.training.strategy import Batch

TINY_BACKBONE = "test_efficientnet"
TINY_CLASSES = 3
TINY_BOTTLENECK = 16
TINY_IMAGE_SIZE = 32
TINY_BATCH_SIZE = 4


def make_tiny_backbone(seed: int = 0) -> nn.Module:
    """timm's ``test_efficientnet`` without classifier (pooled 256-d features), randomly initialised
    from ``seed`` without touching the caller's random state."""
    import timm

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return timm.create_model(TINY_BACKBONE, pretrained=False, num_classes=0)


def make_tiny_model(
    seed: int = 0, num_classes: int = TINY_CLASSES, bottleneck_dim: int = TINY_BOTTLENECK
) -> TransferModel:
    """A :class:`TransferModel` on the tiny backbone (3 classes, 16-unit bottleneck by default)."""
    backbone = make_tiny_backbone(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        return TransferModel(backbone, num_classes, bottleneck_dim=bottleneck_dim, backbone_name=TINY_BACKBONE)


def make_tiny_batch(
    target_views: Iterable[str] = ("weak", "strong"),
    *,
    batch_size: int = TINY_BATCH_SIZE,
    image_size: int = TINY_IMAGE_SIZE,
    num_classes: int = TINY_CLASSES,
    seed: int = 0,
    target_shift: float = 0.5,
    device: torch.device | str = "cpu",
) -> Batch:
    """A two-domain batch of random normalised images; the target domain is shifted by ``target_shift``.

    Source labels cycle through every class. ``target_views`` says which target views the batch
    carries, as a strategy's ``target_views`` does.
    """
    views = tuple(target_views)
    g = torch.Generator().manual_seed(seed)
    shape = (batch_size, 3, image_size, image_size)
    source = torch.randn(shape, generator=g)
    labels = torch.arange(batch_size) % num_classes
    target = torch.randn(shape, generator=g) + target_shift if "weak" in views else None
    strong = (target + 0.3 * torch.randn(shape, generator=g)) if "strong" in views and target is not None else None
    index = torch.arange(batch_size) if target is not None else None
    to: Callable[[Tensor | None], Any] = lambda t: None if t is None else t.to(device)
    return Batch(
        source=to(source), source_labels=to(labels), target=to(target), target_strong=to(strong), target_index=to(index)
    )
