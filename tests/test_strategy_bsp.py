"""BSP (``bsp``): the spectral penalty and its gradient in closed form, and its composition with DANN and CDAN."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tlbench import SetupContext, StepContext, TransferModel, UserError
from tlbench.testing import check_strategy, make_tiny_batch, make_tiny_model
from tlbench_builtins.strategies.bsp import Bsp, batch_spectral_penalty, top_singular_values_squared
from tlbench_builtins.strategies.cdan import Cdan, ConditionalAdversary
from tlbench_builtins.strategies.dann import Dann

CPU = torch.device("cpu")


def setup(strategy, model: TransferModel, seed: int = 0, total_steps: int = 10):
    torch.manual_seed(seed)
    strategy.setup(model, SetupContext(model.num_classes, model.feature_dim, model.embed_dim, total_steps, CPU, seed))
    return strategy.to(CPU)


def step_ctx(model: TransferModel, step: int = 5, total: int = 10) -> StepContext:
    return StepContext(step=step, total_steps=total, model=model, device=CPU, num_classes=model.num_classes)


def known_svd(m: int, n: int, s: list[float], seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """U (m×r, orthonormal columns), V (n×r) from QR of fixed random matrices, and F = U diag(s) V^T."""
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((m, len(s))))
    v, _ = np.linalg.qr(rng.standard_normal((n, len(s))))
    return u, v, u @ np.diag(s) @ v.T


# -- the penalty ------------------------------------------------------------------------------
def test_penalty_of_matrices_with_known_singular_values():
    d = torch.tensor([[3.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])  # diag(3,2,1) padded
    assert top_singular_values_squared(d, 1).item() == pytest.approx(9.0)
    assert top_singular_values_squared(d, 2).item() == pytest.approx(9.0 + 4.0)
    assert top_singular_values_squared(d, 3).item() == pytest.approx(14.0)
    assert top_singular_values_squared(d, 7).item() == pytest.approx(14.0)  # k beyond the rank: all of them
    assert top_singular_values_squared(d[[2, 0, 3, 1]][:, [1, 2, 0]], 1).item() == pytest.approx(9.0)  # permuted

    u, v = torch.tensor([1.0, 2.0, 2.0]), torch.tensor([3.0, 4.0])  # |u| = 3, |v| = 5: sigma = 15
    rank1 = torch.outer(u, v)
    assert top_singular_values_squared(rank1, 1).item() == pytest.approx(225.0)
    assert top_singular_values_squared(rank1, 2).item() == pytest.approx(225.0, abs=1e-3)
    # source and target batches each decomposed on their own, then summed
    assert batch_spectral_penalty(d, rank1, 1).item() == pytest.approx(9.0 + 225.0)
    assert batch_spectral_penalty(d, rank1, 2).item() == pytest.approx(13.0 + 225.0, abs=1e-3)


def test_penalty_gradient_is_two_sigma_u_v_transposed():
    u, v = torch.tensor([1.0, 2.0, 2.0]), torch.tensor([3.0, 4.0])
    f = torch.outer(u, v).requires_grad_(True)
    top_singular_values_squared(f, 1).backward()
    # 2 * sigma * (u/|u|)(v/|v|)^T = 2 * 15 * u v^T / 15 = 2 u v^T
    torch.testing.assert_close(f.grad, 2 * torch.outer(u, v))

    s = [5.0, 3.0, 1.0]
    uu, vv, mat = known_svd(4, 6, s)
    for k in (1, 2):
        x = torch.tensor(mat, dtype=torch.float64, requires_grad=True)
        top_singular_values_squared(x, k).backward()
        expected = sum(2 * s[i] * np.outer(uu[:, i], vv[:, i]) for i in range(k))
        np.testing.assert_allclose(x.grad.numpy(), expected, atol=1e-6)
        assert top_singular_values_squared(x, k).item() == pytest.approx(sum(si**2 for si in s[:k]))


# -- the strategy -----------------------------------------------------------------------------
def _run(strategy: Bsp | Dann | Cdan, seed: int = 0):
    model = make_tiny_model()
    setup(strategy, model, seed)
    model.train(), strategy.train()
    batch = make_tiny_batch(("weak",), seed=3)
    out = strategy.training_step(batch, step_ctx(model))
    out.loss.backward()
    return model, strategy, out, batch


def test_bsp_loss_adds_the_penalty_of_the_embeddings_computed_by_numpy():
    model, bsp, out, batch = _run(Bsp(trade_off=0.5, trade_off_bsp=0.01, hidden=16))
    fresh = make_tiny_model()
    fresh.train()
    with torch.no_grad():
        emb = fresh.forward_all(torch.cat([batch.source, batch.target])).embedding.double().numpy()
    n = len(batch.source)
    by_hand = np.linalg.svd(emb[:n], compute_uv=False)[0] ** 2 + np.linalg.svd(emb[n:], compute_uv=False)[0] ** 2
    m = out.metrics
    assert float(m["bsp_penalty"]) == pytest.approx(by_hand, rel=1e-4)
    torch.testing.assert_close(out.loss, m["source_ce"] + 0.5 * m["domain_loss"] + 0.01 * m["bsp_penalty"])
    assert set(m) == {"source_ce", "source_acc", "domain_loss", "domain_acc", "grl_coeff", "bsp_penalty"}


def test_penalty_gradient_reaches_the_embedding_and_not_the_classifier():
    lam = 0.5
    with_bsp, _, _, batch = _run(Bsp(trade_off_bsp=lam, hidden=16))
    without, _, _, _ = _run(Bsp(trade_off_bsp=0.0, hidden=16))
    # the penalty's own gradient on the bottleneck, from a third copy of the same model and batch
    alone = make_tiny_model()
    alone.train()
    emb = alone.forward_all(torch.cat([batch.source, batch.target])).embedding
    n = len(batch.source)
    batch_spectral_penalty(emb[:n], emb[n:], 1).backward()
    w = "0.weight"
    diff = dict(with_bsp.bottleneck.named_parameters())[w].grad - dict(without.bottleneck.named_parameters())[w].grad
    torch.testing.assert_close(diff, lam * dict(alone.bottleneck.named_parameters())[w].grad, rtol=1e-4, atol=1e-6)
    assert diff.abs().sum() > 0
    torch.testing.assert_close(with_bsp.classifier.weight.grad, without.classifier.weight.grad)


def test_base_dann_without_the_penalty_is_dann():
    model_b, _, out_b, _ = _run(Bsp(trade_off_bsp=0.0, hidden=16))
    model_d, _, out_d, _ = _run(Dann(hidden=16))
    torch.testing.assert_close(out_b.loss, out_d.loss)
    for (name, p), q in zip(model_b.named_parameters(), model_d.parameters()):
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, msg=name)


@pytest.mark.parametrize("extra", [{}, {"entropy": True}, {"randomized": True, "randomized_dim": 32}])
def test_base_cdan_without_the_penalty_is_cdan(extra):
    model_b, bsp, out_b, _ = _run(Bsp(base="cdan", trade_off_bsp=0.0, hidden=16, **extra))
    model_c, cdan, out_c, _ = _run(Cdan(hidden=16, **extra))
    assert isinstance(bsp.adversary, ConditionalAdversary) and not hasattr(bsp, "discriminator")
    assert list(bsp.state_dict()) == list(cdan.state_dict())
    torch.testing.assert_close(out_b.loss, out_c.loss)
    torch.testing.assert_close(model_b.bottleneck[0].weight.grad, model_c.bottleneck[0].weight.grad)
    torch.testing.assert_close(bsp.adversary.discriminator[0].weight.grad, cdan.adversary.discriminator[0].weight.grad)
    # and the penalty then adds to the same loss
    _, _, out_p, _ = _run(Bsp(base="cdan", trade_off_bsp=1e-3, hidden=16, **extra))
    torch.testing.assert_close(out_p.loss, out_c.loss + 1e-3 * out_p.metrics["bsp_penalty"])


def test_base_dann_discriminator_sees_the_embedding():
    model = make_tiny_model()
    bsp = setup(Bsp(), model)
    assert bsp.discriminator[0].in_features == model.embed_dim and bsp.discriminator[0].out_features == 1024
    cdan_based = setup(Bsp(base="cdan"), model)
    assert cdan_based.adversary.discriminator[0].in_features == model.embed_dim * model.num_classes


# -- parameters -------------------------------------------------------------------------------
def test_defaults_are_tllibs():
    assert Bsp.default_params() == {
        "base": "dann",
        "trade_off": 1.0,
        "trade_off_bsp": 2e-4,
        "k": 1,
        "gamma": 10.0,
        "hidden": 1024,
        "dropout": 0.0,
        "entropy": False,
        "randomized": False,
        "randomized_dim": 1024,
    }
    assert Bsp.name == "bsp" and Bsp.protocols == ("uda",) and Bsp.target_views == ("weak",)


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"trade_off": -1.0}, r"bsp: params.trade_off must be >= 0, got -1.0"),
        ({"trade_off_bsp": -1e-4}, r"bsp: params.trade_off_bsp must be >= 0, got -0.0001"),
        ({"k": 0}, r"bsp: params.k must be a positive number of singular values, got 0"),
        ({"hidden": 0}, r"bsp: params.hidden must be a positive width, got 0"),
        ({"dropout": -0.1}, r"bsp: params.dropout must lie in \[0, 1\), got -0.1"),
        ({"entropy": True}, r"bsp: params.entropy applies only to base: cdan, got base: dann"),
        ({"randomized": True}, r"bsp: params.randomized applies only to base: cdan, got base: dann"),
        ({"base": "cdan", "randomized_dim": 0}, r"bsp: params.randomized_dim must be a positive width, got 0"),
    ],
)
def test_bad_params_are_user_errors(raw, message):
    with pytest.raises(UserError, match=message):
        Bsp.parse_params(raw)


def test_base_must_be_dann_or_cdan():
    with pytest.raises(ValueError, match="base: expected one of 'dann', 'cdan', got 'mdd'"):
        Bsp.parse_params({"base": "mdd"})
    with pytest.raises(UserError, match="bsp: params.base must be one of dann, cdan, got 'mdd'"):
        Bsp.Params(base="mdd")


@pytest.mark.parametrize(
    "params",
    [{"base": "cdan", "hidden": 32}, {"base": "cdan", "entropy": True, "randomized": True, "k": 2}, {"k": 3}],
)
def test_bsp_conforms_with_non_default_params(params):
    check_strategy(Bsp, params)
