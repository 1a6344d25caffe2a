"""Batched image augmentation on the training device.

Images live as uint8 N×3×S×S tensors (decoded once); a batch is cut, augmented and normalised
here with a few whole-batch tensor operations: no per-image Python, no JPEG decoding in the loop.
Training: random resized crop + horizontal flip (the DA recipe); test: centre crop of the stored
resize (resize 256 -> centre crop 224 at full size). ``strong`` adds colour jitter and cutout for
FixMatch-style self-training.
"""

from __future__ import annotations

import functools
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from torch import Tensor


def _uniform(n: int, lo: float, hi: float, g: torch.Generator, device) -> Tensor:
    return torch.rand(n, generator=g, device=device) * (hi - lo) + lo


def random_crop_boxes(
    n: int,
    h: int,
    w: int,
    g: torch.Generator,
    *,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> Tensor:
    """torchvision's RandomResizedCrop boxes (x0, y0, x1, y1) for ``n`` images of ``h``×``w``.

    Area fraction uniform in ``scale``, aspect ratio log-uniform in ``ratio``, clipped to the image.
    """
    dev = g.device
    area = _uniform(n, *scale, g, dev) * (h * w)
    log_r = _uniform(n, math.log(ratio[0]), math.log(ratio[1]), g, dev)
    r = torch.exp(log_r)
    cw = torch.sqrt(area * r).clamp(1, w)
    ch = torch.sqrt(area / r).clamp(1, h)
    x0 = torch.rand(n, generator=g, device=dev) * (w - cw)
    y0 = torch.rand(n, generator=g, device=dev) * (h - ch)
    return torch.stack([x0, y0, x0 + cw, y0 + ch], dim=1)


def crop_boxes(images: Tensor, boxes: Tensor, size: int) -> Tensor:
    """Each image's box (N×4, x0 y0 x1 y1) bilinearly resampled to ``size`` (``roi_align``).

    Returns float images in [0, 255].
    """
    from torchvision.ops import roi_align

    index = torch.arange(len(images), device=images.device, dtype=boxes.dtype)[:, None]
    rois = torch.cat([index, boxes.to(images.device)], dim=1)
    x = images.float()

    def crop(part: Tensor) -> Tensor:
        return roi_align(x, part, output_size=(size, size), spatial_scale=1.0, sampling_ratio=2, aligned=True)

    threads = torch.get_num_threads() if x.device.type == "cpu" else 1
    if threads < 2 or len(rois) < 2:
        return crop(rois)
    # torchvision's CPU roi_align is one serial loop over the boxes: split them over torch's threads
    # (the op releases the GIL). Each box is resampled alone, so the result is bit for bit the same.
    pool = _crop_pool(threads, os.getpid())
    return torch.cat(list(pool.map(crop, rois.tensor_split(min(threads, len(rois))))))


@functools.lru_cache(maxsize=4)
def _crop_pool(threads: int, pid: int) -> ThreadPoolExecutor:
    """One pool per thread count and process: a forked worker does not inherit its parent's threads."""
    return ThreadPoolExecutor(max_workers=threads, thread_name_prefix="tlbench-crop")


def random_resized_crop(
    images: Tensor,
    size: int,
    g: torch.Generator,
    *,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> Tensor:
    """torchvision's RandomResizedCrop for a whole batch at once: :func:`random_crop_boxes`, then
    :func:`crop_boxes`. Returns float images in [0, 255]."""
    n, _, h, w = images.shape
    return crop_boxes(images, random_crop_boxes(n, h, w, g, scale=scale, ratio=ratio), size)


def hflip_where(x: Tensor, flip: Tensor) -> Tensor:
    """Mirror the images of ``x`` (N×C×H×W) whose entry in the boolean ``flip`` (N) is set."""
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def random_hflip(x: Tensor, g: torch.Generator, p: float = 0.5) -> Tensor:
    return hflip_where(x, torch.rand(x.shape[0], generator=g, device=x.device) < p)


def center_crop(images: Tensor, size: int) -> Tensor:
    h, w = images.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return images[..., top : top + size, left : left + size]


def color_jitter(x: Tensor, g: torch.Generator, strength: float = 0.4) -> Tensor:
    """Per-image brightness, contrast and saturation factors in [1-s, 1+s]; x in [0, 255]."""
    n = x.shape[0]
    b = _uniform(n, 1 - strength, 1 + strength, g, x.device)[:, None, None, None]
    c = _uniform(n, 1 - strength, 1 + strength, g, x.device)[:, None, None, None]
    s = _uniform(n, 1 - strength, 1 + strength, g, x.device)[:, None, None, None]
    x = x * b
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * c + mean
    grey = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
    x = (x - grey) * s + grey
    return x.clamp(0, 255)


def cutout(x: Tensor, g: torch.Generator, frac: float = 0.5) -> Tensor:
    """Zero a random square of side ``frac``·size in each image (set to the image mean)."""
    n, _, h, w = x.shape
    side = max(1, int(round(frac * min(h, w))))
    cy = torch.randint(0, h, (n,), generator=g, device=x.device)
    cx = torch.randint(0, w, (n,), generator=g, device=x.device)
    ys = torch.arange(h, device=x.device)[None, :, None]
    xs = torch.arange(w, device=x.device)[None, None, :]
    inside = ((ys - cy[:, None, None]).abs() <= side // 2) & ((xs - cx[:, None, None]).abs() <= side // 2)
    fill = x.mean(dim=(2, 3), keepdim=True)
    return torch.where(inside[:, None], fill, x)


class Normalizer:
    """uint8/float [0, 255] images (N×3×H×W) -> normalised float with the backbone's channels.

    Domains are always stored with three channels; this is the one place they meet the network:
    a network that reads one channel (``in_chans=1``, the LeNet of the digit benchmarks) gets the
    mean of the three (a grey digit's three equal channels, a colour image's plain average), and
    ``mean``/``std`` hold one value per input channel of the network.
    """

    def __init__(self, mean, std, device, in_chans: int = 3, dtype=torch.float32, from_backbone: bool = True):
        if in_chans not in (1, 3) or len(mean) != in_chans or len(std) != in_chans:
            raise ValueError(
                f"normalisation needs one mean and std per input channel (1 or 3); "
                f"got in_chans={in_chans}, mean={tuple(mean)}, std={tuple(std)}"
            )
        self.in_chans, self.from_backbone = in_chans, from_backbone
        self.scale = (255.0 * torch.tensor(std, device=device, dtype=dtype)).view(1, in_chans, 1, 1)
        self.shift = (255.0 * torch.tensor(mean, device=device, dtype=dtype)).view(1, in_chans, 1, 1)

    def key(self) -> str:
        """What distinguishes this normalisation in a cache key ("" for the backbone's own constants,
        so that caches written before ``recipe.input_mean`` stay valid)."""
        return "" if self.from_backbone else f"|mean={self.shift.flatten().tolist()}"

    def __call__(self, x: Tensor) -> Tensor:
        x = x.float()
        if self.in_chans == 1 and x.shape[1] != 1:
            x = x.mean(dim=1, keepdim=True)
        return (x - self.shift) / self.scale


@dataclass
class FixedViews:
    """K fixed training views of each of N images: crop boxes (K×N×4) and horizontal flips (K×N).

    Drawn once from a fixed seed, so whatever is computed on them (a frozen teacher's outputs)
    can be cached and reused by every cell that serves the same views.
    """

    boxes: Tensor
    flips: Tensor

    @property
    def count(self) -> int:
        return self.boxes.shape[0]


class Augmenter:
    """The train views a strategy can ask for, all batched: ``weak`` and ``strong``."""

    def __init__(
        self,
        size: int,
        normalizer: Normalizer,
        *,
        hflip: bool,
        scale: tuple[float, float],
        random_crop: bool = True,
        memory_format=torch.contiguous_format,
    ):
        self.size, self.normalize, self.hflip, self.scale = size, normalizer, hflip, scale
        self.random_crop = random_crop
        self.memory_format = memory_format

    def _crop(self, images: Tensor, g: torch.Generator) -> Tensor:
        """The training crop: a random resized crop, or (``random_crop`` off: the digit papers'
        protocol, no augmentation) the test view's centre crop."""
        if not self.random_crop:
            return center_crop(images, self.size).float()
        return random_resized_crop(images, self.size, g, scale=self.scale)

    def flip_draw(self, n: int, g: torch.Generator) -> Tensor | None:
        """Which of ``n`` training views are mirrored (None without flipping): the one draw a weak view
        makes after its crop, which a cached frozen feature's choice of view makes too, so that the
        cached and the recomputed frozen backbone see the same views with ``train_crop: none``."""
        return torch.rand(n, generator=g, device=g.device) < 0.5 if self.hflip else None

    def weak(self, images: Tensor, g: torch.Generator) -> Tensor:
        x = self._crop(images, g)
        flips = self.flip_draw(x.shape[0], g)
        if flips is not None:
            x = hflip_where(x, flips)
        return self.normalize(x).contiguous(memory_format=self.memory_format)

    def strong(self, images: Tensor, g: torch.Generator) -> Tensor:
        x = self._crop(images, g)
        if self.hflip:
            x = random_hflip(x, g)
        x = cutout(color_jitter(x, g), g)
        return self.normalize(x).contiguous(memory_format=self.memory_format)

    def fixed_views(self, n: int, h: int, w: int, k: int, seed: int, device) -> FixedViews:
        """``k`` random resized crops (and flips, with flipping on) per image, drawn from ``seed``."""
        g = torch.Generator(device="cpu").manual_seed(seed)
        boxes = torch.stack([random_crop_boxes(n, h, w, g, scale=self.scale) for _ in range(k)])
        flips = torch.rand(k, n, generator=g) < 0.5 if self.hflip else torch.zeros(k, n, dtype=torch.bool)
        return FixedViews(boxes.to(device), flips.to(device))

    def view(self, images: Tensor, boxes: Tensor, flips: Tensor) -> Tensor:
        """The training view of each image given by its crop box and flip (from :meth:`fixed_views`)."""
        crops = crop_boxes(images, boxes, self.size) if self.random_crop else center_crop(images, self.size).float()
        x = hflip_where(crops, flips)
        return self.normalize(x).contiguous(memory_format=self.memory_format)

    def test(self, images: Tensor) -> Tensor:
        return self.normalize(center_crop(images, self.size)).contiguous(memory_format=self.memory_format)
