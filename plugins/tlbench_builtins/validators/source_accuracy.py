"""``source_acc``: accuracy on the source's held-out split, the validator most papers silently use."""

from __future__ import annotations

import math

import numpy as np

from tlbench import Validator, ValidatorInputs, hookimpl


class SourceAccuracy(Validator):
    """Held-out source accuracy (%): needs no target data, and is blind to the shift.

    (Ganin et al. 2016's reverse check aside, which this is not.)"""

    name = "source_acc"
    description = "accuracy (%) on the source's held-out split"

    def score(self, inputs: ValidatorInputs) -> float:
        if not len(inputs.source_labels):
            return math.nan  # recipe.source_holdout: 0 leaves nothing to score
        return 100.0 * float(np.mean(inputs.source_logits.argmax(1) == inputs.source_labels))


@hookimpl
def register_validators(register):
    register(SourceAccuracy)
