"""Frozen networks' outputs are computed once: the head-only phase of ``unfreeze`` trains on cached
backbone features, and a ``kd`` teacher's logits on fixed views are computed once and served."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import types
from pathlib import Path

import pytest
import torch
from conftest import TINY_SUITE  # tests/ is on sys.path (pytest rootdir conftest)

import tlbench
from tlbench.data.files import load_checked
from tlbench.plugins.registry import Registry
from tlbench.spec.cell import CellTask
from tlbench.spec.loading import load_suite
from tlbench.spec.plan import plan
from tlbench.spec.store import ResultsDir
from tlbench.testing import make_tiny_model
from tlbench.training.augment import Augmenter, Normalizer
from tlbench.training.engine import train_cell
from tlbench.training.frozen import TeacherViewBank
from tlbench_builtins.strategies.kd import KnowledgeDistillation
from tlbench_builtins.strategies.unfreeze import Unfreeze

SEEN: list[tuple[str, int, tuple[int, ...], bool]] = []  # (strategy, step, source shape, teacher logits served)


class ProbeUnfreeze(Unfreeze):
    """``unfreeze`` that notes what each batch held."""

    name = "probe_unfreeze"

    def training_step(self, batch, ctx):
        SEEN.append((self.name, ctx.step, tuple(batch.source.shape), batch.source_teacher is not None))
        return super().training_step(batch, ctx)


class ProbeKd(KnowledgeDistillation):
    """``kd`` that notes what each batch held and checks the served logits are the teacher's."""

    name = "probe_kd"

    def training_step(self, batch, ctx):
        SEEN.append((self.name, ctx.step, tuple(batch.source.shape), batch.source_teacher is not None))
        if batch.source_teacher is not None:
            with torch.no_grad():
                online = ctx.teacher(torch.cat([batch.source, batch.target]))
            served = torch.cat([batch.source_teacher, batch.target_teacher])
            torch.testing.assert_close(served, online.float(), rtol=1e-4, atol=1e-4)
        return super().training_step(batch, ctx)


PROBES = types.SimpleNamespace(
    register_strategies=tlbench.hookimpl(lambda register: [register(ProbeUnfreeze), register(ProbeKd)])
)


def _cells(tmp_path: Path, strategies: str, extra: str = ""):
    registry = Registry(plugins={"probes": PROBES})
    path = tmp_path / "suite.yaml"
    path.write_text(TINY_SUITE.replace("strategies: [source_only, dann]", strategies) + extra)
    suite = load_suite(path)
    cells = plan(suite, registry).cells
    return cells, registry


def _train(cell, registry, tmp_path: Path, *, teacher_model: str | None = None, save_model: bool = False):
    task = CellTask(
        cell=cell,
        out_dir=str(tmp_path / "out"),
        data_root=None,
        cache_dir=str(tmp_path / "cache"),
        device="cpu",
        show_progress=False,
        save_model=save_model,
        teacher_model=teacher_model,
    )
    return train_cell(task, registry)


def test_unfreeze_trains_on_cached_features_until_the_first_stage_joins(tmp_path):
    SEEN.clear()
    cells, registry = _cells(
        tmp_path, "strategies:\n  - {name: probe_unfreeze, params: {at: 0.5, until: 0.75}}\n", "  feature_cache: true\n"
    )
    (cell,) = cells
    record = _train(cell, registry, tmp_path)
    assert record.status == "ok", record.error
    steps = cell.recipe.steps
    joins = math.ceil(0.5 * steps)
    assert record.extra["feature_cache"] is True and record.extra["feature_cache_steps"] == joins
    shapes = {step: shape for name, step, shape, _ in SEEN}
    assert [len(shapes[s]) for s in range(steps)] == [2] * joins + [4] * (steps - joins)  # features, then images
    assert len(list((tmp_path / "cache" / "features").glob("*.pt"))) == 1

    # the same features serve freeze (no recomputation: the file is reused, not rewritten); freeze,
    # whose backbone never trains, adds the target's and the held-out source's, on which it is scored
    (feature_file,) = (tmp_path / "cache" / "features").glob("*.pt")
    stamp = feature_file.stat().st_mtime_ns
    freeze_cells, _ = _cells(tmp_path, "strategies: [freeze]\n")
    assert _train(freeze_cells[0], registry, tmp_path).extra["feature_cache"] is True
    assert feature_file.stat().st_mtime_ns == stamp
    assert len(list((tmp_path / "cache" / "features").glob("*.pt"))) == 3


def test_a_weights_file_replaced_under_the_same_path_gets_its_own_features(tmp_path):
    import timm

    SEEN.clear()
    weights = tmp_path / "backbone.pth"

    def train_freeze_on(seed: int) -> Path:
        torch.manual_seed(seed)
        torch.save(timm.create_model("test_efficientnet", num_classes=0).state_dict(), weights)
        cells, registry = _cells(tmp_path, "strategies: [freeze]\n")
        cell = dataclasses.replace(cells[0], weights=str(weights))
        record = _train(cell, registry, tmp_path)
        assert record.status == "ok", record.error
        return record

    first = train_freeze_on(0)
    second = train_freeze_on(1)
    assert first.extra["provenance"]["weights"]["sha256"] != second.extra["provenance"]["weights"]["sha256"]
    # the second file's features were computed from it, not served from the first file's cache
    files = sorted((tmp_path / "cache" / "features").glob("*.pt"))
    assert len(files) == 6  # source, target and held-out source, for each file
    features = [load_checked(f) for f in files]
    assert not any(torch.equal(a, b) for i, a in enumerate(features) for b in features[i + 1 :])


def test_unfreeze_without_the_feature_cache_sees_images_throughout(tmp_path):
    SEEN.clear()
    cells, registry = _cells(tmp_path, "strategies: [probe_unfreeze]\n", "  feature_cache: false\n")
    record = _train(cells[0], registry, tmp_path)
    assert record.extra["feature_cache"] is False and record.extra["feature_cache_steps"] == 0
    assert all(len(shape) == 4 for _, _, shape, _ in SEEN)


def test_kd_teacher_logits_on_fixed_views_are_computed_once_and_served(tmp_path):
    SEEN.clear()
    cells, registry = _cells(
        tmp_path, "strategies:\n  - {name: probe_kd, params: {teacher_strategy: source_only, teacher_views: 3}}\n"
    )
    teacher_cell, student = cells
    assert teacher_cell.strategy == "source_only" and student.teacher is teacher_cell
    assert _train(teacher_cell, registry, tmp_path, save_model=True).status == "ok"
    model_path = str(ResultsDir(tmp_path / "out").model_path(teacher_cell.id))

    record = _train(student, registry, tmp_path, teacher_model=model_path)
    assert record.status == "ok", record.error
    assert record.extra["teacher_views"] == 3
    assert all(served for name, _, _, served in SEEN)  # and ProbeKd checked each against the online teacher
    cached = sorted((tmp_path / "cache" / "teacher_views").glob("*.pt"))
    assert len(cached) == 2  # source and target
    stamps = [p.stat().st_mtime_ns for p in cached]

    # another seed of the student reuses the teacher's outputs: nothing is recomputed
    other_seed = _train(dataclasses.replace(student, seed=1), registry, tmp_path, teacher_model=model_path)
    assert other_seed.status == "ok", other_seed.error
    assert [p.stat().st_mtime_ns for p in cached] == stamps
    assert sorted((tmp_path / "cache" / "teacher_views").glob("*.pt")) == cached


def test_kd_with_teacher_views_zero_runs_the_teacher_every_step(tmp_path):
    SEEN.clear()
    cells, registry = _cells(tmp_path, "strategies:\n  - {name: probe_kd, params: {teacher_strategy: source_only}}\n")
    teacher_cell, student = cells
    _train(teacher_cell, registry, tmp_path, save_model=True)
    record = _train(
        student, registry, tmp_path, teacher_model=str(ResultsDir(tmp_path / "out").model_path(teacher_cell.id))
    )
    assert record.status == "ok" and record.extra["teacher_views"] == 0
    assert SEEN and not any(served for _, _, _, served in SEEN)
    assert not (tmp_path / "cache" / "teacher_views").exists()


def test_fixed_views_are_the_crops_they_claim_and_the_same_for_every_teacher(tmp_path):
    aug = Augmenter(8, Normalizer((0.0, 0.0, 0.0), (1 / 255, 1 / 255, 1 / 255), "cpu"), hflip=True, scale=(0.5, 1.0))
    images = torch.randint(0, 256, (5, 3, 12, 12), dtype=torch.uint8)
    views = aug.fixed_views(5, 12, 12, 4, seed=7, device="cpu")
    assert views.boxes.shape == (4, 5, 4) and views.flips.shape == (4, 5) and views.count == 4
    again = aug.fixed_views(5, 12, 12, 4, seed=7, device="cpu")
    assert torch.equal(views.boxes, again.boxes) and torch.equal(views.flips, again.flips)
    w, h = views.boxes[..., 2] - views.boxes[..., 0], views.boxes[..., 3] - views.boxes[..., 1]
    area = w * h / 144
    assert bool(((area > 0.5 - 1e-4) & (area < 1 + 1e-4)).all())
    # a whole-image box is a resize of the image (here of a horizontal ramp), mirrored when flipped
    ramp = torch.arange(12.0).mul(20).expand(1, 3, 12, 12).to(torch.uint8)
    full = torch.tensor([[0.0, 0.0, 12.0, 12.0]])
    one = aug.view(ramp, full, torch.tensor([False]))
    torch.testing.assert_close(aug.view(ramp, full, torch.tensor([True])), one.flip(-1))
    ref = torch.nn.functional.interpolate(ramp.float(), size=(8, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(one, ref, atol=2.0, rtol=0)  # borders differ by roi_align sampling
    # a box over the left half sees only the left half
    left = aug.view(ramp, torch.tensor([[0.0, 0.0, 6.0, 12.0]]), torch.tensor([False]))
    assert float(left.max()) <= 20 * 6

    # two teachers, one domain: the same views (so students see the same crops), different logits
    t1, t2 = make_tiny_model(0).eval(), make_tiny_model(1).eval()
    nocast = contextlib.nullcontext
    v1, l1 = TeacherViewBank(t1, aug, 2, 4, None, key="a").build(images, "dom", nocast)
    v2, l2 = TeacherViewBank(t2, aug, 2, 4, None, key="b").build(images, "dom", nocast)
    assert torch.equal(v1.boxes, v2.boxes) and not torch.allclose(l1, l2)
    assert l1.shape == (2, 5, t1.num_classes)


def test_kd_teacher_views_must_not_be_negative():
    with pytest.raises(tlbench.UserError, match="teacher_views"):
        KnowledgeDistillation(teacher_views=-1)
