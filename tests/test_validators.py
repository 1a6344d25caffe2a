"""Validators: each against a number worked out by hand, and the rule that no target label reaches one."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from tlbench.reporting.validator import VALIDATOR_INPUT_FIELDS, ValidatorInputs
from tlbench.testing import check_validator, random_inputs
from tlbench_builtins.validators.confidence import BatchNuclearNorm, Entropy, InformationMaximisation
from tlbench_builtins.validators.dev import DeepEmbeddedValidation, dev_risk
from tlbench_builtins.validators.oracle import Oracle
from tlbench_builtins.validators.snd import SoftNeighbourhoodDensity
from tlbench_builtins.validators.source_accuracy import SourceAccuracy

LN3 = math.log(3.0)


def _inputs(
    target_logits, source_logits=((0.0, 0.0),), source_labels=(0,), embed_dim=2, target_embed=None, source_embed=None
) -> ValidatorInputs:
    t = np.asarray(target_logits, dtype=np.float32)
    s = np.asarray(source_logits, dtype=np.float32)
    return ValidatorInputs(
        source_logits=s,
        source_labels=np.asarray(source_labels),
        source_embed=np.zeros((len(s), embed_dim), np.float32) if source_embed is None else np.asarray(source_embed),
        target_logits=t,
        target_embed=np.zeros((len(t), embed_dim), np.float32) if target_embed is None else np.asarray(target_embed),
    )


# logits [ln 3, 0] -> p = (3/4, 1/4); [0, 0] -> (1/2, 1/2); [0, ln 3] -> (1/4, 3/4)
H34 = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))  # 0.5623 nats
H12 = math.log(2.0)


def test_source_accuracy_counts_the_held_out_source():
    inputs = _inputs([[0, 0]], source_logits=[[2, 0], [0, 2], [2, 0], [0, 2]], source_labels=[0, 1, 1, 1])
    assert SourceAccuracy().score(inputs) == pytest.approx(75.0)
    assert math.isnan(SourceAccuracy().score(_inputs([[0, 0]], source_logits=np.zeros((0, 2)), source_labels=[])))


def test_entropy_is_minus_the_mean_target_entropy():
    inputs = _inputs([[LN3, 0], [0, 0]])
    assert Entropy().score(inputs) == pytest.approx(-(H34 + H12) / 2)


def test_im_rewards_confident_and_diverse_predictions():
    # p = (3/4, 1/4) and (1/4, 3/4): the mean is (1/2, 1/2), so IM = ln 2 - H(3/4, 1/4)
    diverse = _inputs([[LN3, 0], [0, LN3]])
    assert InformationMaximisation().score(diverse) == pytest.approx(H12 - H34)
    # both (3/4, 1/4): the mean is the same vector, IM = 0, though entropy scores both alike
    collapsed = _inputs([[LN3, 0], [LN3, 0]])
    assert InformationMaximisation().score(collapsed) == pytest.approx(0.0, abs=1e-12)
    assert Entropy().score(collapsed) == pytest.approx(Entropy().score(diverse))


def test_bnm_is_the_nuclear_norm_over_the_rows():
    # P = [[3/4, 1/4], [1/4, 3/4]]: symmetric with eigenvalues 1 and 1/2, so ||P||_* = 1.5; over N = 2
    assert BatchNuclearNorm().score(_inputs([[LN3, 0], [0, LN3]])) == pytest.approx(0.75)
    # P = [[1/2, 1/2], [1/2, 1/2]]: rank one, singular value 1; over 2
    assert BatchNuclearNorm().score(_inputs([[0, 0], [0, 0]])) == pytest.approx(0.5)


def test_snd_is_the_mean_entropy_of_the_neighbour_distributions():
    # three targets: p1 = p2 = (3/4, 1/4), p3 = (1/4, 3/4). Cosine similarities: s12 = 1,
    # s13 = s23 = (3/16 + 3/16) / (9/16 + 1/16) = 0.6. At T = 0.05 each row's neighbour distribution is
    # softmax of (s / T) over the two others.
    def h(a, b):
        ea, eb = math.exp(a / 0.05), math.exp(b / 0.05)
        pa, pb = ea / (ea + eb), eb / (ea + eb)
        return -(pa * math.log(pa) + pb * math.log(pb))

    expected = (h(1.0, 0.6) + h(1.0, 0.6) + h(0.6, 0.6)) / 3  # row 3: two equal neighbours, entropy ln 2
    score = SoftNeighbourhoodDensity().score(_inputs([[LN3, 0], [LN3, 0], [0, LN3]]))
    assert score == pytest.approx(expected, rel=1e-5)
    assert expected == pytest.approx((2 * h(1.0, 0.6) + H12) / 3)


def test_dev_risk_with_the_control_variate_by_hand():
    losses, weights = np.array([1.0, 2.0, 3.0]), np.array([0.5, 1.0, 1.5])
    # w*l = (0.5, 2, 4.5): mean 7/3; Var(w) = 0.25; Cov(wl, w) = ((-1.833)(-0.5) + 0 + (2.167)(0.5)) / 2 = 1.0
    # eta = -1.0 / 0.25 = -4; risk = 7/3 + (-4)(1.0) - (-4) = 7/3
    assert dev_risk(losses, weights) == pytest.approx(7 / 3)
    # weights (1, 2, 3) with losses all 1: w*l = w, Cov = Var, eta = -1, risk = mean(w) - mean(w) + 1 = 1
    assert dev_risk(np.ones(3), np.array([1.0, 2.0, 3.0])) == pytest.approx(1.0)


def test_dev_is_the_plain_source_loss_when_the_domains_look_alike():
    # identical (zero) embeddings on both sides: the domain classifier learns only the prior, every weight
    # is 1, and DEV is minus the mean cross-entropy: ln 2 for [0, 0] logits, -ln(3/4) for [ln 3, 0] on label 0
    inputs = _inputs(
        np.zeros((6, 2)), source_logits=[[0, 0], [LN3, 0], [0, 0], [LN3, 0]], source_labels=[0, 0, 1, 0], embed_dim=3
    )
    expected = -(H12 - math.log(0.75) + H12 - math.log(0.75)) / 4
    assert DeepEmbeddedValidation().score(inputs) == pytest.approx(expected, rel=1e-3)


def test_the_oracle_scores_target_accuracy_and_says_it_uses_labels():
    assert Oracle.uses_target_labels is True
    assert Oracle().score_target_accuracy(61.5) == 61.5


@pytest.mark.parametrize(
    "cls",
    [
        SourceAccuracy,
        Entropy,
        InformationMaximisation,
        BatchNuclearNorm,
        SoftNeighbourhoodDensity,
        DeepEmbeddedValidation,
        Oracle,
    ],
)
def test_every_built_in_validator_conforms(cls):
    check_validator(cls)
    assert cls.uses_target_labels == (cls is Oracle)


def test_validator_inputs_hold_no_target_label():
    """Structural: what a validator receives has no field for target labels or anything derived from them."""
    names = {f.name for f in dataclasses.fields(ValidatorInputs)}
    assert names == set(VALIDATOR_INPUT_FIELDS)
    assert names == {"source_logits", "source_embed", "source_labels", "target_logits", "target_embed"}
    assert not any("target" in n and ("label" in n or "acc" in n) for n in names)


def test_checkpoint_evaluations_store_no_target_labels_and_inputs_are_built_without_them():
    from tlbench.spec.evaluations import CheckpointEvaluations

    evaluations = _evaluations(np.random.default_rng(0))
    stored = np.load(__import__("io").BytesIO(evaluations.to_bytes()))
    assert "target_labels" not in stored.files and "target_acc" in stored.files  # accuracy only: the oracle
    restored = CheckpointEvaluations.from_bytes(evaluations.to_bytes())
    inputs = ValidatorInputs.at(restored, 1)
    assert not hasattr(inputs, "target_acc") and not hasattr(inputs, "target_labels")


def test_no_validator_score_changes_with_the_target_accuracy():
    """Behavioural: changing what only target labels decide (the stored accuracy) moves only the oracle."""
    from tlbench.plugins.registry import get_registry
    from tlbench.reporting.selection import score_checkpoint

    rng = np.random.default_rng(1)
    a = _evaluations(rng)
    b = dataclasses.replace(a, target_acc=a.target_acc[::-1].copy() + 7.0)
    registry = get_registry()
    for name in registry.names("validator"):
        v = registry.get("validator", name)()
        same = [score_checkpoint(v, a, k) == score_checkpoint(v, b, k) for k in range(len(a))]
        assert all(same) != v.uses_target_labels, name


def _evaluations(rng, k=3, nt=30, ns=20, c=4, d=8):
    from tlbench.spec.evaluations import CheckpointEvaluations

    return CheckpointEvaluations(
        steps=np.arange(1, k + 1) * 10,
        target_acc=rng.uniform(20, 90, k),
        target_logits=rng.normal(size=(k, nt, c)).astype(np.float16),
        target_embed=rng.normal(size=(k, nt, d)).astype(np.float16),
        source_logits=rng.normal(size=(k, ns, c)).astype(np.float16),
        source_embed=rng.normal(size=(k, ns, d)).astype(np.float16),
        source_labels=rng.integers(0, c, ns),
    )


def test_random_inputs_are_what_the_conformance_check_scores():
    assert random_inputs().target_logits.shape == (60, 4)
