"""Every built-in strategy passes the plugin-author conformance kit, and the kit catches broken ones."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tlbench import Batch, ParamGroup, StepContext, StepOutput, Strategy, Update, UserError
from tlbench.plugins.registry import get_registry
from tlbench.testing import check_strategy

BUILTINS = {
    *("source_only", "freeze", "unfreeze", "dlr", "dann", "mmd", "self_training", "kd"),
    *("cdan", "bsp", "mcc", "afn", "mdd", "jan", "mcd", "adda", "coral"),
    *("bitfit", "lora", "shot", "shot_im", "tent", "bn_adapt"),
}


def builtin_strategy_names() -> list[str]:
    registry = get_registry()
    return [
        n
        for n in registry.names("strategy")
        if registry.plugins[registry.entry("strategy", n).plugin].module.startswith("tlbench_builtins.")
    ]


def test_every_builtin_strategy_is_registered_without_errors():
    registry = get_registry()
    failures = [(p, e) for p, e in registry.failures() if p.startswith("strategies.")]
    assert not failures
    assert set(builtin_strategy_names()) == BUILTINS


@pytest.mark.parametrize("name", builtin_strategy_names())
def test_builtin_strategy_conforms(name):
    check_strategy(get_registry().get("strategy", name))


@pytest.mark.parametrize(
    "name, params",
    [
        ("unfreeze", {"mode": "together", "stages": -1}),
        ("mmd", {"linear": True}),
        ("dann", {"hidden": 64, "dropout": 0.5}),
        ("self_training", {"warmup": 0.0, "threshold": 0.0}),
    ],
)
def test_builtin_strategy_conforms_with_non_default_params(name, params):
    check_strategy(get_registry().get("strategy", name), params)


# -- the kit catches what it promises to catch -----------------------------------------------
class Good(Strategy):
    """A source-only strategy, the base the broken ones below differ from in one way each."""

    name = "good"

    def training_step(self, batch: Batch, ctx: StepContext) -> StepOutput:
        return StepOutput(F.cross_entropy(ctx.model(batch.source), batch.source_labels))


def test_a_correct_minimal_strategy_passes():
    check_strategy(Good)


class CallsBackward(Good):
    """Calls backward itself."""

    name = "calls_backward"

    def training_step(self, batch, ctx):
        out = super().training_step(batch, ctx)
        out.loss.backward(retain_graph=True)
        return out


class UnusedModule(Good):
    """Declares a module that never gets a gradient."""

    name = "unused_module"

    def setup(self, model, ctx):
        self.extra = nn.Linear(4, 4)


class Unseeded(Good):
    """Draws randomness from numpy's unseeded generator."""

    name = "unseeded"

    def training_step(self, batch, ctx):
        out = super().training_step(batch, ctx)
        return StepOutput(out.loss * float(1 + np.random.rand()))


class NoDefault(Good):
    """A parameter without default."""

    @dataclass
    class Params:
        weight: float

    name = "no_default"


class FrozenButBackbone(Good):
    """Says its backbone is frozen but trains it."""

    name = "frozen_but_backbone"
    trains_backbone = False


class TouchesRequiresGrad(Good):
    """Unfreezes parameters outside its groups."""

    name = "touches_requires_grad"

    def param_groups(self, model):
        return [ParamGroup("head", list(model.head_parameters()))]

    def training_step(self, batch, ctx):
        for p in ctx.model.backbone.parameters():
            p.requires_grad_(True)
        return super().training_step(batch, ctx)


class TeacherWithGrad(Good):
    """Runs the teacher with gradients."""

    @dataclass
    class Params:
        teacher_params: dict = field(default_factory=dict)

    name = "teacher_with_grad"
    needs_teacher = True

    def training_step(self, batch, ctx):
        out = super().training_step(batch, ctx)
        return StepOutput(out.loss + ctx.teacher(batch.source).mean())


class BadViews(Good):
    """Asks for an unknown target view."""

    name = "bad_views"
    target_views = ("strong",)


class Infinite(Good):
    """Returns a non-finite loss."""

    name = "infinite"

    def training_step(self, batch, ctx):
        return StepOutput(super().training_step(batch, ctx).loss * float("inf"))


class NoDoc(Good):
    name = "no_doc"


class WrappedDoc(Good):
    """A strategy whose summary runs on past the first line (Someone et al. 2024,
    "A Title That Wraps").
    """

    name = "wrapped_doc"


class TwoUpdates(Good):
    """Two updates a step: the head on the source, then the backbone on the same loss."""

    name = "two_updates"

    def training_updates(self, batch, ctx):
        yield Update("head", F.cross_entropy(ctx.model(batch.source), batch.source_labels), ("head",))
        yield Update("backbone", F.cross_entropy(ctx.model(batch.source), batch.source_labels), ("backbone",))


def test_a_correct_multi_update_strategy_passes():
    check_strategy(TwoUpdates)


class UpdateMissesItsGroup(TwoUpdates):
    """Its second update names the backbone but its loss only reaches the classifier."""

    name = "update_misses_its_group"

    def training_updates(self, batch, ctx):
        yield from super().training_updates(batch, ctx)
        with torch.no_grad():
            embedding = ctx.model.bottleneck(ctx.model.features(batch.source))
        yield Update("late", F.cross_entropy(ctx.model.classifier(embedding), batch.source_labels), ("backbone",))


class UpdateNamesUnknownGroup(TwoUpdates):
    """An update names a group param_groups does not declare."""

    name = "update_names_unknown_group"

    def training_updates(self, batch, ctx):
        yield Update("x", F.cross_entropy(ctx.model(batch.source), batch.source_labels), ("discriminator",))


class YieldsStepOutput(TwoUpdates):
    """Yields a StepOutput where an Update belongs."""

    name = "yields_step_output"

    def training_updates(self, batch, ctx):
        yield StepOutput(F.cross_entropy(ctx.model(batch.source), batch.source_labels))


class UpdatesNothing(TwoUpdates):
    """Yields no update at all."""

    name = "updates_nothing"

    def training_updates(self, batch, ctx):
        yield from ()


@pytest.mark.parametrize(
    "cls, message",
    [
        (UpdateMissesItsGroup, r"update 2 \('late'\) names group\(s\) \['backbone'\] but no gradient reaches them"),
        (UpdateNamesUnknownGroup, r"groups must be None or a tuple of declared group names \['backbone', 'head'\]"),
        (YieldsStepOutput, "yield tlbench.Update objects, got StepOutput"),
        (UpdatesNothing, "yielded no update"),
        (CallsBackward, "computed gradients itself"),
        (UnusedModule, "no gradient reached .*strategy.extra"),
        (Unseeded, "two runs with seed 0 differ"),
        (NoDefault, "weight have no default"),
        (FrozenButBackbone, "trains_backbone is False but group 'backbone'"),
        (TouchesRequiresGrad, "gradient reached model.backbone"),
        (TeacherWithGrad, "gradient reached the teacher"),
        (BadViews, "target_views must be one of"),
        (Infinite, "loss is not finite"),
        (NoDoc, "needs a docstring"),
        (WrappedDoc, "would print for strategies cut mid-sentence"),
    ],
)
def test_check_strategy_names_the_defect(cls, message):
    with pytest.raises(AssertionError, match=message):
        check_strategy(cls)


def test_fixtures_give_a_tiny_backbone_model_and_batches(tiny_backbone, tiny_model, tiny_batch_factory):
    assert tiny_backbone.num_features == tiny_model.feature_dim
    assert (tiny_model.num_classes, tiny_model.embed_dim) == (3, 16)
    batch = tiny_batch_factory(("weak", "strong"))
    assert batch.source.shape == batch.target.shape == batch.target_strong.shape == (4, 3, 32, 32)
    assert batch.source_labels.tolist() == [0, 1, 2, 0] and batch.target_index.tolist() == [0, 1, 2, 3]
    assert tiny_model(batch.source).shape == (4, 3)
    assert tiny_batch_factory(()).target is None


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"entropy": "yes"}, "entropy: expected true or false, got 'yes'"),
        ({"entropie": True}, "unknown parameter\\(s\\) entropie for strategy 'cdan'; valid: trade_off"),
    ],
)
def test_bad_parameters_reach_a_plugins_tests_as_the_documented_user_error(raw, message):
    cdan = get_registry().get("strategy", "tlbench:cdan")
    with pytest.raises(UserError, match=message) as err:
        cdan.parse_params(raw)
    assert isinstance(err.value, ValueError)  # what callers caught before: still caught
