"""Features of a frozen backbone, computed once and reused across strategies, seeds and runs.

When nothing in the backbone trains (``freeze``), every step would recompute the same features:
the engine computes them once per (backbone, weights, domain content, image size, view), keeps
them on the device, and stores them in the cache so later cells and runs only train the head.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import Tensor

from tlbench.augment import Augmenter
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

    @torch.no_grad()
    def features(self, domain_images: Tensor, domain_key: str, autocast) -> Tensor:
        """views × N × D features of uint8 images."""
        path = None
        if self.cache_dir is not None:
            name = hashlib.sha256(f"{self.key}|{domain_key}|{'+'.join(self.views)}".encode()).hexdigest()[:24]
            path = self.cache_dir / "features" / f"{name}.pt"
            cached = load_checked(path)
            if cached is not None and cached.shape[1] == len(domain_images):
                return cached.to(domain_images.device)
        was_training = self.model.training
        self.model.eval()
        out = []
        for view in self.views:
            chunks = []
            for i in range(0, len(domain_images), self.bs):
                x = self.aug.test(domain_images[i:i + self.bs])
                if view == "flip":
                    x = x.flip(-1)
                with autocast():
                    chunks.append(self.model.backbone(x).float())
            out.append(torch.cat(chunks))
        self.model.train(was_training)
        feats = torch.stack(out)
        if path is not None:
            save_checked(path, feats.cpu())
        return feats


def domain_key(domain: Domain) -> str:
    """A content hash of a domain's images (for keys that must change when the pixels do)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(str(tuple(domain.images.shape)).encode())
    h.update(domain.images.contiguous().numpy().tobytes())
    return h.hexdigest()
