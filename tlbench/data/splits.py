"""Stratified splits of a domain's images: every class divided between the sides, deterministically.

One place for the harness's label-aware splits, so that a protocol never draws a random,
class-blind subset in which a small class can vanish: the two halves of a domain that is both a
pair's source and (shifted) its target, the fine-tuning protocol's train/test split of a task
that has no official one, its validation split and its label budgets. Indices are returned sorted
within each side, so a split depends on the labels and the seed alone, never on the order of a
per-class loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tlbench.data.domains import TEST, TRAIN, Domain

#: the fine-tuning protocol's test share of a task without an official split (stratified, seed SPLIT_SEED)
TEST_FRACTION = 0.3
#: the share of the training split scored instead of the test split under ``score_on: validation``
VALIDATION_FRACTION = 0.2
#: the seed of every fixed split: no cell's seed changes which images are tested
SPLIT_SEED = 0


def stratified_split(
    labels: Tensor, fraction: float | None = None, seed: int = 0, *, per_class: int | None = None
) -> tuple[Tensor, Tensor]:
    """Indices ``(first, second)`` with ``fraction`` of every class's images (or ``per_class`` of
    each class) in ``first``.

    With ``fraction``, per class ``round(fraction * n)`` images go to ``first``, clamped so that
    each side keeps at least one image of every class that has two or more (a class of one image
    goes to ``first``). With ``per_class`` exactly that many go to ``first``; a class with fewer
    images is a ``ValueError`` naming it. The draw uses its own generator seeded with ``seed``:
    the global random stream is untouched.
    """
    if (fraction is None) == (per_class is None):
        raise ValueError("give exactly one of fraction and per_class")
    if fraction is not None and not 0 < fraction < 1:
        raise ValueError(f"fraction must be between 0 and 1 (exclusive), got {fraction}")
    if per_class is not None and per_class < 1:
        raise ValueError(f"per_class must be at least 1, got {per_class}")
    g = torch.Generator().manual_seed(seed)
    labels = labels.cpu()
    first, second = [], []
    for cls in torch.unique(labels, sorted=True).tolist():
        members = torch.nonzero(labels == cls).flatten()
        members = members[torch.randperm(len(members), generator=g)]
        n = len(members)
        if per_class is not None:
            if n < per_class:
                raise ValueError(f"class {cls} has {n} image(s), fewer than the {per_class} asked for")
            k = per_class
        else:
            assert fraction is not None  # exactly one of fraction and per_class, checked above
            k = min(max(int(round(fraction * n)), 1), n - 1) if n > 1 else n
        first.append(members[:k])
        second.append(members[k:])
    return torch.sort(torch.cat(first)).values, torch.sort(torch.cat(second)).values


@dataclass(frozen=True)
class TrainTest:
    """Indices of a task's training and test images, and whether the split is the dataset's own."""

    train: Tensor
    test: Tensor
    official: bool


def train_test_split(domain: Domain) -> TrainTest:
    """The dataset's official split when it has one (USPS, an image folder with ``train/`` and
    ``test/``), else a stratified :data:`TEST_FRACTION` test split drawn with :data:`SPLIT_SEED`:
    the same images for every strategy and seed."""
    if domain.split is not None:
        train = torch.nonzero(domain.split == TRAIN).flatten()
        test = torch.nonzero(domain.split == TEST).flatten()
        if len(train) and len(test):
            return TrainTest(train, test, official=True)
    train, test = stratified_split(domain.labels, 1 - TEST_FRACTION, seed=SPLIT_SEED)
    return TrainTest(train, test, official=False)
