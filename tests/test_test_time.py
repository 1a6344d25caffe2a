"""Protocol test_time and its methods (Tent, Wang et al. ICLR 2021; BN-adapt, Schneider et al.
NeurIPS 2020): the entropy and the batch normalisation computed by hand; the target arrives once, in a
fixed order, each batch predicted before the model learns from it, and those predictions are what the
cell is scored on; Tent moves the BatchNorm scales and shifts and nothing else."""

from __future__ import annotations

import copy
import math
import types
from pathlib import Path

import pytest
import torch
from conftest import TINY_SUITE, cell_task  # tests/ is on sys.path (pytest rootdir conftest)

import tlbench
from tlbench import SetupContext, StepContext
from tlbench.data.files import checked_digest, load_checked
from tlbench.plugins.registry import Registry
from tlbench.spec.loading import load_suite
from tlbench.spec.plan import plan
from tlbench.spec.store import ResultsDir
from tlbench.testing import make_tiny_batch, make_tiny_model
from tlbench.training.engine import train_cell
from tlbench.training.stream import stream_bounds, stream_steps
from tlbench_builtins.strategies.tent import BnAdapt, Tent, softmax_entropy


def test_softmax_entropy_by_hand():
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]])  # p = (1/4, 3/4) and (1/2, 1/2)
    expected = [-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)), math.log(2.0)]  # 0.562335, 0.693147
    assert softmax_entropy(logits).tolist() == pytest.approx(expected)


def test_the_stream_cuts_the_target_into_batches_and_never_leaves_one_image_alone():
    assert stream_bounds(10, 4) == [0, 4, 8, 10]
    assert stream_bounds(9, 4) == [0, 4, 9]  # a last batch of one joins the one before it
    assert stream_bounds(1, 4) == [0, 1]
    assert stream_steps(9, 4) == 2 and stream_steps(12, 4) == 3


def _set_up(cls, seed: int = 0):
    teacher = make_tiny_model(seed)
    teacher.train()
    teacher(make_tiny_batch((), seed=5).source)  # running statistics away from their initial values
    teacher.eval()
    model = make_tiny_model(seed + 1)
    strategy = cls(cls.parse_params({}))
    strategy.setup(model, SetupContext(model.num_classes, model.feature_dim, model.embed_dim, 4, "cpu", 0, teacher))
    ctx = StepContext(step=0, total_steps=4, model=model, device=torch.device("cpu"), num_classes=model.num_classes)
    return teacher, model, strategy, ctx


def test_bn_adapt_predicts_with_each_batch_s_own_statistics():
    teacher, model, strategy, ctx = _set_up(BnAdapt)
    batch = make_tiny_batch(("weak",), seed=1)
    (update,) = strategy.training_updates(batch, ctx)
    assert update.groups == () and strategy.param_groups(model) == []
    by_batch = copy.deepcopy(teacher).train()  # training mode: every BatchNorm normalises by the batch
    for m in by_batch.modules():
        if isinstance(m, torch.nn.Dropout):
            m.eval()
    with torch.no_grad():
        torch.testing.assert_close(update.predictions, by_batch(batch.target))
        assert not torch.allclose(update.predictions, teacher(batch.target))  # the source statistics differ


def test_tent_trains_the_batchnorm_scales_and_shifts_and_nothing_else():
    _, model, strategy, _ = _set_up(Tent)
    (group,) = strategy.param_groups(model)
    names = {n for n, p in model.named_parameters() if any(p is q for q in group.params)}
    bn = {
        f"{n}.{w}"
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
        for w in ("weight", "bias")
    }
    assert names == bn and names


# -- the protocol -------------------------------------------------------------------------------------

SEEN: dict[str, list] = {"index": [], "logits": [], "labels": []}


class ProbeTent(Tent):
    """``tent`` that keeps what each step saw and predicted."""

    name = "probe_tent"

    def training_step(self, batch, ctx):
        out = super().training_step(batch, ctx)
        SEEN["index"].append(batch.target_index.clone())
        SEEN["logits"].append(out.predictions.clone())
        SEEN["labels"].append(len(batch.source_labels))
        return out


PROBES = types.SimpleNamespace(register_strategies=tlbench.hookimpl(lambda register: register(ProbeTent)))


def _plan(tmp_path: Path):
    path = tmp_path / "suite.yaml"
    suite = TINY_SUITE.replace("pairs:", "protocol: test_time\npairs:").replace(
        "strategies: [source_only, dann]", "strategies: [probe_tent, bn_adapt]"
    )
    path.write_text(suite)
    registry = Registry(plugins={"probes": PROBES})
    return plan(load_suite(path), registry).cells, registry


_task = cell_task


def test_a_test_time_cell_predicts_each_image_once_before_adapting_and_is_scored_on_it(tmp_path):
    cells, registry = _plan(tmp_path)
    teacher, tent, bn_adapt = cells
    assert (teacher.strategy, teacher.protocol) == ("source_only", "uda")
    assert tent.teacher is teacher and bn_adapt.teacher is teacher and tent.protocol == "test_time"
    assert train_cell(_task(tmp_path, teacher, save_model=True), registry).status == "ok"
    teacher_path = ResultsDir(tmp_path / "out").model_path(teacher.id)

    for key in SEEN:
        SEEN[key].clear()
    record = train_cell(_task(tmp_path, tent, teacher_model=str(teacher_path), save_model=True), registry)
    assert record.status == "ok", record.error
    n = record.test_images
    index = torch.cat(SEEN["index"])
    assert sorted(index.tolist()) == list(range(n))  # every target image once
    assert record.steps == stream_steps(n, tent.recipe.batch_size) == len(SEEN["index"])
    assert set(SEEN["labels"]) == {0}  # no source image, no label
    assert record.extra["teacher_sha256"] == checked_digest(teacher_path)

    # the score is the predictions made in each step, before that step's update
    from tlbench.data.cache import load_domain
    from tlbench.training.setup import load_cell_data

    labels = load_cell_data(tent, _task(tmp_path, tent), registry).target.labels
    predicted = torch.cat(SEEN["logits"]).argmax(1)
    online = 100.0 * (predicted == labels[index]).float().mean().item()
    assert record.target_acc == pytest.approx(online)
    assert "adapted_model_acc" in record.extra
    assert load_domain  # imported for the data path the cell used

    before, after = load_checked(teacher_path), load_checked(ResultsDir(tmp_path / "out").model_path(tent.id))
    changed = {k for k in after if not torch.equal(before[k], after[k])}
    assert changed and all(k.endswith((".weight", ".bias")) for k in changed)
    norm_layers = {n for n, m in make_tiny_model(0).named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    norm_layers |= {"bottleneck.1"}
    assert {k.rsplit(".", 1)[0] for k in changed} <= norm_layers


def test_bn_adapt_trains_nothing_and_still_scores_its_stream(tmp_path):
    cells, registry = _plan(tmp_path)
    teacher, _, bn_adapt = cells
    assert train_cell(_task(tmp_path, teacher, save_model=True), registry).status == "ok"
    teacher_path = ResultsDir(tmp_path / "out").model_path(teacher.id)
    record = train_cell(_task(tmp_path, bn_adapt, teacher_model=str(teacher_path), save_model=True), registry)
    assert record.status == "ok", record.error
    assert record.trainable_params == 0
    before, after = load_checked(teacher_path), load_checked(ResultsDir(tmp_path / "out").model_path(bn_adapt.id))
    assert all(torch.equal(before[k], after[k]) for k in after)  # nothing moved; running statistics dropped
    assert 0.0 <= record.target_acc <= 100.0
