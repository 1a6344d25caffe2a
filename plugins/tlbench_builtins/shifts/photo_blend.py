"""MNIST-M-style shift: blend each image with a random patch of a natural photo.

MNIST-M (Ganin & Lempitsky, ICML 2015) replaces each MNIST digit by ``|digit - patch|`` for a
random patch of a BSDS500 photo. Here the photos are the two scikit-learn ships
(``china.jpg``, ``flower.jpg``), so no download is needed; severity 5 is the full MNIST-M
operation and lower severities mix it with the original image.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from tlbench import Shift, hookimpl


@lru_cache(maxsize=1)
def sample_photos() -> Tensor:
    """scikit-learn's two sample photos as a uint8 2×3×427×640 tensor."""
    from sklearn.datasets import load_sample_images

    photos = np.stack(load_sample_images().images)  # 2×427×640×3 uint8
    return torch.from_numpy(photos).permute(0, 3, 1, 2).contiguous()


def random_patches(n: int, height: int, width: int, generator: torch.Generator) -> Tensor:
    """``n`` uint8 3×height×width crops at random places of random sample photos."""
    photos = sample_photos()
    ph, pw = photos.shape[-2:]
    if height > ph or width > pw:  # images larger than the photos: enlarge the photos to fit
        scale = max(height / ph, width / pw)
        size = (max(height, round(ph * scale)), max(width, round(pw * scale)))
        photos = F.interpolate(photos.float(), size=size, mode="bilinear", align_corners=False)
        photos = photos.round_().clamp_(0, 255).to(torch.uint8)
        ph, pw = photos.shape[-2:]
    which = torch.randint(0, len(photos), (n,), generator=generator)
    top = torch.randint(0, ph - height + 1, (n,), generator=generator)
    left = torch.randint(0, pw - width + 1, (n,), generator=generator)
    rows = (top[:, None] + torch.arange(height))[:, :, None]  # n×H×1
    cols = (left[:, None] + torch.arange(width))[:, None, :]  # n×1×W
    hwc = photos.permute(0, 2, 3, 1)[which[:, None, None], rows, cols]  # n×H×W×3
    return hwc.permute(0, 3, 1, 2)


class PhotoBlend(Shift):
    """``(1 - a)·x + a·|x - patch|`` with a = 0.2, 0.4, 0.6, 0.8, 1.0 by severity (1.0 is MNIST-M)."""

    name = "photo_blend"
    strengths = (0.2, 0.4, 0.6, 0.8, 1.0)
    chunk = 256

    def apply(self, images: Tensor, severity: int, generator: torch.Generator) -> Tensor:
        a = self.strengths[severity - 1]
        out = torch.empty_like(images)
        for start in range(0, len(images), self.chunk):
            x = images[start : start + self.chunk]
            patch = random_patches(len(x), x.shape[-2], x.shape[-1], generator)
            xf = x.float()
            blended = (1 - a) * xf + a * (xf - patch.float()).abs()
            out[start : start + self.chunk] = blended.round_().clamp_(0, 255).to(torch.uint8)
        return out


@hookimpl
def register_shifts(register):
    register(PhotoBlend)
