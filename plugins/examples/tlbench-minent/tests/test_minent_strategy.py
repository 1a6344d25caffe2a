"""The MinEnt strategy: the entropy is Grandvalet & Bengio's, the strategy honours tlbench's contract."""

from __future__ import annotations

import math

import pytest
import torch

from tlbench import StepContext, UserError
from tlbench.testing import check_strategy, make_tiny_batch, make_tiny_model
from tlbench_minent import MinEnt, mean_entropy


def entropy_by_hand(logits: list[list[float]]) -> float:
    """-sum_c p_c log p_c of each row's softmax, averaged over the rows: plain Python, float64."""
    total = 0.0
    for row in logits:
        exps = [math.exp(v) for v in row]
        probs = [e / sum(exps) for e in exps]
        total += -sum(p * math.log(p) for p in probs)
    return total / len(logits)


def test_entropy_matches_the_definition():
    logits = [[2.0, 0.0, -1.0], [0.5, 0.5, 0.5], [-3.0, 4.0, 1.0]]
    got = mean_entropy(torch.tensor(logits)).item()
    assert got == pytest.approx(entropy_by_hand(logits), rel=1e-6)
    # the uniform row alone has the largest entropy, log C; a near one-hot row nearly none
    assert mean_entropy(torch.zeros(1, 3)).item() == pytest.approx(math.log(3), rel=1e-6)
    assert mean_entropy(torch.tensor([[30.0, 0.0, 0.0]])).item() < 1e-10


def test_entropy_is_float32_under_bf16_autocast():
    logits = torch.randn(8, 5).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = mean_entropy(logits)
    assert out.dtype == torch.float32 and out.dim() == 0


def test_minimising_the_entropy_sharpens_each_prediction_towards_its_argmax():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 4, generator=g).requires_grad_()
    before = logits.detach().argmax(1)
    mean_entropy(logits).backward()
    step = logits.detach() - 1.0 * logits.grad
    assert torch.equal(step.argmax(1), before)  # no label is changed, only made more confident
    assert mean_entropy(step).item() < mean_entropy(logits.detach()).item()
    top_before = torch.softmax(logits.detach(), 1).gather(1, before[:, None])
    assert (torch.softmax(step, 1).gather(1, before[:, None]) > top_before).all()


@pytest.mark.parametrize("params", [None, {"trade_off": 0.5}])
def test_conforms_to_the_strategy_contract(params):
    check_strategy(MinEnt, params)


def test_params_are_validated():
    assert MinEnt.default_params() == {"trade_off": 0.1}
    with pytest.raises(UserError, match=r"minent: params.trade_off must be a number >= 0, got -1"):
        MinEnt.parse_params({"trade_off": -1})
    with pytest.raises(UserError, match="valid: trade_off"):
        MinEnt.parse_params({"lambda": 1})


def test_the_loss_is_source_ce_plus_the_weighted_target_entropy_only():
    torch.manual_seed(0)
    model = make_tiny_model()
    batch = make_tiny_batch(("weak",))
    ctx = StepContext(step=0, total_steps=10, model=model, device=torch.device("cpu"), num_classes=3)
    out = MinEnt(trade_off=0.0).training_step(batch, ctx)
    assert torch.equal(out.loss.detach(), out.metrics["source_ce"])
    weighted = MinEnt(trade_off=2.0).training_step(batch, ctx)
    with torch.no_grad():  # the target rows of one joint pass are the target images' logits
        target_logits = model.forward_all(torch.cat([batch.source, batch.target])).logits[len(batch.source) :]
    assert weighted.metrics["target_entropy"].item() == pytest.approx(entropy_by_hand(target_logits.tolist()), rel=1e-5)
    expected = weighted.metrics["source_ce"] + 2.0 * weighted.metrics["target_entropy"]
    assert weighted.loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_refuses_a_batch_without_target_images():
    model = make_tiny_model()
    ctx = StepContext(step=0, total_steps=10, model=model, device=torch.device("cpu"), num_classes=3)
    with pytest.raises(ValueError, match="needs target images"):
        MinEnt().training_step(make_tiny_batch(()), ctx)
