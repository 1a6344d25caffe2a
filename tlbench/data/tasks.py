"""The fine-tuning protocol's data: one labelled task cut into labelled, unlabelled and scored images.

A task is one domain. Its test split is the dataset's own or a fixed stratified one
(:func:`tlbench.data.splits.train_test_split`), never changed by a seed, so every strategy and
seed is scored on the same images; a label budget (:class:`tlbench.data.budgets.Budget`) drawn
per seed picks the labelled training images, and the rest of the training split is served
unlabelled. ``score_on: validation`` scores a fixed stratified share of the training split
instead, so that a recipe can be chosen without touching the test labels.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from tlbench.data.budgets import Budget
from tlbench.data.domains import Domain
from tlbench.data.splits import SPLIT_SEED, VALIDATION_FRACTION, stratified_split, train_test_split
from tlbench.errors import UserError


@dataclass(frozen=True)
class TaskSplit:
    """Positions in the task's domain: ``labelled`` and ``unlabelled`` (held-back) training images,
    the ``scored`` images (test or validation), and whether the test split is the dataset's own."""

    labelled: Tensor
    unlabelled: Tensor
    scored: Tensor
    official: bool

    @property
    def train_size(self) -> int:
        """Training images a cell sees: the labelled ones and those served without labels."""
        return len(self.labelled) + len(self.unlabelled)


def split_task(domain: Domain, budget: Budget, seed: int, score_on: str = "test") -> TaskSplit:
    """The labelled, unlabelled and scored images of a task for one seed (see the module docstring)."""
    split = train_test_split(domain)
    train, scored = split.train, split.test
    if score_on == "validation":
        fit, held = stratified_split(domain.labels[train], 1 - VALIDATION_FRACTION, seed=SPLIT_SEED)
        train, scored = train[fit], train[held]
    elif score_on != "test":
        raise ValueError(f"score_on must be test or validation, got {score_on!r}")
    labels = domain.labels[train]
    untaught = sorted(set(domain.labels[scored].tolist()) - set(labels.tolist()))
    if untaught:
        raise UserError(
            f"task {domain.name!r}: class {domain.classes[untaught[0]]!r} has {score_on} images but no "
            "training image; add training images of it or remove its test images"
        )
    labelled, rest = budget.draw(labels, seed)
    return TaskSplit(train[labelled], train[rest], scored, split.official)
