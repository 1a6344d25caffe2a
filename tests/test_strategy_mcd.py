"""``mcd``: the classifier discrepancy and class-balance term by hand, and its three updates each
moving only its own parameters (Saito et al., CVPR 2018; TLlib's mcd.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tlbench import SetupContext, StepContext, UserError
from tlbench.spec.recipe import Recipe
from tlbench.testing.tiny import make_tiny_batch, make_tiny_model
from tlbench.training.schedule import ParamSchedule
from tlbench_builtins.strategies.mcd import Mcd, class_balance, classifier_discrepancy


def test_classifier_discrepancy_is_the_mean_absolute_difference_over_images_and_classes():
    p1 = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.2, 0.8]])
    p2 = torch.tensor([[0.0, 1.0], [0.5, 0.5], [0.6, 0.4]])
    # per image (1/K) sum_k |p1 - p2|: (1 + 1)/2, 0, (0.4 + 0.4)/2; mean over the three images
    expected = (1.0 + 0.0 + 0.4) / 3
    assert classifier_discrepancy(p1, p2).item() == pytest.approx(expected)


def test_class_balance_is_the_log_of_the_batchs_mean_prediction_not_the_per_image_entropy():
    spread = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # confident, but on different classes
    collapsed = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert class_balance(spread).item() == pytest.approx(-math.log(0.5 + 1e-6), rel=1e-6)
    assert class_balance(collapsed).item() == pytest.approx(-(math.log(1 + 1e-6) + math.log(1e-6)) / 2, rel=1e-5)
    # the per-image entropy of both batches is 0: only the batch mean tells them apart
    assert class_balance(collapsed) > 9 * class_balance(spread)


def _set_up(**params):
    torch.manual_seed(0)
    model = make_tiny_model(0)
    mcd = Mcd(**params)
    mcd.setup(model, SetupContext(model.num_classes, model.feature_dim, model.embed_dim, 10, torch.device("cpu"), 0))
    recipe = Recipe(steps=10, lr=0.05, momentum=0.0, nesterov=False, weight_decay=0.0, lr_gamma=0.0)
    schedule = ParamSchedule(mcd.param_groups(model), [model, mcd], model, recipe, torch.device("cpu"), "mcd")
    ctx = StepContext(step=0, total_steps=10, model=model, device=torch.device("cpu"), num_classes=model.num_classes)
    return model, mcd, schedule, ctx


def _snapshot(modules):
    return {f"{part}.{n}": p.detach().clone() for part, module in modules.items() for n, p in module.named_parameters()}


def _moved(before, after):
    return sorted({name.split(".")[0] for name in before if not torch.equal(before[name], after[name])})


def test_each_step_is_fit_then_classifiers_then_num_k_generator_updates_each_moving_only_its_part():
    model, mcd, schedule, ctx = _set_up(num_k=3)
    parts = {"backbone": model.backbone, "head": torch.nn.ModuleList([model.bottleneck, model.classifier])}
    parts["head2"] = torch.nn.ModuleList([mcd.bottleneck2, mcd.classifier2])
    batch = make_tiny_batch(("weak",), seed=1)
    moves = []
    for update in mcd.training_updates(batch, ctx):
        before = _snapshot(parts)
        schedule.optimizer.zero_grad(set_to_none=True)
        update.loss.backward()
        schedule.step(update.groups)
        moves.append((update.name, _moved(before, _snapshot(parts))))
    assert moves == [
        ("fit", ["backbone", "head", "head2"]),
        ("classifiers", ["head", "head2"]),
        ("generator", ["backbone"]),
        ("generator", ["backbone"]),
        ("generator", ["backbone"]),
    ]


def test_the_classifiers_update_fits_the_source_and_maximises_the_discrepancy_on_the_target():
    model, mcd, _, ctx = _set_up(dropout=0.0, trade_off=0.7, trade_off_entropy=0.2)
    batch = make_tiny_batch(("weak",), seed=2)
    updates = mcd.training_updates(batch, ctx)
    next(updates)  # "fit"; nothing stepped, so the parameters are unchanged for the second update
    second = next(updates)
    assert second.name == "classifiers" and second.groups == ("head", "head2")
    # the same loss rebuilt from the modules, term by term
    n = len(batch.source)
    with torch.no_grad():
        f = model.features(torch.cat([batch.source, batch.target]))
        y1 = model.classifier(model.bottleneck(f))
        y2 = mcd.classifier2(mcd.bottleneck2(f))
        p1, p2 = y1[n:].softmax(1), y2[n:].softmax(1)
        ce = F.cross_entropy(y1[:n], batch.source_labels) + F.cross_entropy(y2[:n], batch.source_labels)
        balance = -torch.log(p1.mean(0) + 1e-6).mean() - torch.log(p2.mean(0) + 1e-6).mean()
        disc = (p1 - p2).abs().mean()
    assert second.loss.item() == pytest.approx((ce + 0.2 * balance - 0.7 * disc).item(), rel=1e-5)
    assert second.metrics["discrepancy_classifiers"].item() == pytest.approx(disc.item(), rel=1e-5)


def test_the_second_classifier_starts_from_other_weights_than_the_first():
    model, mcd, _, _ = _set_up()
    assert mcd.classifier2.weight.shape == model.classifier.weight.shape
    assert not torch.equal(mcd.classifier2.weight, model.classifier.weight)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"num_k": 0}, "num_k must be at least 1"),
        ({"trade_off": -1.0}, "trade_off and params.trade_off_entropy must be >= 0"),
        ({"dropout": 1.0}, r"dropout must lie in \[0, 1\)"),
    ],
)
def test_params_are_checked(params, message):
    with pytest.raises(UserError, match=message):
        Mcd(**params)
