"""The built-in Deep CORAL: the paper's loss and gradient by hand, DomainBed's variant, what trains, its params."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tlbench import StepContext, UserError
from tlbench.testing import check_strategy, make_tiny_batch, make_tiny_model
from tlbench_builtins.strategies.coral import Coral, coral_loss, mean_covariance_loss

CPU = torch.device("cpu")

# Two 2-dimensional batches: 3 source rows, 4 target rows (d = 2).
SOURCE = [[1.0, 2.0], [3.0, 0.0], [2.0, 4.0]]
TARGET = [[0.0, 1.0], [2.0, 1.0], [1.0, 3.0], [5.0, 3.0]]


def mean_by_hand(rows: list[list[float]]) -> list[float]:
    return [sum(r[j] for r in rows) / len(rows) for j in range(len(rows[0]))]


def covariance_by_hand(rows: list[list[float]]) -> list[list[float]]:
    """Unbiased covariance, entry by entry: sum_k (x_ki - m_i)(x_kj - m_j) / (n - 1)."""
    n, d, m = len(rows), len(rows[0]), mean_by_hand(rows)
    return [[sum((r[i] - m[i]) * (r[j] - m[j]) for r in rows) / (n - 1) for j in range(d)] for i in range(d)]


def test_the_covariances_of_the_tiny_example_are_what_the_test_thinks():
    # source: means (2, 2); deviations (-1, 0), (1, -2), (0, 2) -> [[2, -2], [-2, 8]] / 2
    assert covariance_by_hand(SOURCE) == [[1.0, -1.0], [-1.0, 4.0]]
    # target: means (2, 2); deviations (-2, -1), (0, -1), (-1, 1), (3, 1) -> [[14, 4], [4, 4]] / 3
    assert sum(covariance_by_hand(TARGET), []) == pytest.approx([14 / 3, 4 / 3, 4 / 3, 4 / 3])


def test_coral_loss_is_the_papers_eq_1_by_hand():
    c_s, c_t = covariance_by_hand(SOURCE), covariance_by_hand(TARGET)
    d = 2
    frobenius_sq = sum((c_s[i][j] - c_t[i][j]) ** 2 for i in range(d) for j in range(d))
    expected = frobenius_sq / (4 * d * d)
    # (1 - 14/3)^2 + 2 (-1 - 4/3)^2 + (4 - 4/3)^2 = 121/9 + 98/9 + 64/9 = 283/9, over 16
    assert expected == pytest.approx(283 / 144)
    got = coral_loss(torch.tensor(SOURCE), torch.tensor(TARGET)).item()
    assert got == pytest.approx(expected, rel=1e-6)


def test_domainbed_variant_adds_the_means_and_drops_the_quarter_by_hand():
    shifted = [[x + 1.0, y - 3.0] for x, y in TARGET]  # means (3, -1) against the source's (2, 2)
    c_s, c_t = covariance_by_hand(SOURCE), covariance_by_hand(shifted)
    m_s, m_t = mean_by_hand(SOURCE), mean_by_hand(shifted)
    d = 2
    mean_term = sum((m_s[i] - m_t[i]) ** 2 for i in range(d)) / d  # (1 + 9) / 2
    cov_term = sum((c_s[i][j] - c_t[i][j]) ** 2 for i in range(d) for j in range(d)) / (d * d)
    got = mean_covariance_loss(torch.tensor(SOURCE), torch.tensor(shifted)).item()
    assert got == pytest.approx(mean_term + cov_term, rel=1e-6)
    assert mean_term == 5.0 and cov_term == pytest.approx(283 / 36)
    # the paper's loss sees only the covariances: a quarter of DomainBed's covariance term
    assert coral_loss(torch.tensor(SOURCE), torch.tensor(shifted)).item() == pytest.approx(cov_term / 4, rel=1e-6)


def test_a_constant_offset_costs_nothing_in_the_paper_but_not_in_domainbeds_variant():
    x = torch.randn(32, 8, generator=torch.Generator().manual_seed(1))
    assert coral_loss(x, x + 5.0).item() == pytest.approx(0.0, abs=1e-6)
    assert mean_covariance_loss(x, x + 5.0).item() == pytest.approx(25.0, rel=1e-5)
    assert coral_loss(x, 2.0 * x).item() > 0.01


def test_the_gradient_is_the_papers_eq_4():
    """dl/dD_S = (D_S - mean)^T... written as in Sun & Saenko's Eq. 4: Xc (C_S - C_T) / (d² (n_S - 1)), and
    the opposite sign, with n_T, for the target."""
    source = torch.tensor(SOURCE, dtype=torch.float64, requires_grad=True)
    target = torch.tensor(TARGET, dtype=torch.float64, requires_grad=True)
    coral_loss(source, target).backward()
    s, t = np.array(SOURCE), np.array(TARGET)
    c_s, c_t = np.array(covariance_by_hand(SOURCE)), np.array(covariance_by_hand(TARGET))
    d = 2
    expected_s = (s - s.mean(0)) @ (c_s - c_t) / (d * d * (len(s) - 1))
    expected_t = -(t - t.mean(0)) @ (c_s - c_t) / (d * d * (len(t) - 1))
    np.testing.assert_allclose(source.grad.numpy(), expected_s, rtol=1e-6)
    np.testing.assert_allclose(target.grad.numpy(), expected_t, rtol=1e-6)
    # a small step against the gradient lowers the loss: the sign is the descent direction
    with torch.no_grad():
        stepped = coral_loss(source - 0.1 * source.grad, target - 0.1 * target.grad)
    assert stepped.item() < coral_loss(source.detach(), target.detach()).item()


def test_the_loss_is_float32_under_bf16_autocast_and_needs_two_samples_a_side():
    x = torch.randn(8, 4).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert coral_loss(x, x * 3).dtype == torch.float32
        assert mean_covariance_loss(x, x * 3).dtype == torch.float32
    with pytest.raises(ValueError, match="at least 2 samples"):
        coral_loss(torch.randn(1, 4), torch.randn(5, 4))


def _grads(trade_off: float, **params) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = make_tiny_model()
    batch = make_tiny_batch(("weak",))
    ctx = StepContext(step=0, total_steps=10, model=model, device=CPU, num_classes=model.num_classes)
    Coral(trade_off=trade_off, **params).training_step(batch, ctx).loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("layer, classifier_moves", [("embedding", False), ("logits", True)])
def test_the_coral_term_reaches_the_layers_below_the_aligned_features_only(layer, classifier_moves):
    plain, aligned = _grads(0.0, layer=layer), _grads(1.0, layer=layer)
    assert set(plain) == set(aligned)

    def changed(prefix: str) -> bool:
        return any(not torch.equal(plain[n], aligned[n]) for n in plain if n.startswith(prefix))

    assert changed("backbone.") and changed("bottleneck.")  # the features it aligns are computed there
    assert changed("classifier.") is classifier_moves  # the embedding lies below the classifier


def test_the_step_loss_is_source_ce_plus_the_weighted_coral_on_the_joint_pass():
    torch.manual_seed(0)
    model = make_tiny_model()
    batch = make_tiny_batch(("weak",))
    ctx = StepContext(step=0, total_steps=10, model=model, device=CPU, num_classes=model.num_classes)
    out = Coral(trade_off=0.0).training_step(batch, ctx)
    assert torch.equal(out.loss.detach(), out.metrics["source_ce"]) and out.metrics["coral"] > 0
    weighted = Coral(trade_off=2.5).training_step(batch, ctx)
    with torch.no_grad():
        embedding = model.forward_all(torch.cat([batch.source, batch.target])).embedding.double().numpy()
    n = len(batch.source)
    d = embedding.shape[1]
    by_hand = ((np.cov(embedding[:n], rowvar=False) - np.cov(embedding[n:], rowvar=False)) ** 2).sum() / (4 * d * d)
    assert weighted.metrics["coral"].item() == pytest.approx(by_hand, rel=1e-4)
    expected = weighted.metrics["source_ce"] + 2.5 * weighted.metrics["coral"]
    assert weighted.loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_refuses_a_batch_without_target_images():
    model = make_tiny_model()
    ctx = StepContext(step=0, total_steps=10, model=model, device=CPU, num_classes=model.num_classes)
    with pytest.raises(ValueError, match="coral needs target images"):
        Coral().training_step(make_tiny_batch(()), ctx)


def test_params_defaults_and_validation_messages():
    assert Coral.default_params() == {"trade_off": 1.0, "layer": "embedding", "loss": "paper"}
    with pytest.raises(UserError, match=r"^coral: params.trade_off must be a number >= 0, got -1$"):
        Coral.parse_params({"trade_off": -1})
    with pytest.raises(UserError, match=r"^trade_off: expected a finite number, got nan$"):
        Coral.parse_params({"trade_off": float("nan")})
    with pytest.raises(UserError, match=r"^coral: params.layer must be one of embedding, logits, got 'fc8'$"):
        Coral.parse_params({"layer": "fc8"})
    with pytest.raises(UserError, match=r"^coral: params.loss must be one of paper, domainbed, got 'mmd'$"):
        Coral.parse_params({"loss": "mmd"})
    with pytest.raises(UserError, match="valid: trade_off, layer, loss"):
        Coral.parse_params({"lambda": 1})


@pytest.mark.parametrize("params", [{"layer": "logits"}, {"loss": "domainbed", "trade_off": 0.5}])
def test_conforms_with_non_default_params(params):
    check_strategy(Coral, params)
