"""SHOT and SHOT-IM (Liang et al., ICML 2020) and the source-free protocol they run under: the
information-maximisation loss and the clustering pseudo-labels computed by hand; a source-free cell
never loads the source domain, starts from its teacher (the source model), keeps its classifier,
and receives the whole-target passes it asks for."""

from __future__ import annotations

import math
import types
from pathlib import Path

import pytest
import torch
from conftest import TINY_SUITE, cell_task  # tests/ is on sys.path (pytest rootdir conftest)

import tlbench
from tlbench.data.files import checked_digest, load_checked
from tlbench.errors import UserError
from tlbench.plugins.registry import Registry
from tlbench.spec.loading import load_suite
from tlbench.spec.plan import plan
from tlbench.spec.store import ResultsDir
from tlbench.training.engine import train_cell
from tlbench.training.refresh import refresh_steps
from tlbench_builtins.strategies.shot import Shot, ShotIm, clustering_pseudo_labels, information_maximization

# -- the defining computations, by hand --------------------------------------------------------


def test_information_maximization_is_mean_entropy_minus_entropy_of_the_mean():
    # p1 = (1/2, 1/2), p2 = (3/4, 1/4)
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]], dtype=torch.float64)
    im, ent, div = information_maximization(logits, epsilon=0.0)
    h = lambda *p: -sum(x * math.log(x) for x in p)  # noqa: E731
    assert ent.item() == pytest.approx((h(0.5, 0.5) + h(0.75, 0.25)) / 2)  # 0.627741
    assert div.item() == pytest.approx(h(0.625, 0.375))  # the mean prediction (5/8, 3/8): 0.661563
    assert im.item() == pytest.approx(0.627741 - 0.661563, abs=1e-6)


def test_information_maximization_pulls_predictions_apart_and_towards_confidence():
    logits = torch.tensor([[0.2, 0.0], [0.1, 0.0]], requires_grad=True)
    information_maximization(logits)[0].backward()
    # both images predict class 0 weakly: diversity pushes the second (the less sure) towards class 1
    assert logits.grad[1, 0] > 0 > logits.grad[1, 1]


def test_pseudo_labels_take_the_nearest_prediction_weighted_centroid_then_the_nearest_hard_one():
    # four images on a line; the classifier calls the second one class 1 (0.6), the clusters say 0
    features = torch.tensor([[0.0], [1.0], [4.0], [5.0]])
    probs = torch.tensor([[1.0, 0.0], [0.4, 0.6], [0.0, 1.0], [0.0, 1.0]])
    # round 1: c0 = (0.4 * 1) / 1.4 = 0.286, c1 = (0.6 * 1 + 4 + 5) / 2.6 = 3.692: image 2 is nearer c0
    # round 2: c0 = 0.5, c1 = 4.5: the same labels
    labels = clustering_pseudo_labels(probs, features, distance="euclidean")
    assert labels.tolist() == [0, 0, 1, 1]
    assert probs.argmax(1).tolist() == [0, 1, 1, 1]


def test_a_class_predicted_for_too_few_images_keeps_no_centroid():
    features = torch.tensor([[0.0], [1.0], [4.0], [5.0]])
    probs = torch.tensor([[1.0, 0.0], [0.4, 0.6], [0.0, 1.0], [0.0, 1.0]])
    # class 0 is the arg-max of one image only: with threshold 1 only class 1 keeps a centroid
    assert clustering_pseudo_labels(probs, features, threshold=1, distance="euclidean").tolist() == [1, 1, 1, 1]


def test_cosine_pseudo_labels_append_a_one_and_compare_directions():
    # a = (2, 0), b = (0, 2), c = (0, 3); the classifier calls b class 0. With the appended 1 and
    # L2 normalisation: a' = (2,0,1)/√5, b' = (0,2,1)/√5, c' = (0,3,1)/√10. Round 1: c0 = (a'+b')/2
    # points along (1,1,1): cos(b', c0) = 3/√15 = 0.775 against cos(b', c') = 7/√50 = 0.990, so b joins c
    features = torch.tensor([[2.0, 0.0], [0.0, 2.0], [0.0, 3.0]])
    probs = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert clustering_pseudo_labels(probs, features).tolist() == [0, 1, 1]
    assert 3 / math.sqrt(15) < 7 / math.sqrt(50)


def test_shot_im_is_shot_without_pseudo_labels():
    assert ShotIm.parse_params({}).cls_par == 0.0 and Shot.parse_params({}).cls_par == 0.3
    assert ShotIm().target_refreshes == 0 and Shot().target_refreshes == 15


def test_refresh_steps_follow_shot_s_interval():
    assert refresh_steps(100, 15) == list(range(0, 100, 6))  # iter_num % (max_iter // 15) == 0
    assert refresh_steps(6, 3) == [0, 2, 4]
    assert refresh_steps(4, 15) == [0, 1, 2, 3]  # fewer steps than refreshes: every step
    assert refresh_steps(10, 0) == []


# -- the source-free protocol ----------------------------------------------------------------------

SEEN: dict[str, list] = {"source_rows": [], "refreshed_at": [], "labels": []}


class ProbeShot(Shot):
    """``shot`` that notes what each batch and each refresh held."""

    name = "probe_shot"

    def refresh(self, target, ctx):
        SEEN["refreshed_at"].append(ctx.step)
        SEEN["labels"].append(len(target.logits))
        super().refresh(target, ctx)

    def training_step(self, batch, ctx):
        SEEN["source_rows"].append(len(batch.source) + len(batch.source_labels))
        return super().training_step(batch, ctx)


class NoSourceModel(tlbench.Strategy):
    name = "no_source_model"
    protocols = ("source_free",)
    target_views = ("weak",)


PROBES = types.SimpleNamespace(
    register_strategies=tlbench.hookimpl(lambda register: [register(ProbeShot), register(NoSourceModel)])
)

SOURCE_FREE = TINY_SUITE.replace("pairs:", "protocol: source_free\npairs:")


def _plan(tmp_path: Path, strategies: str):
    path = tmp_path / "suite.yaml"
    path.write_text(SOURCE_FREE.replace("strategies: [source_only, dann]", strategies))
    registry = Registry(plugins={"probes": PROBES})
    return plan(load_suite(path), registry).cells, registry


_task = cell_task


def test_the_source_model_is_one_uda_source_only_cell_shared_by_every_source_free_cell(tmp_path):
    cells, _ = _plan(tmp_path, "strategies: [shot, shot_im]")
    teacher, shot, shot_im = cells
    assert (teacher.strategy, teacher.protocol) == ("source_only", "uda")
    assert teacher.params == {"label_smoothing": 0.1}  # SHOT's source model
    assert shot.teacher is teacher and shot_im.teacher is teacher
    assert shot.protocol == shot_im.protocol == "source_free"
    assert shot.config()["protocol"] == "source_free"


def test_a_uda_method_under_source_free_is_refused_in_one_line(tmp_path):
    with pytest.raises(UserError, match="strategy 'dann' does not support protocol 'source_free'.*shot"):
        _plan(tmp_path, "strategies: [dann]")


def test_a_source_free_method_without_a_source_model_is_refused_in_one_line(tmp_path):
    with pytest.raises(UserError, match="no_source_model.*no source model to adapt"):
        _plan(tmp_path, "strategies: [no_source_model]")


def test_a_source_free_cell_never_loads_the_source_and_keeps_the_source_classifier(tmp_path, monkeypatch):
    from tlbench.data import cache

    cells, registry = _plan(tmp_path, "strategies:\n  - probe_shot: {interval: 3}\n")
    teacher, student = cells
    assert train_cell(_task(tmp_path, teacher, save_model=True), registry).status == "ok"
    teacher_path = ResultsDir(tmp_path / "out").model_path(teacher.id)

    loaded: list[str] = []
    real = cache.load_domain
    monkeypatch.setattr(cache, "load_domain", lambda ds, name, *a, **k: loaded.append(name) or real(ds, name, *a, **k))
    for key in SEEN:
        SEEN[key].clear()
    record = train_cell(_task(tmp_path, student, teacher_model=str(teacher_path), save_model=True), registry)
    assert record.status == "ok", record.error

    assert loaded == ["digits+invert"]  # the target alone; the source domain is never read
    assert SEEN["source_rows"] == [0] * student.recipe.steps  # every batch's source side is empty
    assert SEEN["refreshed_at"] == [0, 2, 4]  # interval 3 over 6 steps
    assert set(SEEN["labels"]) == {record.test_images}  # each pass covers every target image
    assert record.source_acc is None and record.extra["train_images"] == 0
    assert record.extra["teacher_sha256"] == checked_digest(teacher_path)
    assert 0 <= record.extra["pseudo_label_acc"] <= 100  # audited against labels it never trained on

    before, after = load_checked(teacher_path), load_checked(ResultsDir(tmp_path / "out").model_path(student.id))
    assert torch.equal(before["classifier.weight"], after["classifier.weight"])  # the source hypothesis
    assert torch.equal(before["classifier.bias"], after["classifier.bias"])
    assert not torch.equal(before["bottleneck.0.weight"], after["bottleneck.0.weight"])  # the features adapt


def test_on_a_frozen_backbone_a_source_free_cell_trains_from_the_cached_features(tmp_path):
    """SHOT's teacher only initialises the cell (``teacher_in_steps = False``), so at trainable: head
    the engine serves it the frozen backbone's cached features, as it does any strategy."""
    path = tmp_path / "suite.yaml"
    path.write_text(
        SOURCE_FREE.replace("strategies: [source_only, dann]", "strategies: [shot]") + "  trainable: head\n"
    )
    registry = Registry(plugins={"probes": PROBES})
    teacher, student = plan(load_suite(path), registry).cells
    assert train_cell(_task(tmp_path, teacher, save_model=True), registry).status == "ok"
    teacher_path = ResultsDir(tmp_path / "out").model_path(teacher.id)
    record = train_cell(_task(tmp_path, student, teacher_model=str(teacher_path)), registry)
    assert record.status == "ok", record.error
    assert record.extra["feature_cache"] is True and record.extra["feature_cache_steps"] == student.recipe.steps
