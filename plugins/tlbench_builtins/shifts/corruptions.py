"""Synthetic corruptions in the spirit of ImageNet-C (Hendrycks & Dietterich, ICLR 2019).

Each shift turns any domain into a shifted one (``digits+noise:3``). Strengths follow
ImageNet-C's five severities where it defines them; sizes (blur) scale with the image side so a
severity means the same at 28 and at 224 pixels. All work on whole batches of tensors; the
randomness comes only from the generator the harness passes in.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from tlbench import Shift, encode_jpeg_roundtrip, hookimpl

CHUNK = 256  # images per float batch: bounds memory at about CHUNK×3×H×W×4 bytes × a few


def _to_uint8(x: Tensor) -> Tensor:
    return x.round_().clamp_(0, 255).to(torch.uint8)


class _FloatShift(Shift):
    """A shift computed in float on chunks of images, so a large domain never needs a float copy at once."""

    def apply(self, images: Tensor, severity: int, generator: torch.Generator) -> Tensor:
        out = torch.empty_like(images)
        for start in range(0, len(images), CHUNK):
            chunk = images[start : start + CHUNK].float()
            out[start : start + CHUNK] = _to_uint8(self.transform(chunk, severity, generator))
        return out

    def transform(self, x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
        raise NotImplementedError


class GaussianNoise(_FloatShift):
    """Additive Gaussian noise; std 0.08-0.38 of the value range (ImageNet-C ``gaussian_noise``)."""

    name = "noise"
    stds = (0.08, 0.12, 0.18, 0.26, 0.38)

    def transform(self, x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
        return x + torch.randn(x.shape, generator=generator) * (self.stds[severity - 1] * 255.0)


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of float N×C×H×W images, reflecting at the borders."""
    radius = min(max(1, math.ceil(3 * sigma)), x.shape[-1] - 1, x.shape[-2] - 1)
    if radius < 1 or sigma <= 0:
        return x
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


class GaussianBlur(_FloatShift):
    """Gaussian blur with sigma 0.5%-3% of the image side (about ImageNet-C's 1-6 pixels at 224)."""

    name = "blur"
    sigma_fractions = (0.005, 0.01, 0.015, 0.02, 0.03)

    def transform(self, x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
        return gaussian_blur(x, self.sigma_fractions[severity - 1] * max(x.shape[-2:]))


class Contrast(_FloatShift):
    """Pull every pixel towards the image's mean grey value (ImageNet-C ``contrast``: keep 40%-5%)."""

    name = "contrast"
    factors = (0.4, 0.3, 0.2, 0.1, 0.05)

    def transform(self, x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        return (x - mean) * self.factors[severity - 1] + mean


class Brightness(_FloatShift):
    """Add 10%-50% of the value range to every channel, saturating at white (ImageNet-C ``brightness``)."""

    name = "brightness"
    offsets = (0.1, 0.2, 0.3, 0.4, 0.5)

    def transform(self, x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
        return x + self.offsets[severity - 1] * 255.0


class Rotate(_FloatShift):
    """Rotate each image by 15°-75° (15° per severity), clockwise or not at random; corners become black."""

    name = "rotate"
    degrees_per_severity = 15.0

    def transform(self, x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
        n = x.shape[0]
        sign = torch.randint(0, 2, (n,), generator=generator).float() * 2 - 1
        angle = sign * math.radians(self.degrees_per_severity * severity)
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class Invert(Shift):
    """Photographic negative, 255 - x (e.g. dark digits on light ground)."""

    name = "invert"
    has_severity = False

    def apply(self, images: Tensor, severity: int, generator: torch.Generator) -> Tensor:
        return 255 - images


class Jpeg(Shift):
    """JPEG compression artefacts at quality 25, 18, 15, 10, 7 (ImageNet-C ``jpeg_compression``)."""

    name = "jpeg"
    qualities = (25, 18, 15, 10, 7)

    def apply(self, images: Tensor, severity: int, generator: torch.Generator) -> Tensor:
        if len(images) == 0:
            return images.clone()
        quality = self.qualities[severity - 1]
        return torch.stack([encode_jpeg_roundtrip(img, quality) for img in images])


@hookimpl
def register_shifts(register):
    for shift in (GaussianNoise, GaussianBlur, Contrast, Brightness, Rotate, Invert, Jpeg):
        register(shift)
