"""Binarised digits: every pixel that is not black becomes white.

The common implementation of Ganin et al.'s MNIST->MNIST-M experiment (pumpikano/tf-dann,
``MNIST-DANN.ipynb``) trains on MNIST thresholded this way (``mnist.train.images > 0``), the same
binarisation its ``create_mnistm.py`` applies to each digit before blending it over a photo patch:
the source then has the stroke shapes MNIST-M's digits were cut with. Meant for line drawings and
digits; on a photograph nearly every pixel turns white.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tlbench import Shift, hookimpl


class Binarize(Shift):
    """Every pixel with any channel above 0 becomes white, the rest black (tf-dann's MNIST for MNIST-M)."""

    name = "binarize"
    has_severity = False

    def apply(self, images: Tensor, severity: int, generator: torch.Generator) -> Tensor:
        lit = (images > 0).any(dim=1, keepdim=True)
        return (lit.to(torch.uint8) * 255).expand_as(images).contiguous()


@hookimpl
def register_shifts(register):
    register(Binarize)
