"""The CORAL strategy: the loss is the paper's, the strategy honours tlbench's contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tlbench import StepContext, UserError
from tlbench.testing import check_strategy, make_tiny_batch, make_tiny_model
from tlbench_coral import Coral, coral_loss


def paper_coral(source: np.ndarray, target: np.ndarray) -> float:
    """Sun & Saenko 2016, Eq. 1-3, written as in the paper (float64)."""

    def cov(d: np.ndarray) -> np.ndarray:
        n = len(d)
        ones = np.ones((1, n))
        return (d.T @ d - (ones @ d).T @ (ones @ d) / n) / (n - 1)

    dim = source.shape[1]
    return float(np.sum((cov(source) - cov(target)) ** 2) / (4 * dim * dim))


def test_loss_matches_the_papers_equations():
    rng = np.random.default_rng(0)
    source = rng.normal(size=(16, 5))
    target = rng.normal(size=(12, 5)) * np.array([1.0, 2.0, 0.5, 1.0, 3.0]) + 4.0
    got = coral_loss(torch.from_numpy(source).float(), torch.from_numpy(target).float()).item()
    assert got == pytest.approx(paper_coral(source, target), rel=1e-5)
    assert got > 0.1


def test_loss_ignores_a_constant_offset_but_not_a_scale():
    x = torch.randn(32, 8, generator=torch.Generator().manual_seed(1))
    assert coral_loss(x, x + 5.0).item() == pytest.approx(0.0, abs=1e-6)
    assert coral_loss(x, 2.0 * x).item() > 0.01


def test_loss_is_float32_under_bf16_autocast():
    x = torch.randn(8, 4).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = coral_loss(x, x * 3)
    assert out.dtype == torch.float32 and out.dim() == 0


def test_loss_needs_two_samples_per_side():
    with pytest.raises(ValueError, match="at least 2 samples"):
        coral_loss(torch.randn(1, 4), torch.randn(5, 4))


def test_minimising_the_loss_aligns_the_covariances():
    g = torch.Generator().manual_seed(0)
    source = torch.randn(64, 4, generator=g)
    target = torch.randn(64, 4, generator=g) @ torch.diag(torch.tensor([3.0, 0.2, 1.0, 2.0]))
    scale = torch.ones(4, requires_grad=True)
    before = coral_loss(source, target).item()
    opt = torch.optim.Adam([scale], lr=0.05)
    for _ in range(200):
        opt.zero_grad()
        coral_loss(source * scale, target).backward()
        opt.step()
    assert coral_loss(source * scale, target).item() < 0.05 * before
    assert scale.detach().abs()[0] > 2.0 and scale.detach().abs()[1] < 0.5  # it learned the scales


@pytest.mark.parametrize("params", [None, {"layer": "logits", "trade_off": 0.5}])
def test_conforms_to_the_strategy_contract(params):
    check_strategy(Coral, params)


def test_params_are_validated():
    assert Coral.default_params() == {"trade_off": 1.0, "layer": "embedding"}
    with pytest.raises(UserError, match="params.layer must be one of embedding, logits"):
        Coral.parse_params({"layer": "fc8"})
    with pytest.raises(UserError, match="trade_off"):
        Coral.parse_params({"trade_off": -1})
    with pytest.raises(ValueError, match="valid: trade_off, layer"):
        Coral.parse_params({"lambda": 1})


def test_trade_off_zero_leaves_the_source_cross_entropy():
    torch.manual_seed(0)
    model = make_tiny_model()
    batch = make_tiny_batch(("weak",))
    ctx = StepContext(step=0, total_steps=10, model=model, device=torch.device("cpu"), num_classes=3)
    out = Coral(trade_off=0.0).training_step(batch, ctx)
    assert torch.equal(out.loss.detach(), out.metrics["source_ce"])
    assert out.metrics["coral"] > 0
    weighted = Coral(trade_off=2.0).training_step(batch, ctx)
    expected = weighted.metrics["source_ce"] + 2.0 * weighted.metrics["coral"]
    assert weighted.loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_refuses_a_batch_without_target_images():
    model = make_tiny_model()
    ctx = StepContext(step=0, total_steps=10, model=model, device=torch.device("cpu"), num_classes=3)
    with pytest.raises(ValueError, match="needs target images"):
        Coral().training_step(make_tiny_batch(()), ctx)
