"""``mdd``: the margin disparity terms by hand, the warm-start reversal, who maximises and who minimises."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tlbench import SetupContext, StepContext, TransferModel, UserError
from tlbench.testing import check_strategy, make_tiny_batch, make_tiny_model
from tlbench_builtins.strategies.mdd import AdversarialHead, Mdd, margin_disparity_terms, warm_start_coefficient

CPU = torch.device("cpu")


def setup(strategy, model: TransferModel, total_steps: int = 10):
    strategy.setup(model, SetupContext(model.num_classes, model.feature_dim, model.embed_dim, total_steps, CPU, 0))
    return strategy.to(CPU)


def step_ctx(model: TransferModel, step: int = 0, total: int = 10) -> StepContext:
    return StepContext(step=step, total_steps=total, model=model, device=CPU, num_classes=model.num_classes)


# -- the loss by hand ------------------------------------------------------------------------
MAIN_S = [[2.0, 0.5, -1.0], [0.1, 0.3, 1.2]]  # argmax 0, 2
ADV_S = [[0.2, 1.0, -0.5], [1.5, -0.3, 0.4]]
MAIN_T = [[-0.4, 1.1, 0.2], [0.9, 0.0, 0.3]]  # argmax 1, 0
ADV_T = [[0.3, 2.0, -1.0], [-0.7, 0.5, 1.1]]


def _softmax(row: list[float]) -> list[float]:
    e = [math.exp(v) for v in row]
    return [v / sum(e) for v in e]


def _hand_terms() -> tuple[float, float]:
    pseudo_s = [max(range(3), key=lambda c: row[c]) for row in MAIN_S]
    pseudo_t = [max(range(3), key=lambda c: row[c]) for row in MAIN_T]
    assert pseudo_s == [0, 2] and pseudo_t == [1, 0]
    source = sum(-math.log(_softmax(ADV_S[i])[pseudo_s[i]]) for i in range(2)) / 2
    target = sum(-math.log(min(1.0 - _softmax(ADV_T[i])[pseudo_t[i]] + 1e-6, 1.0)) for i in range(2)) / 2
    return source, target


def test_margin_disparity_terms_equal_the_hand_computed_ones():
    source, target = margin_disparity_terms(*(torch.tensor(v) for v in (MAIN_S, ADV_S, MAIN_T, ADV_T)))
    hand_source, hand_target = _hand_terms()
    assert float(source) == pytest.approx(hand_source, rel=1e-6)
    assert float(target) == pytest.approx(hand_target, rel=1e-6)
    # tllib's mdd = mean(-margin * CE_s + log(1 - p_t)); the transfer loss is its negative
    tllib_mdd = (
        sum(
            -4.0 * -math.log(_softmax(ADV_S[i])[[0, 2][i]]) + math.log(1.0 - _softmax(ADV_T[i])[[1, 0][i]] + 1e-6)
            for i in range(2)
        )
        / 2
    )
    assert float(4.0 * source + target) == pytest.approx(-tllib_mdd, rel=1e-6)


def test_target_term_uses_tllibs_shift_log_when_the_adversary_is_certain():
    # the adversary puts all mass on the main head's class: log(1 - 1 + 1e-6), finite, not inf
    main, adv = torch.tensor([[5.0, 0.0], [0.0, 5.0]]), torch.tensor([[200.0, 0.0], [0.0, 200.0]])
    _, target = margin_disparity_terms(main, adv, main, adv)
    assert float(target) == pytest.approx(-math.log(1e-6), rel=1e-5)
    # and the clamp at 1 keeps it at 0 (not -1e-6) when the adversary gives the class no mass
    _, target = margin_disparity_terms(main, -adv, main, -adv)
    assert float(target) == 0.0


def test_pseudo_labels_carry_no_gradient_to_the_main_head():
    main_s, main_t = torch.tensor(MAIN_S, requires_grad=True), torch.tensor(MAIN_T, requires_grad=True)
    adv_s, adv_t = torch.tensor(ADV_S, requires_grad=True), torch.tensor(ADV_T, requires_grad=True)
    source, target = margin_disparity_terms(main_s, adv_s, main_t, adv_t)
    (source + target).backward()
    assert main_s.grad is None and main_t.grad is None
    assert adv_s.grad is not None and adv_t.grad is not None


def test_strategy_loss_is_ce_plus_trade_off_times_margin_weighted_terms():
    torch.manual_seed(0)
    model = make_tiny_model()
    mdd = setup(Mdd(margin=3.0, trade_off=0.7, hidden=32), model)
    model.eval(), mdd.eval()  # deterministic: no dropout, BatchNorm on running statistics
    batch = make_tiny_batch(("weak",))
    out = mdd.training_step(batch, step_ctx(model, step=4))
    o = model.forward_all(torch.cat([batch.source, batch.target]))
    adv = mdd.adv_head(o.embedding)
    source, target = margin_disparity_terms(o.logits[:4], adv[:4], o.logits[4:], adv[4:])
    expected = F.cross_entropy(o.logits[:4], batch.source_labels) + 0.7 * (3.0 * source + target)
    torch.testing.assert_close(out.loss, expected)
    assert out.metrics["grl_coeff"] == pytest.approx(0.1 * (2 / (1 + math.exp(-10.0 * 0.4)) - 1))


# -- the warm-start reversal -----------------------------------------------------------------
@pytest.mark.parametrize("i", [0, 1, 400, 1000, 1777, 2500])
def test_warm_start_coefficient_reproduces_tllib_on_2500_steps(i):
    tllib = 2.0 * 0.1 / (1.0 + math.exp(-1.0 * i / 1000)) - 0.1  # WarmStartGradientReverseLayer, lo 0, hi 0.1
    assert warm_start_coefficient(i / 2500, hi=0.1, gamma=2.5) == pytest.approx(tllib, abs=1e-12)


def test_warm_start_coefficient_rises_from_zero_towards_hi():
    values = [warm_start_coefficient(p / 10, hi=0.3, gamma=20.0) for p in range(11)]
    assert values[0] == 0.0 and values == sorted(values) and 0.29 < values[-1] < 0.3


# -- who maximises, who minimises ------------------------------------------------------------
def _grads(step: int, total: int = 10):
    """Gradients of MDD's loss, and of its parts computed without any reversal, on one eval-mode forward."""
    torch.manual_seed(0)
    model = make_tiny_model()
    mdd = setup(Mdd(hidden=32, trade_off=0.5), model)
    model.eval(), mdd.eval()
    batch = make_tiny_batch(("weak",))
    out = mdd.training_step(batch, step_ctx(model, step=step, total=total))
    w, c, a = model.bottleneck[0].weight, model.classifier.weight, mdd.adv_head[0].weight
    g_loss = torch.autograd.grad(out.loss, [w, c, a])

    o = model.forward_all(torch.cat([batch.source, batch.target]))
    adv = mdd.adv_head(o.embedding)  # no reversal layer here
    source, target = margin_disparity_terms(o.logits[:4], adv[:4], o.logits[4:], adv[4:])
    transfer = 4.0 * source + target
    ce = F.cross_entropy(o.logits[:4], batch.source_labels)
    g_ce_w, g_ce_c = torch.autograd.grad(ce, [w, c], retain_graph=True)
    g_tr_w, g_tr_a = torch.autograd.grad(transfer, [w, a])
    return model, mdd, batch, out, g_loss, (g_ce_w, g_ce_c), (g_tr_w, g_tr_a)


def test_features_receive_the_reversed_scaled_transfer_gradient_and_the_adversary_the_plain_one():
    _, _, _, out, (g_w, g_c, g_a), (g_ce_w, g_ce_c), (g_tr_w, g_tr_a) = _grads(step=6)
    coeff = out.metrics["grl_coeff"]
    assert coeff == pytest.approx(0.1 * (2 / (1 + math.exp(-10.0 * 0.6)) - 1))
    assert g_tr_w.abs().sum() > 0
    # features: CE's gradient minus coeff * trade_off times the transfer loss's (reversal)
    torch.testing.assert_close(g_w, g_ce_w - coeff * 0.5 * g_tr_w, rtol=1e-4, atol=1e-7)
    # adversarial head: trade_off times the transfer loss's gradient, unreversed
    torch.testing.assert_close(g_a, 0.5 * g_tr_a)
    # main head: only the source CE (pseudo-labels are argmax, detached)
    torch.testing.assert_close(g_c, g_ce_c)


def test_at_the_first_step_features_feel_only_the_classifier_while_the_adversary_learns():
    _, _, _, out, (g_w, _, g_a), (g_ce_w, _), _ = _grads(step=0)
    assert out.metrics["grl_coeff"] == 0.0
    torch.testing.assert_close(g_w, g_ce_w)
    assert g_a.abs().sum() > 0


def test_a_descent_step_on_the_adversary_raises_the_discrepancy_and_on_the_features_lowers_it():
    torch.manual_seed(0)
    model = make_tiny_model()
    mdd = setup(Mdd(hidden=32), model)
    for layer in (mdd.adv_head[0], mdd.adv_head[3]):
        nn.init.normal_(layer.weight, 0.0, 0.5)  # tllib's 0.01 moves a float32 loss too little to see
    model.eval(), mdd.eval()
    batch = make_tiny_batch(("weak",))
    x = torch.cat([batch.source, batch.target])
    with torch.no_grad():
        emb = model.forward_all(x).embedding
        logits = model.classifier(emb)

    def transfer(e: torch.Tensor) -> float:
        with torch.no_grad():
            adv = mdd.adv_head(e)
            s, t = margin_disparity_terms(logits[:4], adv[:4], logits[4:], adv[4:])
            return float(4.0 * s + t)  # = -mdd: the discrepancy the adversary maximises is its negative

    # the gradient the embedding receives in the strategy's own step, less the part from the source CE
    seen: list[torch.Tensor] = []

    def keep_grad(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        output.register_hook(seen.append)

    hook = model.bottleneck.register_forward_hook(keep_grad)
    out = mdd.training_step(batch, step_ctx(model, step=9))
    out.loss.backward()
    hook.remove()
    e = emb.clone().requires_grad_(True)
    (g_ce,) = torch.autograd.grad(F.cross_entropy(model.classifier(e[:4]), batch.source_labels), e)
    g_features = seen[0] - g_ce
    assert g_features.abs().sum() > 0

    before = transfer(emb)
    assert transfer(emb - 0.05 * g_features / g_features.norm()) > before  # -mdd rose: features lower the mdd
    with torch.no_grad():
        for p in mdd.adv_head.parameters():
            p -= 0.1 * p.grad  # the optimizer's step on the adversary
    assert transfer(emb) < before  # -mdd fell: the adversary raised the discrepancy


def test_adversarial_head_is_tllibs_mlp_and_trains_at_full_lr():
    model = make_tiny_model()
    mdd = setup(Mdd(), model)
    assert [type(m) for m in mdd.adv_head] == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    assert (mdd.adv_head[0].in_features, mdd.adv_head[0].out_features) == (model.embed_dim, 1024)
    assert mdd.adv_head[3].out_features == model.num_classes and mdd.adv_head[2].p == 0.5
    with torch.no_grad():
        assert not mdd.adv_head[0].bias.any() and not mdd.adv_head[3].bias.any()
        assert float(mdd.adv_head[0].weight.std()) == pytest.approx(0.01, rel=0.05)
        assert float(mdd.adv_head[3].weight.std()) == pytest.approx(0.01, rel=0.1)
    assert isinstance(model.classifier, nn.Linear)  # the main head stays the model's own
    groups = mdd.param_groups(model)
    own = [g for g in groups if {id(p) for p in g.params} == {id(p) for p in mdd.adv_head.parameters()}]
    assert len(own) == 1 and own[0].lr_scale == 1.0 and own[0].start == 0.0
    assert isinstance(AdversarialHead(8, 3, 16, 0.0)[2], nn.Dropout)


# -- parameters ------------------------------------------------------------------------------
def test_defaults_are_tllibs_and_the_ramp_dann_uses():
    assert Mdd.default_params() == {
        "margin": 4.0,
        "trade_off": 1.0,
        "hidden": 1024,
        "dropout": 0.5,
        "grl_hi": 0.1,
        "gamma": 10.0,
    }


@pytest.mark.parametrize(
    "params,message",
    [
        ({"margin": 0.0}, "mdd: params.margin must be > 0"),
        ({"trade_off": -1.0}, "mdd: params.trade_off must be >= 0"),
        ({"hidden": 0}, "mdd: params.hidden must be a positive width"),
        ({"dropout": 1.0}, "mdd: params.dropout must lie in [0, 1)"),
        ({"grl_hi": 0.0}, "mdd: params.grl_hi must be > 0"),
        ({"gamma": -2.0}, "mdd: params.gamma must be > 0"),
    ],
)
def test_invalid_params_are_refused_with_the_parameter_named(params, message):
    with pytest.raises(UserError) as info:
        Mdd.parse_params(params)
    assert str(info.value).startswith(message)


def test_needs_a_target_view():
    model = make_tiny_model()
    mdd = setup(Mdd(hidden=8), model)
    with pytest.raises(ValueError, match="mdd needs target images"):
        mdd.training_step(make_tiny_batch(()), step_ctx(model))


def test_conforms_with_non_default_params():
    check_strategy(Mdd, {"hidden": 16, "dropout": 0.0, "margin": 2.0, "gamma": 10.0})
