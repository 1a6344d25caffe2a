"""``adda``: its two losses by hand, the target encoder starting as the source model, the alternating
updates each moving only its own part, and the source model trained once as a cell of the matrix
(Tzeng et al., CVPR 2017; TLlib's adda.py)."""

from __future__ import annotations

import math

import pytest
import torch

from tlbench import SetupContext, StepContext, UserError
from tlbench.spec.recipe import Recipe
from tlbench.testing.tiny import make_tiny_batch, make_tiny_model
from tlbench.training.schedule import ParamSchedule
from tlbench_builtins.strategies.adda import Adda, discriminator_loss, inverted_label_loss


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_the_discriminator_loss_and_the_inverted_label_loss_by_hand():
    d_source, d_target = torch.tensor([2.0, 0.0]), torch.tensor([-1.0, 0.5])
    # BCE(sigmoid(d), 1) = softplus(-d); BCE(sigmoid(d), 0) = softplus(d); each averaged over its images
    expected = (_softplus(-2.0) + _softplus(0.0)) / 2 + (_softplus(-1.0) + _softplus(0.5)) / 2
    assert discriminator_loss(d_source, d_target).item() == pytest.approx(expected)
    # the encoder wants its target images called "source"
    assert inverted_label_loss(d_target).item() == pytest.approx((_softplus(1.0) + _softplus(-0.5)) / 2)


def _set_up(**params):
    torch.manual_seed(0)
    model, teacher = make_tiny_model(0), make_tiny_model(5).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    adda = Adda(**params)
    setup = SetupContext(model.num_classes, model.feature_dim, model.embed_dim, 10, torch.device("cpu"), 0, teacher)
    adda.setup(model, setup)
    recipe = Recipe(steps=10, lr=0.05, momentum=0.0, nesterov=False, weight_decay=0.0, lr_gamma=0.0)
    schedule = ParamSchedule(adda.param_groups(model), [model, adda], model, recipe, torch.device("cpu"), "adda")
    ctx = StepContext(
        step=5, total_steps=10, model=model, device=torch.device("cpu"), num_classes=model.num_classes, teacher=teacher
    )
    return model, teacher, adda, schedule, ctx


def test_the_target_encoder_starts_as_the_trained_source_model():
    model, teacher, _, _, _ = _set_up()
    source = teacher.state_dict()
    assert all(torch.equal(v, source[k]) for k, v in model.state_dict().items())


def test_without_its_source_model_adda_says_what_is_missing():
    model = make_tiny_model(0)
    with pytest.raises(UserError, match="adda needs its trained source model"):
        Adda().setup(model, SetupContext(3, model.feature_dim, model.embed_dim, 10, torch.device("cpu"), 0))


def _parts(model, adda):
    return {
        "backbone": model.backbone,
        "bottleneck": model.bottleneck,
        "classifier": model.classifier,
        "discriminator": adda.discriminator,
    }


def _snapshot(parts):
    return {(part, n): p.detach().clone() for part, m in parts.items() for n, p in m.named_parameters()}


def test_alternating_updates_move_the_discriminator_then_the_encoder_and_never_the_classifier_or_source():
    model, teacher, adda, schedule, ctx = _set_up()
    parts = _parts(model, adda)
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    moves = []
    for update in adda.training_updates(make_tiny_batch(("weak",), seed=3), ctx):
        before = _snapshot(parts)
        schedule.optimizer.zero_grad(set_to_none=True)
        update.loss.backward()
        schedule.step(update.groups)
        after = _snapshot(parts)
        moves.append(
            (update.name, sorted({part for part, n in before if not torch.equal(before[part, n], after[part, n])}))
        )
    assert moves == [("discriminator", ["discriminator"]), ("encoder", ["backbone", "bottleneck"])]
    assert all(torch.equal(v, teacher_before[k]) for k, v in teacher.state_dict().items() if v.is_floating_point())


def test_the_discriminator_update_sees_the_target_embedding_detached_and_the_source_from_the_source_model():
    model, teacher, adda, _, ctx = _set_up()
    batch = make_tiny_batch(("weak",), seed=4)
    update = next(iter(adda.training_updates(batch, ctx)))
    with torch.no_grad():
        d = adda.discriminator(
            torch.cat([teacher.forward_all(batch.source).embedding, model.forward_all(batch.target).embedding])
        ).squeeze(1)
    n = len(batch.source)
    expected = torch.nn.functional.softplus(-d[:n]).mean() + torch.nn.functional.softplus(d[n:]).mean()
    assert update.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    update.loss.backward()
    assert all(p.grad is None for p in model.parameters())  # the encoder's embedding was detached


def test_tllibs_gradient_reversal_form_reverses_a_coefficient_rising_to_grl_max():
    model, _, adda, _, ctx = _set_up(updates="grl", gamma=2.5, grl_max=2.0)
    (update,) = list(adda.training_updates(make_tiny_batch(("weak",), seed=5), ctx))
    # TLlib's WarmStartGradientReverseLayer(hi=2, max_iters=1000) at step 1,250 of 2,500: p = 0.5
    assert update.metrics["grl_coeff"] == pytest.approx(2.0 * (2.0 / (1.0 + math.exp(-2.5 * 0.5)) - 1.0))
    assert update.groups is None
    update.loss.backward()
    assert model.bottleneck[0].weight.grad is not None and model.classifier.weight.grad is None


def test_adda_trains_its_source_model_once_as_a_cell_of_the_matrix(tmp_path):
    from conftest import TINY_SUITE

    from tlbench.cli import main
    from tlbench.spec.store import ResultsDir

    suite = tmp_path / "tiny.yaml"
    suite.write_text(TINY_SUITE.replace("strategies: [source_only, dann]", "strategies: [source_only, adda, mcd]"))
    assert main(["run", str(suite), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    records = ResultsDir(tmp_path / "out").records()
    assert sorted(r.strategy for r in records) == ["adda", "mcd", "source_only"]  # the teacher is the source_only cell
    assert all(r.status == "ok" for r in records)
    mcd = next(r for r in records if r.strategy == "mcd")
    assert {"loss/fit", "loss/classifiers", "loss/generator", "discrepancy"} <= set(mcd.extra)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"hidden": 0}, "hidden must be a positive width"),
        ({"grl_max": 0.0}, "grl_max must be > 0"),
    ],
)
def test_params_are_checked(params, message):
    with pytest.raises(UserError, match=message):
        Adda(**params)


def test_an_unknown_update_scheme_is_refused_from_a_suite_and_in_code():
    with pytest.raises(ValueError, match="updates: expected one of 'alternating', 'grl', got 'both'"):
        Adda.parse_params({"updates": "both"})
    with pytest.raises(UserError, match="updates must be 'alternating' or 'grl'"):
        Adda.Params(updates="both")  # type: ignore[arg-type]
