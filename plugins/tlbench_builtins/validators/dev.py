"""``dev``: deep embedded validation (You et al., "Towards accurate model selection in deep unsupervised
domain adaptation", ICML 2019).

The source validation loss, importance-weighted towards the target: a domain classifier on the
embeddings tells source from target, its odds give each held-out source image the density ratio
w = (n_s / n_t) p(target | x) / p(source | x), and the weighted loss w·ℓ gets the paper's control
variate, risk = mean(w·ℓ) + η mean(w) - η with η = -Cov(w·ℓ, w) / Var(w). The score is -risk.

The domain classifier is a logistic regression on standardised embeddings. It is cross-fitted: the
held-out source is split in two (even and odd rows), and each half is weighted by a classifier trained
on the other half and the target images, so no image is weighted by a classifier that saw it. Above
:data:`MAX_TARGETS` target images an evenly strided subset is used.
"""

from __future__ import annotations

import math

import numpy as np

from tlbench import Validator, ValidatorInputs, hookimpl, softmax

MAX_TARGETS = 2000


def dev_risk(losses: np.ndarray, weights: np.ndarray) -> float:
    """The control-variate estimate of the target risk from per-image losses and density ratios."""
    weighted = weights * losses
    var = float(np.var(weights, ddof=1)) if len(weights) > 1 else 0.0
    eta = 0.0 if var <= 1e-12 else -float(np.cov(weighted, weights, ddof=1)[0, 1]) / var
    return float(weighted.mean() + eta * weights.mean() - eta)


def density_ratios(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """w(x) for every source row, each half weighted by a domain classifier fitted on the other half."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    weights = np.empty(len(source))
    halves = [np.arange(0, len(source), 2), np.arange(1, len(source), 2)]
    for scored, fitted in ((halves[0], halves[1]), (halves[1], halves[0])):
        if not len(scored):
            continue
        train = source[fitted] if len(fitted) else source[scored]
        x = np.concatenate([train, target]).astype(np.float64)
        y = np.concatenate([np.zeros(len(train)), np.ones(len(target))])
        scaler = StandardScaler().fit(x)
        clf = LogisticRegression(C=1.0, max_iter=1000).fit(scaler.transform(x), y)
        p = np.clip(clf.predict_proba(scaler.transform(source[scored].astype(np.float64)))[:, 1], 1e-6, 1 - 1e-6)
        weights[scored] = (len(train) / len(target)) * p / (1 - p)
    return weights


class DeepEmbeddedValidation(Validator):
    """Importance-weighted source loss with a domain classifier and a control variate (You et al., ICML 2019)."""

    name = "dev"
    description = "deep embedded validation: importance-weighted source risk (You et al. 2019)"

    def score(self, inputs: ValidatorInputs) -> float:
        if len(inputs.source_labels) < 2:
            return math.nan  # no held-out source split to weigh
        probs = softmax(inputs.source_logits)
        losses = -np.log(np.clip(probs[np.arange(len(probs)), inputs.source_labels], 1e-12, None))
        step = -(-len(inputs.target_embed) // MAX_TARGETS)
        weights = density_ratios(inputs.source_embed, inputs.target_embed[::step])
        return -dev_risk(losses, weights)


@hookimpl
def register_validators(register):
    register(DeepEmbeddedValidation)
