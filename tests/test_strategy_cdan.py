"""CDAN (``cdan``): the multilinear maps, the entropy weights and the wiring of the adversarial loss, by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tlbench import SetupContext, StepContext, TransferModel, UserError
from tlbench.testing import check_strategy, make_tiny_batch, make_tiny_model
from tlbench_builtins.strategies.cdan import (
    Cdan,
    ConditionalAdversary,
    domain_adversarial_loss,
    entropy_weights,
    multilinear_map,
    randomized_multilinear_map,
)
from tlbench_builtins.strategies.dann import reversal_coefficient

CPU = torch.device("cpu")


def setup(strategy, model: TransferModel, seed: int = 0, total_steps: int = 10):
    torch.manual_seed(seed)
    strategy.setup(model, SetupContext(model.num_classes, model.feature_dim, model.embed_dim, total_steps, CPU, seed))
    return strategy.to(CPU)


def step_ctx(model: TransferModel, step: int = 0, total: int = 10) -> StepContext:
    return StepContext(step=step, total_steps=total, model=model, device=CPU, num_classes=model.num_classes)


def bce(logit: float, label: float) -> float:
    p = 1.0 / (1.0 + math.exp(-logit))
    return -(label * math.log(p) + (1.0 - label) * math.log(1.0 - p))


# -- the maps --------------------------------------------------------------------------------
def test_multilinear_map_is_the_flattened_outer_product_class_major():
    f = torch.tensor([[1.0, 2.0], [3.0, -1.0]])  # N=2, E=2
    g = torch.tensor([[0.25, 0.75], [1.0, 0.0]])  # C=2
    # row i: [g0*f0, g0*f1, g1*f0, g1*f1] (TLlib's bmm(g.unsqueeze(2), f.unsqueeze(1)) layout)
    expected = torch.tensor([[0.25, 0.5, 0.75, 1.5], [3.0, -1.0, 0.0, 0.0]])
    torch.testing.assert_close(multilinear_map(f, g), expected)
    # and against explicit outer products, on a non-square case (E=3, C=2)
    f3, g3 = torch.randn(4, 3), torch.softmax(torch.randn(4, 2), 1)
    out = multilinear_map(f3, g3)
    assert out.shape == (4, 6)
    for i in range(4):
        torch.testing.assert_close(out[i], torch.outer(g3[i], f3[i]).flatten())


def test_randomized_multilinear_map_against_explicit_matrix_products_and_its_scale():
    f = [[1.0, 2.0], [0.5, -1.0]]  # N=2, E=2
    g = [[0.2, 0.8], [1.0, 0.0]]  # C=2
    r_f = [[1.0, 0.0, -1.0], [2.0, 1.0, 0.5]]  # E×d, d=3
    r_g = [[0.5, -2.0, 1.0], [3.0, 1.0, 0.0]]  # C×d
    d = 3
    expected = [
        [
            sum(f[i][e] * r_f[e][j] for e in range(2)) * sum(g[i][c] * r_g[c][j] for c in range(2)) / math.sqrt(d)
            for j in range(d)
        ]
        for i in range(2)
    ]
    # row 0, column 0 written out: (1*1 + 2*2) * (0.2*0.5 + 0.8*3) / sqrt(3) = 5 * 2.5 / sqrt(3)
    assert expected[0][0] == pytest.approx(12.5 / math.sqrt(3))
    out = randomized_multilinear_map(torch.tensor(f), torch.tensor(g), torch.tensor(r_f), torch.tensor(r_g))
    torch.testing.assert_close(out, torch.tensor(expected))
    # the 1/sqrt(d) scale: the same matrices repeated to d=12 keep each product, scaled by sqrt(3/12)
    out12 = randomized_multilinear_map(
        torch.tensor(f), torch.tensor(g), torch.tensor(r_f).repeat(1, 4), torch.tensor(r_g).repeat(1, 4)
    )
    torch.testing.assert_close(out12, torch.tensor(expected).repeat(1, 4) * 0.5)


# -- entropy conditioning ---------------------------------------------------------------------
def test_entropy_weights_for_known_probabilities():
    w = entropy_weights(torch.tensor([[1.0, 0.0], [0.5, 0.5]]))
    # H(1,0) = 0 -> 1 + e^0 = 2;  H(.5,.5) = log 2 -> 1 + 1/2 = 1.5;  rescaled to sum to 2: 2*2/3.5, 1.5*2/3.5
    raw = [1.0 + math.exp(-0.0), 1.0 + math.exp(-math.log(2.0))]
    torch.testing.assert_close(w, torch.tensor([r * 2 / sum(raw) for r in raw]))
    torch.testing.assert_close(w, torch.tensor([8 / 7, 6 / 7]))

    p = [[0.2, 0.8, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.0, 0.0, 1.0]]
    h = [-sum(x * math.log(x) for x in row if x > 0) for row in p]
    raw = [1.0 + math.exp(-v) for v in h]
    w = entropy_weights(torch.tensor(p))
    torch.testing.assert_close(w, torch.tensor([r * 3 / sum(raw) for r in raw]))
    assert float(w.sum()) == pytest.approx(3.0)


def test_domain_loss_is_the_weighted_mean_bce_over_the_joint_batch():
    disc = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        disc.weight.copy_(torch.tensor([[1.0, -1.0]]))
    h = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 3.0]])  # logits 2, -1 (source); 0, -3 (target)
    logits, labels = [2.0, -1.0, 0.0, -3.0], [1.0, 1.0, 0.0, 0.0]
    weight = [1.2, 0.8, 0.5, 1.5]
    loss, acc = domain_adversarial_loss(disc, h, 2, 1.0, torch.tensor(weight))
    expected = sum(w * bce(x, y) for w, x, y in zip(weight, logits, labels)) / 4
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert float(acc) == pytest.approx(2 / 4)  # right: 2, -3; wrong: -1, and 0 (TLlib: >= 0 says source)
    plain, _ = domain_adversarial_loss(disc, h, 2, 1.0)
    assert plain.item() == pytest.approx(sum(bce(x, y) for x, y in zip(logits, labels)) / 4, rel=1e-6)


def test_cdan_e_weights_the_domain_bce_with_the_entropy_weights_of_the_predictions():
    torch.manual_seed(0)
    adv = ConditionalAdversary(2, 2, hidden=8, entropy=True)
    f = torch.tensor([[1.0, 2.0], [0.5, -1.0], [2.0, 0.0], [-1.0, 1.0]])
    logits = torch.tensor([[0.0, 0.0], [3.0, -1.0], [1.0, 1.0], [-2.0, 2.0]])
    loss, _ = adv(f, logits, 2, 1.0)
    d = adv.discriminator(multilinear_map(f, torch.softmax(logits, 1))).squeeze(1).tolist()
    probs = torch.softmax(logits, 1).tolist()
    raw = [1.0 + math.exp(sum(p * math.log(p) for p in row)) for row in probs]
    w = [r * 4 / sum(raw) for r in raw]
    expected = sum(wi * bce(x, y) for wi, x, y in zip(w, d, [1, 1, 0, 0])) / 4
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    unweighted = sum(bce(x, y) for x, y in zip(d, [1, 1, 0, 0])) / 4
    assert abs(expected - unweighted) > 1e-3  # the weights matter in this example


# -- wiring -----------------------------------------------------------------------------------
@pytest.mark.parametrize("randomized", [False, True])
def test_embedding_gets_the_reversed_domain_gradient_and_the_prediction_none(randomized):
    torch.manual_seed(1)
    adv = ConditionalAdversary(3, 2, hidden=8, randomized=randomized, randomized_dim=5)
    f = torch.randn(4, 3, requires_grad=True)
    logits = torch.randn(4, 2, requires_grad=True)
    coeff = 0.7
    loss, _ = adv(f, logits, 2, coeff)
    loss.backward()
    assert logits.grad is None  # g is detached, as in TLlib: nothing flows back into the classifier

    # the same loss without the reversal layer, written out
    f2 = f.detach().clone().requires_grad_(True)
    g = torch.softmax(logits.detach(), 1)
    h = randomized_multilinear_map(f2, g, adv.r_f, adv.r_g) if randomized else multilinear_map(f2, g)
    d = adv.discriminator(h).squeeze(1)
    plain = F.binary_cross_entropy_with_logits(d, torch.tensor([1.0, 1.0, 0.0, 0.0]))
    torch.testing.assert_close(loss, plain)
    plain.backward()
    assert f2.grad.abs().sum() > 0
    torch.testing.assert_close(f.grad, -coeff * f2.grad)


def _step_grads(trade_off: float, step: int = 5):
    model = make_tiny_model()
    cdan = setup(Cdan(trade_off=trade_off, hidden=32), model)
    model.train(), cdan.train()
    batch = make_tiny_batch(("weak",), seed=3)
    out = cdan.training_step(batch, step_ctx(model, step=step))
    out.loss.backward()
    return model, cdan, out


def test_cdan_step_adds_the_domain_loss_and_spares_the_classifier():
    model, cdan, out = _step_grads(1.0)
    model0, _, out0 = _step_grads(0.0)
    m = out.metrics
    assert m["grl_coeff"] == pytest.approx(reversal_coefficient(0.5))
    torch.testing.assert_close(out.loss, m["source_ce"] + m["domain_loss"])
    assert set(m) == {"source_ce", "source_acc", "domain_loss", "domain_acc", "grl_coeff"}
    # the classifier feels only the cross-entropy; the bottleneck also feels the reversed domain loss
    torch.testing.assert_close(model.classifier.weight.grad, model0.classifier.weight.grad)
    assert not torch.allclose(model.bottleneck[0].weight.grad, model0.bottleneck[0].weight.grad)
    assert cdan.adversary.discriminator[0].weight.grad.abs().sum() > 0


def test_at_the_first_step_the_features_feel_only_the_cross_entropy():
    model, cdan, out = _step_grads(1.0, step=0)
    model0, _, _ = _step_grads(0.0, step=0)
    assert out.metrics["grl_coeff"] == 0.0
    torch.testing.assert_close(model.bottleneck[0].weight.grad, model0.bottleneck[0].weight.grad)
    assert cdan.adversary.discriminator[0].weight.grad.abs().sum() > 0  # the discriminator still learns


def test_discriminator_width_and_randomized_matrices_are_seeded_fixed_buffers():
    model = make_tiny_model()
    full = setup(Cdan(), model)
    assert full.adversary.discriminator[0].in_features == model.embed_dim * model.num_classes
    assert full.adversary.discriminator[0].out_features == 1024
    assert not [k for k in full.state_dict() if k.endswith(("r_f", "r_g"))]

    a = setup(Cdan(randomized=True, randomized_dim=64, hidden=8), model, seed=4)
    b = setup(Cdan(randomized=True, randomized_dim=64, hidden=8), model, seed=4)
    c = setup(Cdan(randomized=True, randomized_dim=64, hidden=8), model, seed=5)
    assert a.adversary.discriminator[0].in_features == 64
    assert a.adversary.r_f.shape == (model.embed_dim, 64) and a.adversary.r_g.shape == (model.num_classes, 64)
    assert torch.equal(a.adversary.r_f, b.adversary.r_f) and torch.equal(a.adversary.r_g, b.adversary.r_g)
    assert not torch.equal(a.adversary.r_f, c.adversary.r_f)
    state = a.state_dict()
    assert "adversary.r_f" in state and "adversary.r_g" in state
    assert all(p is not a.adversary.r_f for p in a.parameters())  # fixed, never trained
    c.load_state_dict(state)
    assert torch.equal(c.adversary.r_f, a.adversary.r_f)


def test_tllib_warm_start_equals_gamma_2_5_over_2500_steps():
    for i in (0, 1, 250, 1000, 2499):
        tllib = 2.0 / (1.0 + math.exp(-1.0 * i / 1000)) - 1.0
        assert reversal_coefficient(i / 2500, gamma=2.5) == pytest.approx(tllib, rel=1e-12, abs=1e-15)


# -- parameters -------------------------------------------------------------------------------
def test_defaults_are_tllibs():
    assert Cdan.default_params() == {
        "trade_off": 1.0,
        "gamma": 10.0,
        "entropy": False,
        "randomized": False,
        "randomized_dim": 1024,
        "hidden": 1024,
        "dropout": 0.0,
    }
    assert Cdan.name == "cdan" and Cdan.protocols == ("uda",) and Cdan.target_views == ("weak",)


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"trade_off": -1.0}, r"cdan: params.trade_off must be >= 0, got -1.0"),
        ({"gamma": -2.0}, r"cdan: params.gamma must be >= 0"),
        ({"randomized_dim": 0}, r"cdan: params.randomized_dim must be a positive width, got 0"),
        ({"hidden": 0}, r"cdan: params.hidden must be a positive width, got 0"),
        ({"dropout": 1.0}, r"cdan: params.dropout must lie in \[0, 1\), got 1.0"),
    ],
)
def test_bad_params_are_user_errors(raw, message):
    with pytest.raises(UserError, match=message):
        Cdan.parse_params(raw)


def test_param_types_are_checked():
    with pytest.raises(ValueError, match="entropy: expected true or false"):
        Cdan.parse_params({"entropy": "yes"})
    with pytest.raises(ValueError, match="unknown parameter"):
        Cdan.parse_params({"random": True})


@pytest.mark.parametrize(
    "params", [{"entropy": True, "hidden": 32}, {"randomized": True, "randomized_dim": 64, "entropy": True}]
)
def test_cdan_conforms_with_non_default_params(params):
    check_strategy(Cdan, params)
