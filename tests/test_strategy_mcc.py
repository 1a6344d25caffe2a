"""MCC (Minimum Class Confusion): the loss by hand, its limits, its gradient, the strategy's wiring."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tlbench import SetupContext, StepContext, TransferModel, UserError
from tlbench.plugins.registry import get_registry
from tlbench.testing import make_tiny_batch, make_tiny_model
from tlbench_builtins.strategies.mcc import Mcc, class_confusion_loss

CPU = torch.device("cpu")
EPS = 1e-5  # TLlib's entropy adds it inside the log


def setup(strategy, model: TransferModel, total_steps: int = 10):
    strategy.setup(model, SetupContext(model.num_classes, model.feature_dim, model.embed_dim, total_steps, CPU, 0))
    return strategy.to(CPU)


def step_ctx(model: TransferModel, step: int = 0, total: int = 10) -> StepContext:
    return StepContext(step=step, total_steps=total, model=model, device=CPU, num_classes=model.num_classes)


def mcc_by_hand(logits: list[list[float]], temperature: float) -> tuple[float, float]:
    """MCC in Python floats with explicit loops; (row-normalised loss, TLlib's column-divided loss)."""
    n, c = len(logits), len(logits[0])
    p = []
    for row in logits:
        e = [math.exp(z / temperature) for z in row]
        s = sum(e)
        p.append([v / s for v in e])
    h = [-sum(q * math.log(q + EPS) for q in row) for row in p]
    w = [1.0 + math.exp(-hi) for hi in h]
    total = sum(w)
    w = [n * wi / total for wi in w]
    m = [[sum(w[i] * p[i][a] * p[i][b] for i in range(n)) for b in range(c)] for a in range(c)]
    row = [sum(m[a]) for a in range(c)]
    by_rows = [[m[a][b] / row[a] for b in range(c)] for a in range(c)]
    by_cols = [[m[a][b] / row[b] for b in range(c)] for a in range(c)]  # TLlib's broadcast M / M.sum(dim=1)
    loss = lambda q: (sum(map(sum, q)) - sum(q[a][a] for a in range(c))) / c  # noqa: E731
    return loss(by_rows), loss(by_cols)


def mcc_loops_torch(logits: torch.Tensor, temperature: float, detach_weights: bool) -> torch.Tensor:
    """The same loops on 0-d tensors, for autograd; ``detach_weights`` says whether w carries gradient."""
    n, c = logits.shape
    p = []
    for i in range(n):
        e = [torch.exp(logits[i, k] / temperature) for k in range(c)]
        s = sum(e)
        p.append([v / s for v in e])
    w = []
    for i in range(n):
        h = -sum(q * torch.log(q + EPS) for q in p[i])
        w.append(1.0 + torch.exp(-(h.detach() if detach_weights else h)))
    total = sum(w)
    w = [n * wi / total for wi in w]
    m = [[sum(w[i] * p[i][a] * p[i][b] for i in range(n)) for b in range(c)] for a in range(c)]
    off = 0.0
    for a in range(c):
        r = sum(m[a])
        off = off + sum(m[a][b] / r for b in range(c) if b != a)
    return off / c


LOGITS_3x3 = [[2.0, 0.5, -1.0], [0.3, 1.7, 0.2], [-0.4, 0.1, 0.9]]
LOGITS_3x2 = [[1.2, -0.3], [0.1, 0.4], [-2.0, 1.5]]


@pytest.mark.parametrize("logits", [LOGITS_3x3, LOGITS_3x2])
@pytest.mark.parametrize("temperature", [2.5, 1.0])
def test_class_confusion_loss_equals_the_loops_by_hand(logits, temperature):
    by_rows, by_cols = mcc_by_hand(logits, temperature)
    assert by_rows == pytest.approx(by_cols, rel=1e-12)  # M is symmetric: TLlib's division is the same loss
    got = class_confusion_loss(torch.tensor(logits), temperature)
    assert got.dtype == torch.float32 and got.shape == ()
    assert float(got) == pytest.approx(by_rows, rel=1e-5, abs=1e-7)
    assert 0.0 < float(got) < (len(logits[0]) - 1) / len(logits[0])


def test_class_confusion_loss_default_temperature_is_tllibs_2_5():
    assert float(class_confusion_loss(torch.tensor(LOGITS_3x3))) == pytest.approx(
        mcc_by_hand(LOGITS_3x3, 2.5)[0], rel=1e-5
    )
    assert float(class_confusion_loss(torch.tensor(LOGITS_3x3))) != pytest.approx(
        mcc_by_hand(LOGITS_3x3, 1.0)[0], rel=1e-3
    )


def test_confident_never_confused_predictions_have_zero_loss():
    exact = torch.tensor([[1e4, 0.0, 0.0], [0.0, 1e4, 0.0], [0.0, 0.0, 1e4]])  # softmax is exactly one-hot
    assert float(class_confusion_loss(exact)) == 0.0
    near = torch.tensor([[60.0, 0.0, 0.0], [0.0, 60.0, 0.0], [0.0, 0.0, 60.0], [60.0, 0.0, 0.0]])
    assert float(class_confusion_loss(near)) == pytest.approx(0.0, abs=1e-9)
    # a class nobody predicts (its row of M underflows to 0) counts as 0, not NaN
    missing = torch.tensor([[1e4, 0.0, 0.0], [0.0, 1e4, 0.0]])
    assert float(class_confusion_loss(missing)) == 0.0


def test_uniform_predictions_give_the_maximal_confusion():
    for c in (2, 3, 5):
        assert float(class_confusion_loss(torch.zeros(4, c))) == pytest.approx((c - 1) / c, rel=1e-6)


def test_gradient_flows_into_the_logits_with_the_weights_detached_as_tllib_does():
    logits = torch.tensor(LOGITS_3x3, dtype=torch.float64, requires_grad=True)
    class_confusion_loss(logits, 2.5).backward()
    got = logits.grad.clone()
    assert torch.isfinite(got).all() and (got.abs() > 1e-6).all()

    ref = logits.detach().clone().requires_grad_(True)
    mcc_loops_torch(ref, 2.5, detach_weights=True).backward()
    torch.testing.assert_close(got, ref.grad.to(got.dtype), rtol=1e-4, atol=1e-7)

    undetached = logits.detach().clone().requires_grad_(True)
    mcc_loops_torch(undetached, 2.5, detach_weights=False).backward()
    assert not torch.allclose(got, undetached.grad, rtol=1e-3, atol=1e-6)  # would hold were w not detached


def test_a_gradient_step_on_the_logits_lowers_the_confusion():
    logits = torch.tensor(LOGITS_3x3, requires_grad=True)
    before = class_confusion_loss(logits)
    before.backward()
    after = class_confusion_loss(logits.detach() - 0.5 * logits.grad)
    assert float(after) < float(before.detach())


# -- the strategy ----------------------------------------------------------------------------
@pytest.mark.parametrize("trade_off,temperature", [(1.0, 2.5), (0.3, 1.5)])
def test_mcc_loss_is_source_ce_plus_weighted_confusion_of_the_target_logits(trade_off, temperature):
    torch.manual_seed(0)
    model = make_tiny_model()
    batch = make_tiny_batch(("weak",))
    mcc = setup(Mcc(trade_off=trade_off, temperature=temperature), model)
    model.eval()  # deterministic forward, so the parts can be recomputed
    out = mcc.training_step(batch, step_ctx(model))
    logits = model(torch.cat([batch.source, batch.target]))
    ce = F.cross_entropy(logits[:4], batch.source_labels)
    target = logits[4:].detach().double().tolist()
    confusion = mcc_by_hand(target, temperature)[0]
    assert float(out.loss.detach()) == pytest.approx(float(ce.detach()) + trade_off * confusion, rel=1e-5)
    assert float(out.metrics["mcc"]) == pytest.approx(confusion, rel=1e-5)
    assert float(out.metrics["source_ce"]) == pytest.approx(float(ce.detach()), rel=1e-6)


def _head_grad(trade_off: float, temperature: float = 0.05) -> torch.Tensor:
    torch.manual_seed(0)
    model = make_tiny_model()
    # the untrained tiny model's logits differ by ~0.1: near-uniform predictions, where MCC is flat
    mcc = setup(Mcc(trade_off=trade_off, temperature=temperature), model)
    model.eval()
    mcc.training_step(make_tiny_batch(("weak",)), step_ctx(model)).loss.backward()
    return model.classifier.weight.grad.clone()


def test_the_target_term_reaches_the_model_through_the_target_logits_times_trade_off():
    torch.manual_seed(0)
    model = make_tiny_model()
    model.eval()
    batch = make_tiny_batch(("weak",))
    F.cross_entropy(model(batch.source), batch.source_labels).backward()
    ce_only = model.classifier.weight.grad.clone()
    model.zero_grad()
    reference = F.cross_entropy(model(batch.source), batch.source_labels) + 2.0 * mcc_loops_torch(
        model(batch.target).double(), 0.05, detach_weights=True
    )
    reference.backward()
    expected = model.classifier.weight.grad.clone()

    torch.testing.assert_close(_head_grad(0.0), ce_only)
    g1, g2 = _head_grad(1.0), _head_grad(2.0)
    assert (g2 - ce_only).abs().max() > 1e-5
    torch.testing.assert_close(g2, expected.float(), rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(g2 - ce_only, 2.0 * (g1 - ce_only), rtol=1e-3, atol=1e-8)  # linear in trade_off


def test_mcc_needs_a_target_view():
    model = make_tiny_model()
    mcc = setup(Mcc(), model)
    with pytest.raises(ValueError, match="mcc needs target images"):
        mcc.training_step(make_tiny_batch(()), step_ctx(model))


def test_mcc_defaults_and_registration():
    assert Mcc.default_params() == {"trade_off": 1.0, "temperature": 2.5}
    assert get_registry().get("strategy", "mcc") is Mcc
    assert Mcc.protocols == ("uda",) and Mcc.target_views == ("weak",)
    assert list(Mcc().parameters()) == []  # no module of its own


@pytest.mark.parametrize(
    "params,message",
    [
        ({"trade_off": -0.1}, r"mcc: params.trade_off must be >= 0, got -0.1"),
        ({"temperature": 0.0}, r"mcc: params.temperature must be > 0, got 0.0"),
        ({"temperature": -2}, r"mcc: params.temperature must be > 0, got -2"),
    ],
)
def test_mcc_params_are_validated(params, message):
    with pytest.raises(UserError, match=message):
        Mcc.parse_params(params)


def test_mcc_params_reject_unknown_keys_and_wrong_types():
    with pytest.raises(ValueError, match="unknown parameter.*temp.*valid: trade_off, temperature"):
        Mcc.parse_params({"temp": 2.0})
    with pytest.raises(ValueError, match="temperature: expected a number"):
        Mcc.parse_params({"temperature": "hot"})
