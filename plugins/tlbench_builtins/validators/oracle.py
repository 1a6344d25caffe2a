"""``oracle``: the target accuracy itself. It uses target labels, so it is a reference, never a method.

Every table marks it. Its selections are the best any validator could do; a validator's regret is
measured against them (Musgrave et al., 2021).
"""

from __future__ import annotations

from tlbench import Validator, hookimpl


class Oracle(Validator):
    """Target accuracy (%): uses target labels; the upper bound validators are measured against."""

    name = "oracle"
    description = "target accuracy (%): USES TARGET LABELS, a reference for the validators"
    uses_target_labels = True

    def score_target_accuracy(self, target_acc: float) -> float:
        return float(target_acc)


@hookimpl
def register_validators(register):
    register(Oracle)
