"""AFN (stepwise adaptive feature norm): the norm step and entropy by hand, dropout, the strategy's wiring."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tlbench import SetupContext, StepContext, TransferModel, UserError
from tlbench.plugins.registry import get_registry
from tlbench.testing import make_tiny_batch, make_tiny_model
from tlbench_builtins.strategies.afn import Afn, l2_preserving_dropout, prediction_entropy, stepwise_norm_loss

CPU = torch.device("cpu")


def setup(strategy, model: TransferModel, total_steps: int = 10):
    strategy.setup(model, SetupContext(model.num_classes, model.feature_dim, model.embed_dim, total_steps, CPU, 0))
    return strategy.to(CPU)


def step_ctx(model: TransferModel, step: int = 0, total: int = 10) -> StepContext:
    return StepContext(step=step, total_steps=total, model=model, device=CPU, num_classes=model.num_classes)


# -- the norm step ---------------------------------------------------------------------------
@pytest.mark.parametrize("delta", [1.0, 0.3])
def test_norm_step_loss_value_and_gradient_by_hand(delta):
    # norms 5 and 2: the loss is (5 - (5 + delta))^2 and (2 - (2 + delta))^2, i.e. delta^2, averaged
    h = torch.tensor([[3.0, 4.0], [0.0, -2.0]], requires_grad=True)
    loss = stepwise_norm_loss(h, delta)
    assert float(loss.detach()) == pytest.approx(delta**2, rel=1e-6)
    loss.backward()
    # d/dh_i of (||h_i|| - r_i)^2 / N with r_i = ||h_i|| + delta fixed: 2 (||h_i|| - r_i) h_i / (N ||h_i||)
    n = 2
    expected = [[2 * (-delta) * 3 / (n * 5), 2 * (-delta) * 4 / (n * 5)], [0.0, 2 * (-delta) * -2 / (n * 2)]]
    torch.testing.assert_close(h.grad, torch.tensor(expected))


def test_norm_step_radius_is_detached_so_the_loss_is_not_zero_and_pushes_outward():
    # were the radius not detached, the loss would be delta^2 with zero gradient
    h = torch.tensor([[3.0, 4.0], [6.0, 8.0], [-1.0, 0.0]], requires_grad=True)
    stepwise_norm_loss(h, 1.0).backward()
    assert (h.grad.norm(dim=1) > 0).all()
    norms = h.detach().norm(dim=1)
    lr, delta, n = 0.1, 1.0, 3
    stepped = h.detach() - lr * h.grad
    # every feature moves outward along its own direction by lr * 2 * delta / N, whatever its norm
    torch.testing.assert_close(stepped.norm(dim=1), norms + lr * 2 * delta / n)
    torch.testing.assert_close(stepped / stepped.norm(dim=1, keepdim=True), h.detach() / norms.unsqueeze(1))
    # and the step is proportional to delta
    h2 = h.detach().clone().requires_grad_(True)
    stepwise_norm_loss(h2, 0.25).backward()
    torch.testing.assert_close(h2.grad, 0.25 * h.grad)


def test_norm_step_loss_of_a_zero_feature_is_finite_and_gives_no_gradient():
    h = torch.tensor([[0.0, 0.0], [3.0, 4.0]], requires_grad=True)
    loss = stepwise_norm_loss(h, 1.0)
    loss.backward()
    assert float(loss.detach()) == pytest.approx(1.0) and torch.isfinite(h.grad).all()
    assert h.grad[0].abs().sum() == 0


# -- entropy and dropout -----------------------------------------------------------------------
def test_prediction_entropy_on_known_probabilities():
    probs = [[0.5, 0.25, 0.25], [1 / 3, 1 / 3, 1 / 3], [1.0 - 2e-9, 1e-9, 1e-9]]
    logits = torch.tensor(probs, dtype=torch.float64).log()
    by_hand = [-sum(p * math.log(p + 1e-5) for p in row) for row in probs]
    assert by_hand[0] == pytest.approx(1.5 * math.log(2), rel=1e-4)  # the eps barely moves it
    assert by_hand[1] == pytest.approx(math.log(3), rel=1e-4)
    assert float(prediction_entropy(logits)) == pytest.approx(sum(by_hand) / 3, rel=1e-6)
    assert float(prediction_entropy(logits[1:2])) == pytest.approx(by_hand[1], rel=1e-6)
    assert float(prediction_entropy(logits[2:3])) == pytest.approx(0.0, abs=1e-4)


def test_l2_preserving_dropout_scales_kept_units_by_one_over_sqrt_keep():
    torch.manual_seed(0)
    h = torch.full((200, 50), 2.0)
    out = l2_preserving_dropout(h, 0.5, training=True)
    kept = out != 0
    assert 0.4 < kept.float().mean() < 0.6
    torch.testing.assert_close(out[kept], torch.full_like(out[kept], 2.0 / math.sqrt(0.5)))
    # the expected squared norm is kept: E||out||^2 = ||h||^2
    assert float(out.pow(2).sum() / h.pow(2).sum()) == pytest.approx(1.0, rel=0.05)
    assert torch.equal(l2_preserving_dropout(h, 0.5, training=False), h)
    assert torch.equal(l2_preserving_dropout(h, 0.0, training=True), h)


# -- the strategy ----------------------------------------------------------------------------
@pytest.mark.parametrize("trade_off_norm,delta,trade_off_entropy", [(0.05, 1.0, 0.0), (0.2, 0.3, 0.03)])
def test_afn_loss_is_source_ce_plus_norm_steps_plus_target_entropy(trade_off_norm, delta, trade_off_entropy):
    torch.manual_seed(0)
    model = make_tiny_model()
    batch = make_tiny_batch(("weak",))
    afn = setup(Afn(trade_off_norm=trade_off_norm, delta=delta, trade_off_entropy=trade_off_entropy), model)
    model.eval()  # no dropout, running BatchNorm statistics: the parts can be recomputed
    out = afn.training_step(batch, step_ctx(model))
    ce = float(F.cross_entropy(model(batch.source), batch.source_labels).detach())
    p_t = F.softmax(model(batch.target).double(), dim=1).tolist()
    entropy = sum(-sum(p * math.log(p + 1e-5) for p in row) for row in p_t) / len(p_t)
    # the norm term is delta^2 on each domain, whatever the features
    expected = ce + trade_off_norm * 2 * delta**2 + trade_off_entropy * entropy
    assert float(out.loss.detach()) == pytest.approx(expected, rel=1e-5)
    assert float(out.metrics["target_entropy"]) == pytest.approx(entropy, rel=1e-5)
    e_s = model.forward_all(batch.source).embedding.detach()
    assert float(out.metrics["source_norm"]) == pytest.approx(float(e_s.norm(dim=1).mean()), rel=1e-5)


def test_afn_gradient_is_ce_plus_the_outward_push_on_both_embeddings():
    torch.manual_seed(0)
    model = make_tiny_model()
    batch = make_tiny_batch(("weak",))
    trade_off_norm, delta = 0.5, 2.0
    afn = setup(Afn(trade_off_norm=trade_off_norm, delta=delta, dropout=0.0), model)
    model.eval()
    afn.training_step(batch, step_ctx(model)).loss.backward()
    params = list(model.bottleneck.parameters()) + list(model.backbone.parameters())
    got = [p.grad.clone() for p in params]

    # the same gradient assembled by hand: CE's, plus -2 delta h / (N ||h||) pushed back from each
    # domain's embedding
    model.zero_grad()
    expected = list(
        torch.autograd.grad(F.cross_entropy(model(batch.source), batch.source_labels), params, allow_unused=True)
    )
    for x in (batch.source, batch.target):
        e = model.forward_all(x).embedding
        push = trade_off_norm * (-2 * delta * e.detach() / (len(e) * e.detach().norm(dim=1, keepdim=True)))
        for i, g in enumerate(torch.autograd.grad(e, params, grad_outputs=push, allow_unused=True)):
            if g is not None:
                expected[i] = g if expected[i] is None else expected[i] + g
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-7)
    ce_grad = torch.autograd.grad(F.cross_entropy(model(batch.source), batch.source_labels), params[0])[0]
    assert float((got[0] - ce_grad).abs().max()) > 1e-4  # the norm term does reach the bottleneck


def test_afn_runs_source_and_target_in_separate_forwards_as_tllib_does():
    torch.manual_seed(0)
    model = make_tiny_model()
    afn = setup(Afn(), model)
    sizes = []
    forward_all = model.forward_all

    def spy(x):
        sizes.append(len(x))
        return forward_all(x)

    model.forward_all = spy
    model.train()
    afn.training_step(make_tiny_batch(("weak",), batch_size=5), step_ctx(model))
    assert sizes == [5, 5]


def test_afn_dropout_feeds_both_the_norm_loss_and_the_classifier_in_training():
    torch.manual_seed(0)
    model = make_tiny_model()
    batch = make_tiny_batch(("weak",))
    afn = setup(Afn(dropout=0.5), model)
    model.train()
    torch.manual_seed(7)
    out = afn.training_step(batch, step_ctx(model))

    # replay: same forwards, the same dropout draws in the same order, scaled by sqrt(1 - p)
    torch.manual_seed(7)
    e_s = model.forward_all(batch.source).embedding
    h_s = F.dropout(e_s, 0.5, training=True) * math.sqrt(0.5)
    e_t = model.forward_all(batch.target).embedding
    h_t = F.dropout(e_t, 0.5, training=True) * math.sqrt(0.5)
    assert (h_s == 0).any() and (h_t == 0).any()
    ce = F.cross_entropy(model.classifier(h_s), batch.source_labels)
    assert float(out.metrics["source_ce"]) == pytest.approx(float(ce.detach()), rel=1e-5)
    assert float(out.metrics["source_norm"]) == pytest.approx(float(h_s.detach().norm(dim=1).mean()), rel=1e-5)
    assert float(out.metrics["target_norm"]) == pytest.approx(float(h_t.detach().norm(dim=1).mean()), rel=1e-5)
    undropped = F.cross_entropy(model.classifier(e_s), batch.source_labels)
    assert float(ce.detach()) != pytest.approx(float(undropped.detach()), rel=1e-4)


def test_afn_needs_a_target_view():
    model = make_tiny_model()
    afn = setup(Afn(), model)
    with pytest.raises(ValueError, match="afn needs target images"):
        afn.training_step(make_tiny_batch(()), step_ctx(model))


def test_afn_defaults_and_registration():
    assert Afn.default_params() == {"trade_off_norm": 0.05, "delta": 1.0, "trade_off_entropy": 0.0, "dropout": 0.5}
    assert get_registry().get("strategy", "afn") is Afn
    assert Afn.protocols == ("uda",) and Afn.target_views == ("weak",)
    assert list(Afn().parameters()) == []


@pytest.mark.parametrize(
    "params,message",
    [
        ({"trade_off_norm": -1}, r"afn: params.trade_off_norm must be >= 0, got -1"),
        ({"delta": 0.0}, r"afn: params.delta must be > 0 \(the norm's step\), got 0.0"),
        ({"trade_off_entropy": -0.03}, r"afn: params.trade_off_entropy must be >= 0, got -0.03"),
        ({"dropout": 1.0}, r"afn: params.dropout must lie in \[0, 1\), got 1.0"),
        ({"dropout": -0.1}, r"afn: params.dropout must lie in \[0, 1\), got -0.1"),
    ],
)
def test_afn_params_are_validated(params, message):
    with pytest.raises(UserError, match=message):
        Afn.parse_params(params)


def test_afn_params_reject_unknown_keys_and_wrong_types():
    with pytest.raises(ValueError, match="unknown parameter.*r.*valid: trade_off_norm, delta"):
        Afn.parse_params({"r": 0.3})
    with pytest.raises(ValueError, match="delta: expected a number"):
        Afn.parse_params({"delta": "big"})
