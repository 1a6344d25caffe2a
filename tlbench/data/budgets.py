"""Label budgets of the fine-tuning protocol: how many training labels a cell may use.

A budget is a fraction of every class's training images (``10%``, ``100%``) or a number per
class (``5-shot``), drawn per seed and stratified (:func:`tlbench.data.splits.stratified_split`),
so no class is ever left without a label. The training images whose labels are held back are
the unlabelled rest, served to strategies without their labels: the semi-supervised setting of
FixMatch (Sohn et al., NeurIPS 2020), whose benchmarks draw labelled subsets the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor

from tlbench.data.splits import stratified_split
from tlbench.errors import UserError

_PERCENT = re.compile(r"^(\d+(?:\.\d+)?)\s*%$")
_SHOT = re.compile(r"^(\d+)\s*-?\s*shots?$")


@dataclass(frozen=True)
class Budget:
    """``fraction`` of each class's training labels (0 < f <= 1), or ``shots`` labels per class."""

    fraction: float | None = None
    shots: int | None = None

    @classmethod
    def parse(cls, text: str) -> Budget:
        """``'10%'``, ``'100%'`` or ``'5-shot'``; anything else is a one-line error with examples."""
        raw = str(text).strip().lower()
        if m := _PERCENT.match(raw):
            value = float(m[1])
            if 0 < value <= 100:
                return cls(fraction=value / 100)
        elif (m := _SHOT.match(raw)) and int(m[1]) >= 1:
            return cls(shots=int(m[1]))
        raise UserError(
            f"budget {text!r}: write a share of the training labels such as '10%' (0 < share <= 100) "
            "or labels per class such as '5-shot'"
        )

    def __str__(self) -> str:
        if self.shots is not None:
            return f"{self.shots}-shot"
        return f"{cast(float, self.fraction) * 100:g}%"  # parse() sets exactly one of shots, fraction

    @property
    def everything(self) -> bool:
        """Whether every training label is used (no unlabelled rest)."""
        return self.fraction == 1.0

    def draw(self, labels: Tensor, seed: int) -> tuple[Tensor, Tensor]:
        """Positions ``(labelled, held_back)`` in ``labels`` (the training split's labels) for ``seed``.

        A fraction keeps ``round(f * n)`` images of a class of ``n`` (at least one, and one left
        over for the rest when it has two or more); a shot count keeps exactly that many and is a
        :class:`UserError` for a class with fewer training images.
        """
        if self.everything:
            return torch.arange(len(labels)), torch.zeros(0, dtype=torch.long)
        try:
            return stratified_split(labels, self.fraction, seed=seed, per_class=self.shots)
        except ValueError as exc:
            raise UserError(
                f"budget {self}: {exc} in the training split; use fewer shots or a share such as '10%'"
            ) from None
