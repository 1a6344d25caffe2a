"""``recipe.trainable``: what of the backbone trains, as an axis of leaderboard rows (issue 36).

``head`` freezes the whole backbone (the engine serves its cached features), ``topK`` trains only its
K output-most stages, ``all`` (the default) leaves the strategy's groups as they are and keeps every
existing cell's id.
"""

from __future__ import annotations

import contextlib
import copy
import types
from pathlib import Path

import pytest
import torch
from conftest import TINY_SUITE  # tests/ is on sys.path (pytest rootdir conftest)
from pydantic import ValidationError

import tlbench
from tlbench.data.files import load_checked
from tlbench.errors import UserError
from tlbench.plugins.registry import Registry
from tlbench.spec.cell import CellTask
from tlbench.spec.loading import load_suite
from tlbench.spec.plan import plan
from tlbench.spec.recipe import Recipe
from tlbench.spec.store import ResultsDir
from tlbench.testing import make_tiny_model
from tlbench.training.engine import train_cell
from tlbench.training.schedule import ParamSchedule, restrict_to_trainable
from tlbench.training.strategy import ParamGroup
from tlbench_builtins.strategies.dann import Dann
from tlbench_builtins.strategies.mcd import Mcd

BEFORE: dict[str, dict[str, torch.Tensor]] = {}  # the model's state when training starts, by strategy


class ProbeDann(Dann):
    """``dann`` that keeps a copy of the model's state as training starts."""

    name = "probe_dann"

    def setup(self, model, ctx):
        super().setup(model, ctx)
        BEFORE[self.name] = copy.deepcopy(model.state_dict())


PROBES = types.SimpleNamespace(register_strategies=tlbench.hookimpl(lambda register: register(ProbeDann)))


def _suite(tmp_path: Path, strategies: str, extra: str = "", hflip: str = "false") -> Path:
    path = tmp_path / "suite.yaml"
    text = TINY_SUITE.replace("strategies: [source_only, dann]", strategies)
    path.write_text(text.replace("  hflip: false\n", f"  hflip: {hflip}\n") + extra)
    return path


def _cells(tmp_path: Path, strategies: str, extra: str = "", hflip: str = "false"):
    registry = Registry(plugins={"probes": PROBES})
    return plan(load_suite(_suite(tmp_path, strategies, extra, hflip)), registry).cells, registry


def _trained_state(tmp_path: Path, trainable: str):
    """Train one ``probe_dann`` cell with ``recipe.trainable``; its record, and its model's state
    before and after training."""
    (cell,), registry = _cells(tmp_path, f"strategies:\n  - {{name: probe_dann, recipe: {{trainable: {trainable}}}}}\n")
    task = CellTask(
        cell=cell,
        out_dir=str(tmp_path / "out"),
        data_root=None,
        cache_dir=str(tmp_path / "cache"),
        device="cpu",
        show_progress=False,
        save_model=True,
    )
    record = train_cell(task, registry)
    assert record.status == "ok", record.error
    after = load_checked(ResultsDir(tmp_path / "out").model_path(cell.id))
    return record, BEFORE["probe_dann"], after


def _changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], prefix: str) -> set[str]:
    return {k for k in before if k.startswith(prefix) and not torch.equal(before[k], after[k])}


# -- the recipe key -------------------------------------------------------------------------------


def test_the_default_keeps_every_cell_id_and_a_set_value_enters_it():
    assert "trainable" not in Recipe().id_config()
    assert Recipe(trainable="head").id_config()["trainable"] == "head"
    assert (Recipe().top_stages, Recipe(trainable="head").top_stages, Recipe(trainable="top3").top_stages) == (
        None,
        0,
        3,
    )


@pytest.mark.parametrize("value", ["top0", "half", "top", "HEAD", "top100"])
def test_a_value_outside_all_head_topK_is_refused(value):
    with pytest.raises(ValidationError, match="trainable"):
        Recipe(trainable=value)


# -- the parameter groups -------------------------------------------------------------------------


def _groups(model):
    return [
        ParamGroup("backbone", list(model.backbone.parameters()), lr_scale=0.1),
        ParamGroup("head", list(model.head_parameters())),
    ]


def test_head_takes_every_backbone_parameter_out_and_drops_the_emptied_group():
    model = make_tiny_model()
    groups = restrict_to_trainable(_groups(model), model, Recipe(trainable="head"))
    assert [g.name for g in groups] == ["head"]
    assert {id(p) for p in groups[0].params} == {id(p) for p in model.head_parameters()}


def test_topK_keeps_exactly_the_K_output_most_stages_at_their_group_s_rate():
    model = make_tiny_model()
    stages = model.backbone_stages()
    assert len(stages) > 2
    groups = restrict_to_trainable(_groups(model), model, Recipe(trainable="top2"))
    backbone = next(g for g in groups if g.name == "backbone")
    assert {id(p) for p in backbone.params} == {id(p) for s in stages[-2:] for p in s}
    assert backbone.lr_scale == 0.1


def test_topK_with_K_as_many_as_the_stages_says_what_to_use():
    model = make_tiny_model()
    n = len(model.backbone_stages())
    with pytest.raises(UserError, match=rf"trains every stage of a backbone of {n}; use trainable: all, or top1"):
        restrict_to_trainable(_groups(model), model, Recipe(trainable=f"top{n}"))


def test_an_update_over_an_emptied_group_moves_nothing_and_is_not_an_error():
    model = make_tiny_model()
    recipe = Recipe(trainable="head", steps=10)
    schedule = ParamSchedule(_groups(model), [model], model, recipe, torch.device("cpu"), "probe")
    assert schedule.trains_any(("backbone",)) is False
    assert schedule.trains_any(("head",)) is True
    assert schedule.trains_any(None) is True
    with pytest.raises(ValueError, match="does not declare"):
        schedule.trains_any(("bottleneck2",))
    assert schedule.trainable_params() == sum(p.numel() for p in model.head_parameters())
    assert not any(p.requires_grad for p in model.backbone.parameters())


# -- training -------------------------------------------------------------------------------------


def test_head_trains_on_cached_features_and_leaves_the_backbone_bit_identical(tmp_path):
    record, before, after = _trained_state(tmp_path, "head")
    assert record.extra["feature_cache"] is True and record.extra["feature_cache_steps"] == record.steps
    assert _changed(before, after, "backbone.") == set()  # weights and BatchNorm statistics alike
    assert _changed(before, after, "bottleneck.") and _changed(before, after, "classifier.")
    assert record.label == "probe_dann (head)"


def test_top1_trains_the_last_stage_only(tmp_path):
    record, before, after = _trained_state(tmp_path, "top1")
    model = make_tiny_model()
    names = {id(p): n for n, p in model.backbone.named_parameters()}
    last = {"backbone." + names[id(p)] for p in model.backbone_stages()[-1]}
    changed = _changed(before, after, "backbone.")
    assert changed and {k for k in changed if k.endswith(("weight", "bias"))} <= last
    assert record.extra["feature_cache"] is False  # the stages below are recomputed every step
    assert record.trainable_params < record.total_params


# -- the suite ------------------------------------------------------------------------------------


def test_each_tier_is_a_row_of_its_own(tmp_path):
    cells, _ = _cells(tmp_path, "strategies:\n  - dann\n  - {name: dann, recipe: {trainable: head}}\n")
    assert [c.label for c in cells] == ["dann", "dann (head)"]
    assert cells[0].id != cells[1].id


def test_the_same_tier_listed_twice_is_refused(tmp_path):
    with pytest.raises(UserError, match=r"listed twice: dann \(head\)"):
        _cells(
            tmp_path,
            "strategies:\n  - {name: dann, recipe: {trainable: head}}\n  - {name: dann, recipe: {trainable: head}}\n",
        )


@pytest.mark.parametrize(
    ("strategy", "trainable", "why"),
    [
        ("adda", "head", "it reaches the backbone other than through the model"),
        ("self_training", "top1", "it reaches the backbone other than through the model"),
        ("freeze", "top1", "it trains no backbone stage"),
    ],
)
def test_a_strategy_that_cannot_honour_it_is_refused_in_one_line(tmp_path, strategy, trainable, why):
    with pytest.raises(UserError) as info:
        _cells(tmp_path, f"strategies:\n  - {{name: {strategy}, recipe: {{trainable: {trainable}}}}}\n")
    message = str(info.value)
    assert "\n" not in message
    assert f"strategy {strategy!r} cannot honour recipe.trainable: {trainable} ({why}" in message
    assert "strategies that can: " in message and "dann" in message and "freeze," not in message


def test_freeze_accepts_head_its_own_nature(tmp_path):
    cells, _ = _cells(tmp_path, "strategies:\n  - {name: freeze, recipe: {trainable: head}}\n")
    assert cells[0].label == "freeze (head)"


def test_sweeping_it_is_refused_with_the_way_to_list_it(tmp_path):
    with pytest.raises(UserError, match="recipe.trainable is an axis of leaderboard rows, not a sweep"):
        _cells(tmp_path, "strategies: [dann]\n", "  trainable: [head, all]\n")


def test_a_method_whose_update_the_tier_freezes_entirely_fails_in_one_line(tmp_path):
    """MCD's generator update trains the backbone alone (TLlib's G): at ``head`` it would move nothing
    and the run would be the classifiers learning to disagree, not MCD; the cell fails, saying why."""
    (cell,), registry = _cells(tmp_path, "strategies:\n  - {name: mcd, recipe: {trainable: head}}\n")
    task = CellTask(
        cell=cell, out_dir=str(tmp_path / "out"), data_root=None, cache_dir=None, device="cpu", show_progress=False
    )
    with pytest.raises(UserError) as info:
        train_cell(task, registry)
    assert str(info.value) == (
        "strategy 'mcd': its update 'generator' trains only backbone, which recipe.trainable: head freezes, so "
        "the method cannot run at this tier; leave trainable at all for it, or train part of the backbone "
        "(top1, top2, ...)"
    )
    model = make_tiny_model()
    mcd = Mcd()
    mcd.setup(model, None)
    top1 = Recipe.model_validate({"trainable": "top1"})
    top = {g.name for g in restrict_to_trainable(mcd.param_groups(model), model, top1)}
    assert top == {"backbone", "head", "head2"}  # at top1 its generator is the last stage


@pytest.mark.parametrize("hflip", ["false", "true"])
def test_cached_and_recomputed_frozen_backbones_train_the_same(tmp_path, hflip):
    """Served from the cache or recomputed every step, a frozen backbone gives the same features
    (with train_crop none every view is the centre crop, mirrored by the same draw either way), so
    the same head, up to floating-point reordering; and the same accuracies, the cached cell's scored
    by its head on the cached test views."""
    states, accuracies = {}, {}
    for cache in ("true", "false"):
        (tmp_path / cache).mkdir()
        (cell,), registry = _cells(
            tmp_path / cache,
            "strategies:\n  - {name: dann, recipe: {trainable: head}}\n",
            f"  train_crop: none\n  feature_cache: {cache}\n",
            hflip=hflip,
        )
        task = CellTask(
            cell=cell,
            out_dir=str(tmp_path / cache / "out"),
            data_root=None,
            cache_dir=str(tmp_path / cache / "cache"),
            device="cpu",
            show_progress=False,
            save_model=True,
        )
        record = train_cell(task, registry)
        assert record.status == "ok", record.error
        assert record.extra["feature_cache"] is (cache == "true")
        states[cache] = load_checked(ResultsDir(tmp_path / cache / "out").model_path(cell.id))
        accuracies[cache] = (record.target_acc, record.source_acc)
    for key, value in states["true"].items():
        if value.is_floating_point():
            torch.testing.assert_close(states["false"][key], value, rtol=1e-4, atol=1e-5, msg=key)
        else:
            assert torch.equal(states["false"][key], value), key
    assert accuracies["true"] == accuracies["false"]


@pytest.mark.parametrize("entry", ["{name: dann, recipe: {trainable: head}}", "freeze"])
def test_a_frozen_backbone_s_evaluation_runs_only_the_head_on_the_target(tmp_path, monkeypatch, entry):
    """The backbone's test passes over the target and the held-out source are their cached centre
    views: the whole model reads only a warm-up batch and the timed sample of held-out images that
    give the evaluation throughput."""
    from tlbench.training import evaluation
    from tlbench.training.evaluation import DEPLOYMENT_TIMING_IMAGES, DEPLOYMENT_WARMUP_IMAGES

    passes: list[int] = []
    heads: list[int] = []  # rows the head alone scored: the target's, then the held-out source's
    real, real_head = evaluation.model_outputs, evaluation.head_outputs
    monkeypatch.setattr(
        evaluation, "model_outputs", lambda model, images, *a: passes.append(len(images)) or real(model, images, *a)
    )
    monkeypatch.setattr(
        evaluation, "head_outputs", lambda model, feats, *a: heads.append(len(feats)) or real_head(model, feats, *a)
    )
    (cell,), registry = _cells(tmp_path, f"strategies:\n  - {entry}\n")  # freeze has no target views
    task = CellTask(
        cell=cell,
        out_dir=str(tmp_path / "out"),
        data_root=None,
        cache_dir=str(tmp_path / "cache"),
        device="cpu",
        show_progress=False,
    )
    record = train_cell(task, registry)
    assert record.status == "ok", record.error
    assert heads[0] == record.test_images
    n = heads[1]  # the held-out source
    assert passes == [min(DEPLOYMENT_WARMUP_IMAGES, n), min(DEPLOYMENT_TIMING_IMAGES, n)]
    assert record.eval_img_per_s > 0
    assert record.source_acc is not None


def test_head_outputs_on_cached_test_views_equal_the_whole_model_s():
    from tlbench.training.augment import Augmenter, Normalizer
    from tlbench.training.evaluation import head_outputs, model_outputs

    model = make_tiny_model().eval()
    images = torch.randint(0, 256, (6, 3, 36, 36), dtype=torch.uint8)
    aug = Augmenter(32, Normalizer((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "cpu"), hflip=False, scale=(0.08, 1.0))
    whole = model_outputs(model, images, aug, 4, torch.device("cpu"), contextlib.nullcontext)
    with torch.no_grad():
        features = model.backbone(aug.test(images))
    head = head_outputs(model, features, 4, contextlib.nullcontext)
    torch.testing.assert_close(head.logits, whole.logits)
    torch.testing.assert_close(head.embedding, whole.embedding)


def test_sgd_on_the_cpu_runs_multi_tensor_and_matches_torch_s_per_tensor_loop_bit_for_bit():
    """make_optimizer's SGD is torch's foreach form on the CPU (the per-tensor loop cost a head step on
    cached features a quarter of its time); its parameters after a few Nesterov steps with weight
    decay are bit-identical to the per-tensor loop's, so no committed result moves."""
    from tlbench.training.schedule import make_optimizer

    recipe = Recipe.model_validate({"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3})

    def trained(foreach: bool | None) -> list[torch.Tensor]:
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.BatchNorm1d(5), torch.nn.Linear(5, 3))
        groups = [{"params": list(net[0].parameters()), "lr": 0.05}, {"params": list(net[2].parameters()), "lr": 0.005}]
        if foreach is None:
            opt = make_optimizer(groups, recipe, torch.device("cpu"))
            assert opt.defaults["foreach"] is True
        else:
            opt = torch.optim.SGD(groups, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3, foreach=False)
        x = torch.randn(16, 7, generator=torch.Generator().manual_seed(1))
        for _ in range(5):
            opt.zero_grad()
            net(x).square().mean().backward()
            opt.step()
        return [p.detach().clone() for p in net.parameters()]

    for ours, loop in zip(trained(None), trained(False), strict=True):
        assert torch.equal(ours, loop)
