"""What the conformance kit feeds a strategy besides a tiny batch, as the engine would: a frozen
backbone's pooled features in place of images, and the whole-target pass ``Strategy.refresh`` receives."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from tlbench.models.transfer import TransferModel
from tlbench.testing.common import _require
from tlbench.training.checkpoints import kept_modes
from tlbench.training.strategy import Batch, TargetPass


def as_features(model: TransferModel, batch: Batch) -> Batch:
    """The batch the engine serves a frozen backbone: pooled features instead of images."""
    with torch.no_grad():
        f: Callable[[Tensor | None], Any] = lambda t: None if t is None else model.features(t).detach()
        return dataclasses.replace(
            batch, source=f(batch.source), target=f(batch.target), target_strong=f(batch.target_strong)
        )


def target_pass(model: TransferModel, batch: Batch) -> TargetPass:
    """What the engine hands ``Strategy.refresh``: the model in eval mode, without gradient, on the
    target images (here the batch's, which ``batch.target_index`` numbers 0..N-1)."""
    _require(batch.target is not None, "a strategy with target_refreshes must declare target views")
    assert batch.target is not None
    with kept_modes(model), torch.no_grad():
        model.eval()
        out = model.forward_all(batch.target)
    return TargetPass(out.logits, out.embedding)
