"""The validator check: a validator scores random checkpoints with finite, repeatable numbers."""

from __future__ import annotations

import math

import numpy as np

from tlbench.reporting.validator import Validator, ValidatorInputs


def random_inputs(
    seed: int = 0, *, n_source: int = 40, n_target: int = 60, classes: int = 4, dim: int = 8
) -> ValidatorInputs:
    """A random checkpoint of a 4-class problem (what a validator sees)."""
    rng = np.random.default_rng(seed)
    return ValidatorInputs(
        source_logits=rng.normal(size=(n_source, classes)).astype(np.float32),
        source_embed=rng.normal(size=(n_source, dim)).astype(np.float32),
        source_labels=rng.integers(0, classes, n_source),
        target_logits=rng.normal(size=(n_target, classes)).astype(np.float32),
        target_embed=rng.normal(size=(n_target, dim)).astype(np.float32),
    )


def check_validator(cls: type[Validator]) -> None:
    """``AssertionError`` saying what is wrong with a validator class."""
    assert issubclass(cls, Validator), f"{cls!r} does not subclass tlbench.Validator"
    assert isinstance(cls.name, str) and cls.name, f"{cls.__name__} has no name"
    v = cls()
    if cls.uses_target_labels:
        a, b = v.score_target_accuracy(40.0), v.score_target_accuracy(80.0)
        assert math.isfinite(a) and b > a, f"{cls.name}: an oracle must score higher accuracy higher"
        return
    inputs = random_inputs()
    score = v.score(inputs)
    assert isinstance(score, float) and math.isfinite(score), f"{cls.name}: score is {score!r}, expected a finite float"
    assert v.score(random_inputs()) == score, f"{cls.name}: the same checkpoint scored twice gave two numbers"
