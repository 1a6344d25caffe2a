"""Validators from the confidence and diversity of target predictions: entropy, IM and BNM.

* ``entropy``: minus the mean entropy of the target predictions (Morerio et al., "Minimal-entropy
  correlation alignment", ICLR 2018, use it to choose hyperparameters): confident is better.
* ``im``: information maximisation, H(mean prediction) - mean H(prediction) (Shi and Sha, ICML 2012;
  Liang et al., SHOT, ICML 2020): confident *and* spread over the classes, so collapsing every target
  image to one class scores low where entropy alone would score it high.
* ``bnm``: batch nuclear norm ||P||_* / N of the N×C target prediction matrix (Cui et al., "Towards
  discriminability and diversity: batch nuclear-norm maximization", CVPR 2020), a smooth measure of
  the same two properties.
"""

from __future__ import annotations

import numpy as np

from tlbench import Validator, ValidatorInputs, entropy, hookimpl, softmax


class Entropy(Validator):
    """Minus the mean entropy (nats) of the target predictions (Morerio et al., ICLR 2018)."""

    name = "entropy"
    description = "minus the mean entropy of target predictions (Morerio et al. 2018)"

    def score(self, inputs: ValidatorInputs) -> float:
        return -float(entropy(softmax(inputs.target_logits)).mean())


class InformationMaximisation(Validator):
    """H(mean target prediction) - mean H(target prediction), in nats (Shi and Sha 2012; SHOT 2020)."""

    name = "im"
    description = "information maximisation: H(mean p) - mean H(p) on the target (Shi and Sha 2012)"

    def score(self, inputs: ValidatorInputs) -> float:
        p = softmax(inputs.target_logits)
        return float(entropy(p.mean(axis=0)) - entropy(p).mean())


class BatchNuclearNorm(Validator):
    """Nuclear norm of the target prediction matrix over its rows (Cui et al., CVPR 2020)."""

    name = "bnm"
    description = "batch nuclear norm ||P||_* / N of the target predictions (Cui et al. 2020)"

    def score(self, inputs: ValidatorInputs) -> float:
        p = softmax(inputs.target_logits)
        return float(np.linalg.svd(p, compute_uv=False).sum() / max(len(p), 1))


@hookimpl
def register_validators(register):
    register(Entropy)
    register(InformationMaximisation)
    register(BatchNuclearNorm)
