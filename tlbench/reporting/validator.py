"""The validator contract: score one checkpoint of one cell without target labels, for model selection.

A validator answers the question a user of domain adaptation must answer without target labels:
which hyperparameters, and which checkpoint? (Musgrave et al., "Benchmarking Validation Methods for
Unsupervised Domain Adaptation", 2021.) It sees a :class:`ValidatorInputs`: the model's logits and
embeddings on the held-out source split (with its labels) and on the target images (without theirs).
Target labels are not in that type, so no validator can read them: the one exception is a validator
that declares ``uses_target_labels = True`` (the oracle), which gets only the checkpoint's target
accuracy and is marked as using target labels in every table.

Scores are "higher is better"; selection takes the highest. Validators run when reports are written,
on the checkpoint evaluations stored with each cell (:mod:`tlbench.spec.evaluations`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar

import numpy as np

from tlbench.plugins.registry import Plugin
from tlbench.spec.evaluations import CheckpointEvaluations


@dataclass(frozen=True)
class ValidatorInputs:
    """One checkpoint as a validator sees it (float32 arrays; the embeddings as stored, see
    :mod:`tlbench.spec.evaluations`). Holds no target label and nothing computed from one."""

    source_logits: np.ndarray  # (Ns, C) on the source's held-out split (Ns = 0 without one)
    source_embed: np.ndarray  # (Ns, d)
    source_labels: np.ndarray  # (Ns,)
    target_logits: np.ndarray  # (Nt, C) on every target image
    target_embed: np.ndarray  # (Nt, d)

    @classmethod
    def at(cls, evaluations: CheckpointEvaluations, k: int) -> ValidatorInputs:
        """Checkpoint ``k`` of a cell's stored evaluations, everything but the oracle's accuracy."""
        return cls(
            source_logits=evaluations.source_logits[k].astype(np.float32),
            source_embed=evaluations.source_embed[k].astype(np.float32),
            source_labels=evaluations.source_labels.astype(np.int64),
            target_logits=evaluations.target_logits[k].astype(np.float32),
            target_embed=evaluations.target_embed[k].astype(np.float32),
        )


#: the names of what a validator receives (a test holds them free of target labels)
VALIDATOR_INPUT_FIELDS = tuple(f.name for f in fields(ValidatorInputs))


class Validator(Plugin):
    """Base class of validator plugins: ``score`` one checkpoint, higher is better."""

    plugin_kind: ClassVar[str] = "validator"
    name: ClassVar[str] = ""
    #: a one-line description for ``tlbench list validators``
    description: ClassVar[str] = ""
    #: True only for the oracle: it is given the checkpoint's target accuracy, and tables say so
    uses_target_labels: ClassVar[bool] = False

    def score(self, inputs: ValidatorInputs) -> float:
        """The checkpoint's score from unlabelled target outputs and labelled source outputs."""
        raise NotImplementedError

    def score_target_accuracy(self, target_acc: float) -> float:
        """For ``uses_target_labels`` validators only: the score given the target accuracy (%)."""
        raise NotImplementedError(f"validator {self.name!r} does not use target labels")


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, computed stably in float64."""
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def entropy(p: np.ndarray, axis: int = -1) -> np.ndarray:
    """Shannon entropy (nats) of probability vectors along ``axis``; 0 log 0 = 0."""
    p = np.asarray(p, dtype=np.float64)
    return -(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)).sum(axis=axis)
