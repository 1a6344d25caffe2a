"""Outputs of frozen networks, computed once and reused across strategies, seeds and runs.

- :class:`FeatureBank`: while nothing in the backbone trains (all of ``freeze``, the head-only
  phase of ``unfreeze``), every step would recompute the same features. The engine computes them
  once per (backbone, weights, domain content, image size, view), keeps them on the device, and
  stores them in the cache so later cells and runs only train the head.
- :class:`TeacherViewBank`: a ``kd`` teacher is frozen too. With ``teacher_views: K`` its logits on
  K fixed augmented views of every image are computed once (FKD: Shen & Xing, ECCV 2022, "A Fast
  Knowledge Distillation Framework for Visual Recognition") and shared by every student, seed and
  run that distils from the same trained teacher.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from tlbench.augment import Augmenter, FixedViews
from tlbench.checked import load_checked, save_checked
from tlbench.data import Domain
from tlbench.model import TransferModel


class FeatureBank:
    """Pooled features of a frozen backbone, computed once per view and reused every step.

    Views: the test crop and, with flipping on, its mirror image. Kept on disk under the cache
    (keyed by backbone, weights, domain content, size and view) so other strategies, seeds and
    runs reuse them.
    """

    def __init__(self, model: TransferModel, augmenter: Augmenter, views: list[str], batch_size: int,
                 cache_dir: Path | None, key: str):
        self.model, self.aug, self.views, self.bs = model, augmenter, views, batch_size
        self.cache_dir, self.key = cache_dir, key

    def features(self, domain_images: Tensor, domain_key: str, autocast) -> Tensor:
        """views × N × D features of uint8 images."""
        path = _cache_file(self.cache_dir, "features", f"{self.key}|{domain_key}|{'+'.join(self.views)}")
        cached = load_checked(path) if path is not None else None
        if cached is not None and cached.shape[1] == len(domain_images):
            return cached.to(domain_images.device)

        def batch(view: int, rows: slice) -> Tensor:
            x = self.aug.test(domain_images[rows])
            return x.flip(-1) if self.views[view] == "flip" else x

        feats = _outputs_per_view(self.model.backbone, batch, len(self.views), len(domain_images), self.bs,
                                  autocast)
        if path is not None:
            save_checked(path, feats.cpu())
        return feats


class TeacherViewBank:
    """A frozen teacher's logits on ``k`` fixed augmented views of every image of a domain.

    The views (random resized crops and flips, as in training) are drawn from a seed derived from
    the domain's content, not from the cell's seed, so students of every seed share them; the
    cache key holds the teacher's weights digest, the domain, the crop recipe and ``k``.
    """

    def __init__(self, teacher: torch.nn.Module, augmenter: Augmenter, k: int, batch_size: int,
                 cache_dir: Path | None, key: str):
        self.teacher, self.aug, self.k, self.bs = teacher, augmenter, k, batch_size
        self.cache_dir, self.key = cache_dir, key

    def build(self, domain_images: Tensor, domain_key: str, autocast) -> tuple[FixedViews, Tensor]:
        """The views of uint8 images and the teacher's float32 logits on them (k × N × C)."""
        device = domain_images.device
        views_key = f"{domain_key}|size={self.aug.size}|scale={self.aug.scale}|hflip={self.aug.hflip}|k={self.k}"
        path = _cache_file(self.cache_dir, "teacher_views", f"{self.key}|{views_key}")
        cached = load_checked(path) if path is not None else None
        if isinstance(cached, dict) and cached.get("logits") is not None and \
                tuple(cached["logits"].shape[:2]) == (self.k, len(domain_images)):
            return FixedViews(cached["boxes"].to(device), cached["flips"].to(device)), cached["logits"].to(device)
        n, _, h, w = domain_images.shape
        seed = int(hashlib.sha256(views_key.encode()).hexdigest()[:15], 16)  # the same views for every teacher
        views = self.aug.fixed_views(n, h, w, self.k, seed=seed, device=device)

        def batch(view: int, rows: slice) -> Tensor:
            return self.aug.view(domain_images[rows], views.boxes[view, rows], views.flips[view, rows])

        logits = _outputs_per_view(self.teacher, batch, self.k, n, self.bs, autocast)
        if path is not None:
            save_checked(path, {"boxes": views.boxes.cpu(), "flips": views.flips.cpu(), "logits": logits.cpu()})
        return views, logits


def _cache_file(cache_dir: Path | None, folder: str, key: str) -> Path | None:
    """``<cache_dir>/<folder>/<hash of key>.pt``, or None without a disk cache."""
    if cache_dir is None:
        return None
    return cache_dir / folder / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.pt"


@torch.no_grad()
def _outputs_per_view(net: torch.nn.Module, batch: Callable[[int, slice], Tensor], views: int, n: int,
                      batch_size: int, autocast) -> Tensor:
    """views × N × … float32 outputs of ``net`` in eval mode; ``batch(view, rows)`` gives its input."""
    was_training = net.training
    net.eval()
    try:
        out = []
        for v in range(views):
            chunks = []
            for i in range(0, n, batch_size):
                with autocast():
                    chunks.append(net(batch(v, slice(i, i + batch_size))).float())
            out.append(torch.cat(chunks))
    finally:
        net.train(was_training)
    return torch.stack(out)


def domain_key(domain: Domain) -> str:
    """A content hash of a domain's images (for keys that must change when the pixels do)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(str(tuple(domain.images.shape)).encode())
    h.update(domain.images.contiguous().numpy().tobytes())
    return h.hexdigest()
