"""``snd``: soft neighbourhood density (Saito et al., "Tune it the right way: unsupervised validation of
domain adaptation via soft neighborhood density", ICCV 2021).

The cosine similarities between the target predictions (softmax outputs, the paper's choice), each
image's similarity to itself left out, become per-row distributions over the neighbours at
temperature T = 0.05; SND is the mean entropy of those rows. High when target images sit in dense,
consistent neighbourhoods. The N×N similarity costs O(N²): above :data:`MAX_TARGETS` images an evenly
strided subset (every k-th image, the same at every checkpoint) stands in for the domain.
"""

from __future__ import annotations

import numpy as np

from tlbench import Validator, ValidatorInputs, entropy, hookimpl, softmax

TEMPERATURE = 0.05
MAX_TARGETS = 2000


def soft_neighbourhood_density(probs: np.ndarray, temperature: float = TEMPERATURE) -> float:
    """Mean entropy of softmax(cosine similarity / T) over each row's other points."""
    x = probs / np.maximum(np.linalg.norm(probs, axis=1, keepdims=True), 1e-12)
    sim = (x @ x.T) / temperature
    np.fill_diagonal(sim, -np.inf)
    return float(entropy(softmax(sim)).mean())


class SoftNeighbourhoodDensity(Validator):
    """Soft neighbourhood density of the target predictions, T = 0.05 (Saito et al., ICCV 2021)."""

    name = "snd"
    description = "soft neighbourhood density of target predictions, T=0.05 (Saito et al. 2021)"

    def score(self, inputs: ValidatorInputs) -> float:
        logits = inputs.target_logits
        step = -(-len(logits) // MAX_TARGETS)  # ceil: at most MAX_TARGETS rows
        return soft_neighbourhood_density(softmax(logits[::step]))


@hookimpl
def register_validators(register):
    register(SoftNeighbourhoodDensity)
