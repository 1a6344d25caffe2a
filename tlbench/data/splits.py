"""Stratified splits of a domain's images: every class divided between the sides, deterministically.

One place for the harness's label-aware splits, so that a protocol never draws a random,
class-blind subset in which a small class can vanish: the two halves of a domain that is both a
pair's source and (shifted) its target, and any train/test or labelled/unlabelled split a protocol
needs. Indices are returned sorted within each side, so a split depends on the labels and the seed
alone, never on the order of a per-class loop.
"""

from __future__ import annotations

import torch
from torch import Tensor


def stratified_split(labels: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Indices ``(first, second)`` with ``fraction`` of every class's images in ``first``.

    Per class, ``round(fraction * n)`` images go to ``first``, clamped so that each side keeps at
    least one image of every class that has two or more (a class of one image goes to ``first``).
    The draw uses its own generator seeded with ``seed``: the global random stream is untouched.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be between 0 and 1 (exclusive), got {fraction}")
    g = torch.Generator().manual_seed(seed)
    labels = labels.cpu()
    first, second = [], []
    for cls in torch.unique(labels, sorted=True).tolist():
        members = torch.nonzero(labels == cls).flatten()
        members = members[torch.randperm(len(members), generator=g)]
        n = len(members)
        k = min(max(int(round(fraction * n)), 1), n - 1) if n > 1 else n
        first.append(members[:k])
        second.append(members[k:])
    return torch.sort(torch.cat(first)).values, torch.sort(torch.cat(second)).values
