"""Mechanism tests of the built-in strategies: each checks the one thing that makes a method what it is."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tlbench import Batch, SetupContext, StepContext, TransferModel, UserError
from tlbench.models.transfer import set_batchnorm_eval_where_frozen
from tlbench.testing import apply_engine_trainability, make_tiny_batch, make_tiny_model
from tlbench_builtins.strategies.dann import (
    Dann,
    DomainDiscriminator,
    GradientReversal,
    reversal_coefficient,
    reverse_gradient,
)
from tlbench_builtins.strategies.dlr import DiscriminativeLR
from tlbench_builtins.strategies.freeze import Freeze
from tlbench_builtins.strategies.kd import KnowledgeDistillation, distillation_loss
from tlbench_builtins.strategies.mmd import Mmd, mk_mmd
from tlbench_builtins.strategies.self_training import SelfTraining, masked_pseudo_label_loss, pseudo_labels
from tlbench_builtins.strategies.unfreeze import Unfreeze

CPU = torch.device("cpu")


def setup(strategy, model: TransferModel, total_steps: int = 10):
    strategy.setup(model, SetupContext(model.num_classes, model.feature_dim, model.embed_dim, total_steps, CPU, 0))
    return strategy.to(CPU)


def step_ctx(model: TransferModel, step: int = 0, total: int = 10, **kw) -> StepContext:
    return StepContext(step=step, total_steps=total, model=model, device=CPU, num_classes=model.num_classes, **kw)


def ids(params) -> list[int]:
    return [id(p) for p in params]


# -- DANN ----------------------------------------------------------------------------------
def test_gradient_reversal_is_identity_forward_and_flips_and_scales_the_gradient():
    x = torch.randn(5, 3, requires_grad=True)
    w = torch.randn(5, 3)
    y = GradientReversal.apply(x, 0.3)
    assert torch.equal(y, x)
    (y * w).sum().backward()
    torch.testing.assert_close(x.grad, -0.3 * w)

    x.grad = None
    (reverse_gradient(x, 2.0) * w).sum().backward()
    torch.testing.assert_close(x.grad, -2.0 * w)


def test_reversal_coefficient_follows_the_dann_schedule():
    assert reversal_coefficient(0.0) == 0.0
    assert reversal_coefficient(0.5) == pytest.approx(math.tanh(2.5))  # 2/(1+e^-5) - 1
    assert reversal_coefficient(1.0) == pytest.approx(2 / (1 + math.exp(-10)) - 1)
    assert reversal_coefficient(0.1) == pytest.approx(2 / (1 + math.exp(-1)) - 1)
    assert reversal_coefficient(0.1, gamma=5.0) == pytest.approx(2 / (1 + math.exp(-0.5)) - 1)
    values = [reversal_coefficient(p / 10) for p in range(11)]
    assert values == sorted(values) and values[-1] < 1.0


def test_dann_discriminator_is_the_tllib_mlp_and_trains_at_full_lr():
    model = make_tiny_model()
    dann = setup(Dann(), model)
    layers = [type(m) for m in dann.discriminator]
    assert layers == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert (dann.discriminator[0].in_features, dann.discriminator[0].out_features) == (model.embed_dim, 1024)
    assert dann.discriminator[-1].out_features == 1
    assert nn.Dropout in [type(m) for m in DomainDiscriminator(16, 8, dropout=0.5)]
    own = [g for g in dann.param_groups(model) if set(ids(g.params)) == set(ids(dann.discriminator.parameters()))]
    assert len(own) == 1 and own[0].lr_scale == 1.0 and own[0].start == 0.0


def _dann_grads(progress_step: int):
    """Gradients of the bottleneck from DANN's loss and from the source CE alone, on one forward."""
    torch.manual_seed(0)
    model = make_tiny_model()
    dann = setup(Dann(hidden=32), model)
    model.train(), dann.train()
    batch = make_tiny_batch(("weak",))
    out = dann.training_step(batch, step_ctx(model, step=progress_step))
    out.loss.backward()
    g_dann = model.bottleneck[0].weight.grad.clone()
    disc_grad = dann.discriminator[0].weight.grad.abs().sum()
    model.zero_grad()
    logits = model(torch.cat([batch.source, batch.target]))[: len(batch.source)]
    F.cross_entropy(logits, batch.source_labels).backward()
    return g_dann, model.bottleneck[0].weight.grad.clone(), disc_grad, out.metrics["grl_coeff"]


def test_dann_domain_gradient_reaches_the_features_only_as_the_coefficient_grows():
    g_dann, g_ce, disc_grad, coeff = _dann_grads(progress_step=0)
    assert coeff == 0.0
    torch.testing.assert_close(g_dann, g_ce)  # coefficient 0: features feel only the classifier
    assert disc_grad > 0  # while the discriminator already learns
    g_dann, g_ce, _, coeff = _dann_grads(progress_step=5)
    assert coeff == pytest.approx(reversal_coefficient(0.5))
    assert not torch.allclose(g_dann, g_ce)


# -- MMD -----------------------------------------------------------------------------------
def _direct_mmd(x: torch.Tensor, y: torch.Tensor, alphas, linear: bool = False) -> float:
    z = torch.cat([x, y]).double()
    n, m = len(x), len(y)
    d2 = [[float(((z[i] - z[j]) ** 2).sum()) for j in range(n + m)] for i in range(n + m)]
    scale = sum(map(sum, d2)) / (n + m) ** 2
    k = lambda i, j: sum(math.exp(-d2[i][j] / (2 * a * scale)) for a in alphas)  # noqa: E731
    if linear:
        return (
            sum(
                k(i, (i + 1) % n) + k(n + i, n + (i + 1) % n) - k(i, n + (i + 1) % n) - k((i + 1) % n, n + i)
                for i in range(n)
            )
            / n
        )
    xx = sum(k(i, j) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(n + i, n + j) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(i, n + j) for i in range(n) for j in range(m)) / (n * m)
    return xx + yy - 2 * xy


def test_mk_mmd_equals_the_direct_quadratic_formula():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(4, 3, generator=g), torch.randn(5, 3, generator=g) + 0.7
    alphas = (0.125, 0.25, 0.5, 1.0, 2.0)
    assert float(mk_mmd(x, y)) == pytest.approx(_direct_mmd(x, y, alphas), rel=1e-5, abs=1e-6)
    assert float(mk_mmd(x, y, alphas=(1.0,))) == pytest.approx(_direct_mmd(x, y, (1.0,)), rel=1e-5, abs=1e-6)
    y4 = y[:4]
    assert float(mk_mmd(x, y4, linear=True)) == pytest.approx(
        _direct_mmd(x, y4, alphas, linear=True), rel=1e-5, abs=1e-6
    )


def test_mk_mmd_is_near_zero_for_one_distribution_and_grows_with_the_shift():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(200, 8, generator=g), torch.randn(200, 8, generator=g)
    same = float(mk_mmd(x, y))
    assert abs(same) < 0.05  # the unbiased estimate scatters around 0 (here 0.023)
    shifted = [float(mk_mmd(x, y + s)) for s in (0.5, 1.0, 2.0)]
    assert shifted == sorted(shifted) and shifted[0] > 5 * abs(same)


@pytest.mark.parametrize(
    "ramp,step,weight",
    [
        (False, 0, 2.0),
        (False, 3, 2.0),
        (True, 0, 0.0),
        (True, 3, 2.0 * (2 / (1 + math.exp(-3.0)) - 1)),
        (True, 10, 2.0 * (2 / (1 + math.exp(-10.0)) - 1)),
    ],
)
def test_mmd_strategy_adds_the_weighted_discrepancy_to_source_ce(ramp, step, weight):
    torch.manual_seed(0)
    model = make_tiny_model()
    batch = make_tiny_batch(("weak",))
    mmd = setup(Mmd(trade_off=2.0, ramp=ramp), model)
    model.eval()  # deterministic forward, so the parts can be recomputed
    out = mmd.training_step(batch, step_ctx(model, step=step, total=10))
    emb = model.forward_all(torch.cat([batch.source, batch.target]))
    ce = F.cross_entropy(emb.logits[:4], batch.source_labels)
    expected = ce + weight * mk_mmd(emb.embedding[:4], emb.embedding[4:])
    torch.testing.assert_close(out.loss, expected)
    assert out.metrics["mmd_weight"] == pytest.approx(weight)


# -- freeze --------------------------------------------------------------------------------
def test_freeze_keeps_the_backbone_exact_through_real_optimizer_steps():
    torch.manual_seed(0)
    model = make_tiny_model()
    freeze = setup(Freeze(), model)
    groups = freeze.param_groups(model)
    assert ids(p for g in groups for p in g.params) == ids(model.head_parameters())
    apply_engine_trainability((model, freeze), groups, step=0, total_steps=3)
    optimizer = torch.optim.SGD(
        [{"params": g.params, "lr": 0.1 * g.lr_scale} for g in groups], momentum=0.9, nesterov=True, weight_decay=1e-3
    )
    backbone_before = copy.deepcopy(model.backbone.state_dict())  # parameters and BN statistics
    head_before = [p.detach().clone() for p in model.head_parameters()]
    for step in range(3):
        model.train(), freeze.train()
        set_batchnorm_eval_where_frozen(model)
        out = freeze.training_step(make_tiny_batch((), seed=step), step_ctx(model, step=step, total=3))
        optimizer.zero_grad()
        out.loss.backward()
        assert all(p.grad is None for p in model.backbone.parameters())
        optimizer.step()
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, backbone_before[key]), key
    assert any(not torch.equal(p, q) for p, q in zip(model.head_parameters(), head_before))


def test_freeze_gives_the_same_loss_on_cached_features_as_on_images():
    torch.manual_seed(0)
    model = make_tiny_model()
    freeze = setup(Freeze(), model)
    apply_engine_trainability((model, freeze), freeze.param_groups(model), step=0, total_steps=10)
    model.train()
    set_batchnorm_eval_where_frozen(model)
    batch = make_tiny_batch(())
    with torch.no_grad():
        features = Batch(source=model.features(batch.source), source_labels=batch.source_labels)
    assert features.source.shape == (4, model.feature_dim)
    on_images = freeze.training_step(batch, step_ctx(model)).loss
    on_features = freeze.training_step(features, step_ctx(model)).loss
    torch.testing.assert_close(on_images, on_features)
    assert Freeze.trains_backbone is False


# -- discriminative learning rates ---------------------------------------------------------
@pytest.mark.parametrize("decay", [0.5, 0.25])
def test_dlr_gives_each_stage_the_decayed_learning_rate(decay):
    model = make_tiny_model()
    dlr = setup(DiscriminativeLR(decay=decay), model)
    groups = dlr.param_groups(model)
    stages = model.backbone_stages()
    assert groups[0].name == "head" and groups[0].lr_scale == 1.0
    assert ids(groups[0].params) == ids(model.head_parameters())
    by_stage = {ids(g.params)[0]: g for g in groups[1:]}
    assert len(by_stage) == len(stages) == len(groups) - 1
    base_lr = 0.01
    optimizer = torch.optim.SGD([{"params": g.params, "lr": base_lr * g.lr_scale} for g in groups], lr=base_lr)
    lr_of = {id(p): pg["lr"] for pg in optimizer.param_groups for p in pg["params"]}
    for i, stage in enumerate(reversed(stages)):  # i = 0 is the output-most stage
        group = by_stage[id(stage[0])]
        assert ids(group.params) == ids(stage)
        expected = base_lr * model.backbone_lr_scale * decay**i
        assert group.lr_scale == pytest.approx(model.backbone_lr_scale * decay**i)
        assert all(lr_of[id(p)] == pytest.approx(expected) for p in stage)
    assert sorted(ids(p for g in groups for p in g.params)) == sorted(ids(model.parameters()))


# -- gradual unfreezing --------------------------------------------------------------------
@pytest.mark.parametrize(
    "params, starts",
    [
        ({}, [0.3, 0.5]),  # gradual, output-most stage first
        ({"mode": "together"}, [0.3, 0.3]),
        ({"stages": 3, "at": 0.2, "until": 0.8}, [0.2, 0.5, 0.8]),
        ({"stages": 1, "at": 0.4}, [0.4]),
    ],
)
def test_unfreeze_joins_exactly_the_last_k_stages_at_the_declared_fractions(params, starts):
    model = make_tiny_model()
    strategy = setup(Unfreeze(**params), model)
    groups = strategy.param_groups(model)
    stages = model.backbone_stages()
    k = len(starts)
    assert groups[0].name == "head" and groups[0].start == 0.0
    assert ids(groups[0].params) == ids(model.head_parameters())
    later = groups[1:]
    assert [g.start for g in later] == pytest.approx(starts)
    assert [ids(g.params) for g in later] == [ids(s) for s in reversed(stages[-k:])]
    assert all(g.lr_scale == model.backbone_lr_scale for g in later)
    never = {id(p) for s in stages[:-k] for p in s}
    assert never and not never & {id(p) for g in groups for p in g.params}


def test_unfreeze_stages_train_from_ceil_start_times_total():
    model = make_tiny_model()
    strategy = setup(Unfreeze(), model)  # stages join at 0.3 and 0.5
    groups = strategy.param_groups(model)
    last, second_last = model.backbone_stages()[-1], model.backbone_stages()[-2]
    trains = {}
    for step in (0, 2, 3, 4, 5, 19):
        apply_engine_trainability((model, strategy), groups, step, total_steps=10)
        trains[step] = (
            all(p.requires_grad for p in last),
            all(p.requires_grad for p in second_last),
            any(p.requires_grad for p in model.backbone_stages()[0]),
        )
    assert trains == {
        0: (False, False, False),
        2: (False, False, False),
        3: (True, False, False),
        4: (True, False, False),
        5: (True, True, False),
        19: (True, True, False),
    }


def test_unfreeze_all_stages_and_bad_params():
    model = make_tiny_model()
    groups = setup(Unfreeze(stages=-1, mode="together"), model).param_groups(model)
    assert sorted(ids(p for g in groups[1:] for p in g.params)) == sorted(ids(model.backbone.parameters()))
    with pytest.raises(UserError, match="mode"):
        Unfreeze(mode="sideways")
    with pytest.raises(UserError, match="until"):
        Unfreeze(at=0.6, until=0.5)


# -- knowledge distillation ----------------------------------------------------------------
def test_distillation_loss_matches_a_hand_computed_value():
    student = torch.tensor([[1.0, 2.0, 3.0]])
    teacher = torch.tensor([[3.0, 1.0, 0.0]])
    T = 2.0
    ps = [math.exp(v / T) for v in (1.0, 2.0, 3.0)]
    pt = [math.exp(v / T) for v in (3.0, 1.0, 0.0)]
    ps = [v / sum(ps) for v in ps]
    pt = [v / sum(pt) for v in pt]
    expected = T * T * sum(t * math.log(t / s) for t, s in zip(pt, ps))
    assert float(distillation_loss(student, teacher, T)) == pytest.approx(expected, rel=1e-6)
    # batchmean: two copies of the row give the same value
    assert float(distillation_loss(student.repeat(2, 1), teacher.repeat(2, 1), T)) == pytest.approx(expected, rel=1e-6)


def test_distillation_loss_is_zero_when_student_equals_teacher():
    logits = torch.randn(6, 5)
    assert float(distillation_loss(logits, logits.clone(), 4.0)) == pytest.approx(0.0, abs=1e-6)


def test_kd_step_distils_on_source_and_target_without_teacher_gradients():
    torch.manual_seed(0)
    student = make_tiny_model()
    teacher = copy.deepcopy(student).eval()
    kd = setup(KnowledgeDistillation(alpha=1.0), student)
    student.eval()  # same mode as the teacher: identical logits, so the loss is exactly the KL = 0
    batch = make_tiny_batch(("weak",))
    out = kd.training_step(batch, step_ctx(student, teacher=teacher))
    assert out.loss.item() == pytest.approx(0.0, abs=1e-6)

    other = make_tiny_model(seed=5).eval()
    kd = setup(KnowledgeDistillation(alpha=0.25, temperature=3.0), student)
    out = kd.training_step(batch, step_ctx(student, teacher=other))
    x = torch.cat([batch.source, batch.target])
    with torch.no_grad():
        t = other(x)
    s = student(x)
    expected = 0.25 * distillation_loss(s, t, 3.0) + 0.75 * F.cross_entropy(s[:4], batch.source_labels)
    torch.testing.assert_close(out.loss, expected)
    out.loss.backward()
    assert all(p.grad is None for p in other.parameters())


def test_kd_declares_its_teacher_params():
    assert KnowledgeDistillation.needs_teacher is True
    assert KnowledgeDistillation.default_params() == {
        "teacher_backbone": "",
        "teacher_strategy": "dann",
        "teacher_params": {},
        "alpha": 0.5,
        "temperature": 4.0,
        "teacher_views": 0,
    }
    a, b = KnowledgeDistillation.Params(), KnowledgeDistillation.Params()
    assert a.teacher_params is not b.teacher_params


# -- self-training -------------------------------------------------------------------------
def test_pseudo_labels_below_the_threshold_are_ignored():
    weak = torch.tensor([[5.0, 0.0, 0.0], [0.1, 0.0, 0.0], [0.0, 0.0, 6.0]])
    labels, confidence, mask = pseudo_labels(weak, threshold=0.9)
    assert labels.tolist() == [0, 0, 2]
    assert mask.tolist() == [True, False, True]
    strong = torch.tensor([[0.0, 1.0, 0.0], [0.0, 9.0, 0.0], [1.0, 0.0, 0.0]])
    loss = masked_pseudo_label_loss(strong, labels, mask)
    ce = F.cross_entropy(strong, labels, reduction="none")
    torch.testing.assert_close(loss, (ce[0] + ce[2]) / 3)


def _uniform_head_model() -> TransferModel:
    model = make_tiny_model()
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.zero_()  # every prediction is uniform: confidence 1/3
    return model


def test_self_training_with_no_confident_target_adds_nothing_and_scores_an_empty_mask():
    torch.manual_seed(0)
    model = _uniform_head_model()
    st = setup(SelfTraining(threshold=0.9, warmup=0.0), model)
    model.train()
    batch = make_tiny_batch(("weak", "strong"))
    scored = []
    out = st.training_step(batch, step_ctx(model, score_pseudo_labels=lambda i, y, m: scored.append((i, y, m))))
    assert float(out.metrics["pseudo_loss"]) == 0.0
    assert float(out.metrics["pseudo_coverage"]) == 0.0
    torch.testing.assert_close(out.loss, torch.tensor(math.log(3.0)))  # only the source CE of a uniform head
    ((index, _, mask),) = scored
    assert index.tolist() == batch.target_index.tolist() and not mask.any()


def test_self_training_uses_confident_pseudo_labels_on_the_strong_view():
    torch.manual_seed(0)
    model = make_tiny_model()
    st = setup(SelfTraining(threshold=0.0, weight=0.5, warmup=0.0), model)
    model.eval()  # deterministic forward, so the expected loss can be recomputed
    batch = make_tiny_batch(("weak", "strong"))
    out = st.training_step(batch, step_ctx(model))
    labels = model(batch.target).argmax(1)
    expected = F.cross_entropy(model(batch.source), batch.source_labels) + 0.5 * F.cross_entropy(
        model(batch.target_strong), labels
    )
    torch.testing.assert_close(out.loss, expected)
    assert float(out.metrics["pseudo_coverage"]) == 1.0


def test_self_training_warm_up_is_source_only():
    torch.manual_seed(0)
    model = make_tiny_model()
    st = setup(SelfTraining(warmup=0.5), model)
    model.eval()
    batch = make_tiny_batch(("weak", "strong"))
    scored = []
    out = st.training_step(batch, step_ctx(model, step=4, score_pseudo_labels=lambda *a: scored.append(a)))
    torch.testing.assert_close(out.loss, F.cross_entropy(model(batch.source), batch.source_labels))
    assert not scored and "pseudo_coverage" not in out.metrics
    st.training_step(batch, step_ctx(model, step=5, score_pseudo_labels=lambda *a: scored.append(a)))
    assert len(scored) == 1


def test_kd_uses_served_teacher_logits_exactly_like_the_online_teacher():
    """With ``teacher_views`` the engine serves the teacher's logits; the loss must be the same."""
    model, teacher = make_tiny_model(0), make_tiny_model(1).eval()
    kd = setup(KnowledgeDistillation(teacher_views=2), model)
    assert kd.teacher_views == 2 and KnowledgeDistillation().teacher_views == 0
    batch = make_tiny_batch(("weak",), seed=3)
    ctx = step_ctx(model, teacher=teacher)
    online = kd.training_step(batch, ctx)
    with torch.no_grad():
        batch.source_teacher, batch.target_teacher = teacher(batch.source), teacher(batch.target)
    ctx.teacher = None  # kd needs its teacher in the context even when the engine serves the logits
    with pytest.raises(ValueError, match="trained teacher"):
        kd.training_step(batch, ctx)
    ctx.teacher = teacher
    served = kd.training_step(batch, ctx)
    torch.testing.assert_close(served.loss, online.loss)
    batch.source_teacher = torch.zeros_like(batch.source_teacher)  # proof the served logits are what is used
    assert not torch.allclose(kd.training_step(batch, ctx).loss, online.loss)
