"""``jan``: the joint MMD by hand, the product of the layers' kernels, gradients, parameters."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tlbench import SetupContext, StepContext, TransferModel, UserError
from tlbench.testing import check_strategy, make_tiny_batch, make_tiny_model
from tlbench_builtins.strategies.jan import Jan, gaussian_kernel_matrix, jmmd, jmmd_from_kernel
from tlbench_builtins.strategies.mmd import mk_mmd

CPU = torch.device("cpu")
ALPHAS = (0.125, 0.25, 0.5, 1.0, 2.0)
SIGMA = 0.92

# 2 source then 2 target samples: embeddings (2-d) and softmax predictions (2 classes)
EMB = [[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]
PROB = [[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.5, 0.5]]


def setup(strategy, model: TransferModel, total_steps: int = 10):
    strategy.setup(model, SetupContext(model.num_classes, model.feature_dim, model.embed_dim, total_steps, CPU, 0))
    return strategy.to(CPU)


def step_ctx(model: TransferModel, step: int = 0, total: int = 10) -> StepContext:
    return StepContext(step=step, total_steps=total, model=model, device=CPU, num_classes=model.num_classes)


def sq(a: list[float], b: list[float]) -> float:
    return sum((x - y) ** 2 for x, y in zip(a, b))


def hand_kernels(emb: list[list[float]], prob: list[list[float]]) -> tuple[list[list[float]], list[list[float]]]:
    """The embedding's multi-kernel and the predictions' Gaussian, entry by entry with math.exp."""
    n = len(emb)
    scale = sum(sq(emb[i], emb[j]) for i in range(n) for j in range(n)) / n**2  # mean, diagonal included
    scale = scale or torch.finfo(torch.float32).tiny
    k_emb = [[sum(math.exp(-sq(emb[i], emb[j]) / (2 * a * scale)) for a in ALPHAS) for j in range(n)] for i in range(n)]
    k_pred = [[math.exp(-sq(prob[i], prob[j]) / (2 * SIGMA**2)) for j in range(n)] for i in range(n)]
    return k_emb, k_pred


def hand_estimate(k: list[list[float]], n: int) -> float:
    """tllib's quadratic JMMD: off-diagonal source and target means, minus twice the cross mean, plus its offset."""
    m = len(k) - n
    ss = sum(k[i][j] for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    tt = sum(k[n + i][n + j] for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    st = sum(k[i][n + j] for i in range(n) for j in range(m)) / (n * m)
    return ss + tt - 2 * st + 1 / (n - 1) + 1 / (m - 1)


def run_jmmd(emb, prob, n: int = 2, **kw) -> float:
    e, p = torch.tensor(emb), torch.tensor(prob)
    return float(jmmd(e[:n], e[n:], p[:n], p[n:], ALPHAS, SIGMA, **kw))


# -- the estimate by hand ----------------------------------------------------------------------
def test_jmmd_equals_the_hand_computed_product_kernel_estimate():
    k_emb, k_pred = hand_kernels(EMB, PROB)
    # spot-check one entry fully written out: source 0 vs target 0, d_emb^2 = 4, d_pred^2 = 0.98
    scale = (2 * (1 + 4 + 2 + 5 + 1 + 2)) / 16  # pairwise squared distances 1,4,2,5,1,2, each twice
    assert k_emb[0][2] == pytest.approx(sum(math.exp(-4 / (2 * a * scale)) for a in ALPHAS))
    assert k_pred[0][2] == pytest.approx(math.exp(-0.98 / (2 * 0.92 * 0.92)))
    k = [[k_emb[i][j] * k_pred[i][j] for j in range(4)] for i in range(4)]
    expected = (
        (k[0][1] + k[1][0]) / 2 + (k[2][3] + k[3][2]) / 2 - 2 * (k[0][2] + k[0][3] + k[1][2] + k[1][3]) / 4 + 2 / 1
    )
    assert expected == pytest.approx(hand_estimate(k, 2))
    assert run_jmmd(EMB, PROB) == pytest.approx(expected, rel=1e-6)


def test_the_joint_kernel_is_the_product_of_the_layers_kernels_not_their_sum():
    # every embedding equal: the embedding kernel is 5 (five Gaussians at distance 0) everywhere,
    # so the product makes the estimate 5 times the prediction-only one; a sum would add a
    # constant 5, which the estimate's off-diagonal and cross means cancel, leaving it 1 times
    same = [[0.3, -0.2]] * 4
    k_emb, k_pred = hand_kernels(same, PROB)
    assert all(v == pytest.approx(5.0) for row in k_emb for v in row)
    prediction_only = hand_estimate(k_pred, 2) - 2.0  # without tllib's offset
    assert abs(prediction_only) > 0.05
    assert run_jmmd(same, PROB) - 2.0 == pytest.approx(5 * prediction_only, rel=1e-5)
    summed = hand_estimate([[k_emb[i][j] + k_pred[i][j] for j in range(4)] for i in range(4)], 2) - 2.0
    assert summed == pytest.approx(prediction_only)  # what a sum would have given
    assert run_jmmd(same, PROB) - 2.0 != pytest.approx(summed, rel=1e-3)


def test_with_identical_predictions_jmmd_is_the_embeddings_mk_mmd_plus_tllibs_offset():
    e = torch.tensor(EMB)
    p = torch.full((4, 2), 0.5)
    assert float(gaussian_kernel_matrix(p, SIGMA).min()) == 1.0
    got = float(jmmd(e[:2], e[2:], p[:2], p[2:], ALPHAS, SIGMA))
    assert got == pytest.approx(float(mk_mmd(e[:2], e[2:], ALPHAS)) + 2.0, rel=1e-6)


def test_estimator_with_unequal_batches_and_the_linear_one_by_hand():
    g = torch.Generator().manual_seed(3)
    a = torch.rand(5, 5, generator=g)
    k = (a + a.T).tolist()  # a symmetric "kernel" matrix: 2 source, 3 target rows
    assert float(jmmd_from_kernel(torch.tensor(k), 2)) == pytest.approx(hand_estimate(k, 2), rel=1e-6)
    b = torch.rand(6, 6, generator=g)
    k6 = (b + b.T).tolist()  # 3 source, 3 target rows: tllib's cyclic pairs (i, i+1 mod 3)
    n = 3
    linear = sum(
        k6[i][(i + 1) % n] + k6[n + i][n + (i + 1) % n] - k6[i][n + (i + 1) % n] - k6[(i + 1) % n][n + i]
        for i in range(n)
    ) / n + 2 / (n - 1)
    assert float(jmmd_from_kernel(torch.tensor(k6), 3, linear=True)) == pytest.approx(linear, rel=1e-6)
    with pytest.raises(ValueError, match="at least 2 samples"):
        jmmd_from_kernel(torch.tensor(k), 1)


# -- gradients -------------------------------------------------------------------------------
def _explicit_jmmd(emb: torch.Tensor, prob: torch.Tensor, detach_bandwidth: bool = True) -> torch.Tensor:
    """The same estimate with explicit loops over pairs (float64), for autograd to differentiate."""
    n = len(emb)
    d2 = [[((emb[i] - emb[j]) ** 2).sum() for j in range(n)] for i in range(n)]
    scale = sum(d2[i][j] for i in range(n) for j in range(n)) / n**2
    if detach_bandwidth:
        scale = scale.detach()
    k = [
        [
            sum(torch.exp(-d2[i][j] / (2 * a * scale)) for a in ALPHAS)
            * torch.exp(-((prob[i] - prob[j]) ** 2).sum() / (2 * SIGMA**2))
            for j in range(n)
        ]
        for i in range(n)
    ]
    return hand_estimate(k, n // 2)  # type: ignore[arg-type]  # tensors add like floats


def test_gradients_reach_embeddings_and_predictions_with_the_bandwidth_detached():
    emb = torch.tensor(EMB, dtype=torch.float64, requires_grad=True)
    prob = torch.tensor(PROB, dtype=torch.float64, requires_grad=True)
    g_emb, g_prob = torch.autograd.grad(_explicit_jmmd(emb, prob), [emb, prob])
    e32, p32 = emb.detach().float().requires_grad_(True), prob.detach().float().requires_grad_(True)
    out = jmmd(e32[:2], e32[2:], p32[:2], p32[2:], ALPHAS, SIGMA)
    out.backward()
    torch.testing.assert_close(e32.grad.double(), g_emb, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(p32.grad.double(), g_prob, rtol=1e-4, atol=1e-6)
    assert p32.grad.abs().sum() > 0  # the prediction layer is aligned too
    g_emb_live, _ = torch.autograd.grad(_explicit_jmmd(emb, prob, detach_bandwidth=False), [emb, prob])
    assert not torch.allclose(g_emb_live, g_emb, rtol=1e-3)  # so the comparison above sees the detach


@pytest.mark.parametrize(
    "ramp,step,weight",
    [(False, 0, 2.0), (False, 7, 2.0), (True, 0, 0.0), (True, 3, 2.0 * (2 / (1 + math.exp(-3.0)) - 1))],
)
def test_strategy_loss_is_ce_plus_weighted_jmmd_of_embedding_and_softmax(ramp, step, weight):
    torch.manual_seed(0)
    model = make_tiny_model()
    jan = setup(Jan(trade_off=2.0, ramp=ramp), model)
    model.eval()  # deterministic forward, so the parts can be recomputed
    batch = make_tiny_batch(("weak",))
    out = jan.training_step(batch, step_ctx(model, step=step, total=10))
    o = model.forward_all(torch.cat([batch.source, batch.target]))
    p = F.softmax(o.logits, dim=1)
    transfer = jmmd(o.embedding[:4], o.embedding[4:], p[:4], p[4:])
    expected = F.cross_entropy(o.logits[:4], batch.source_labels) + weight * transfer
    torch.testing.assert_close(out.loss, expected)
    assert out.metrics["jmmd_weight"] == pytest.approx(weight)
    torch.testing.assert_close(out.metrics["jmmd"], transfer.detach())


def test_the_classifier_receives_the_jmmd_gradient_through_the_softmax():
    torch.manual_seed(0)
    model = make_tiny_model()
    jan = setup(Jan(), model)
    model.eval()
    batch = make_tiny_batch(("weak",))
    c = model.classifier.weight
    (g_loss,) = torch.autograd.grad(jan.training_step(batch, step_ctx(model)).loss, [c])
    o = model.forward_all(torch.cat([batch.source, batch.target]))
    (g_ce,) = torch.autograd.grad(F.cross_entropy(o.logits[:4], batch.source_labels), [c])
    assert (g_loss - g_ce).abs().sum() > 1e-6


# -- parameters ------------------------------------------------------------------------------
def test_defaults_follow_tllib():
    assert Jan.default_params() == {
        "trade_off": 1.0,
        "ramp": False,
        "linear": False,
        "alphas": ALPHAS,
        "sigma": 0.92,
    }


@pytest.mark.parametrize(
    "params,message",
    [
        ({"trade_off": -0.5}, "jan: params.trade_off must be >= 0"),
        ({"alphas": []}, "jan: params.alphas must be a non-empty list of positive bandwidth multipliers"),
        ({"alphas": [1.0, 0.0]}, "jan: params.alphas must be a non-empty list of positive bandwidth multipliers"),
        ({"sigma": 0.0}, "jan: params.sigma must be a positive bandwidth"),
    ],
)
def test_invalid_params_are_refused_with_the_parameter_named(params, message):
    with pytest.raises(UserError) as info:
        Jan.parse_params(params)
    assert str(info.value).startswith(message)


def test_needs_a_target_view():
    model = make_tiny_model()
    jan = setup(Jan(), model)
    with pytest.raises(ValueError, match="jan needs target images"):
        jan.training_step(make_tiny_batch(()), step_ctx(model))


@pytest.mark.parametrize("params", [{"linear": True}, {"ramp": True, "sigma": 0.5, "alphas": [1.0]}])
def test_conforms_with_non_default_params(params):
    check_strategy(Jan, params)
