"""Outputs of frozen networks, computed once and reused across strategies, seeds and runs.

- :class:`FeatureBank`: while nothing in the backbone trains (all of ``freeze``, the head-only
  phase of ``unfreeze``), every step would recompute the same features. The engine computes them
  once per (backbone, weights, domain content, image size, view), keeps them on the device, and
  stores them in the cache so later cells and runs only train the head.
- :class:`TeacherViewBank`: a ``kd`` teacher is frozen too. With ``teacher_views: K`` its logits on
  K fixed augmented views of every image are computed once (FKD: Shen & Xing, ECCV 2022, "A Fast
  Knowledge Distillation Framework for Visual Recognition") and shared by every student, seed and
  run that distils from the same trained teacher.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch
from torch import Tensor

from tlbench.data.domains import Domain
from tlbench.data.files import checked_digest, load_checked, save_cached
from tlbench.models.transfer import TransferModel
from tlbench.training.augment import Augmenter, FixedViews

if TYPE_CHECKING:
    from tlbench.training.schedule import ParamSchedule
    from tlbench.training.setup import CellSetup


class FeatureBank:
    """Pooled features of a frozen backbone, computed once per view and reused every step.

    Views: the test crop and, with flipping on, its mirror image. Kept on disk under the cache
    (keyed by backbone, weights, domain content, size and view) so other strategies, seeds and
    runs reuse them.
    """

    def __init__(
        self,
        model: TransferModel,
        augmenter: Augmenter,
        views: list[str],
        batch_size: int,
        cache_dir: Path | None,
        key: str,
    ):
        self.model, self.aug, self.views, self.bs = model, augmenter, views, batch_size
        self.cache_dir, self.key = cache_dir, key

    def features(self, domain_images: Tensor, domain_key: str, autocast) -> Tensor:
        """views × N × D features of uint8 images."""
        path = _cache_file(self.cache_dir, "features", f"{self.key}|{domain_key}|{'+'.join(self.views)}")
        cached = load_checked(path) if path is not None else None
        if cached is not None and cached.shape[1] == len(domain_images):
            return cached.to(domain_images.device)

        def batch(view: int, rows: slice) -> Tensor:
            x = self.aug.test(domain_images[rows])
            return x.flip(-1) if self.views[view] == "flip" else x

        feats = _outputs_per_view(self.model.backbone, batch, len(self.views), len(domain_images), self.bs, autocast)
        if path is not None:
            save_cached(path, feats.cpu())
        return feats


class TeacherViewBank:
    """A frozen teacher's logits on ``k`` fixed augmented views of every image of a domain.

    The views (random resized crops and flips, as in training) are drawn from a seed derived from
    the domain's content, not from the cell's seed, so students of every seed share them; the
    cache key holds the teacher's weights digest, the domain, the crop recipe and ``k``.
    """

    def __init__(
        self, teacher: torch.nn.Module, augmenter: Augmenter, k: int, batch_size: int, cache_dir: Path | None, key: str
    ):
        self.teacher, self.aug, self.k, self.bs = teacher, augmenter, k, batch_size
        self.cache_dir, self.key = cache_dir, key

    def build(self, domain_images: Tensor, domain_key: str, autocast) -> tuple[FixedViews, Tensor]:
        """The views of uint8 images and the teacher's float32 logits on them (k × N × C)."""
        device = domain_images.device
        views_key = f"{domain_key}|size={self.aug.size}|scale={self.aug.scale}|hflip={self.aug.hflip}|k={self.k}"
        path = _cache_file(self.cache_dir, "teacher_views", f"{self.key}|{views_key}")
        cached = load_checked(path) if path is not None else None
        if (
            isinstance(cached, dict)
            and cached.get("logits") is not None
            and tuple(cached["logits"].shape[:2]) == (self.k, len(domain_images))
        ):
            return FixedViews(cached["boxes"].to(device), cached["flips"].to(device)), cached["logits"].to(device)
        n, _, h, w = domain_images.shape
        seed = int(hashlib.sha256(views_key.encode()).hexdigest()[:15], 16)  # the same views for every teacher
        views = self.aug.fixed_views(n, h, w, self.k, seed=seed, device=device)

        def batch(view: int, rows: slice) -> Tensor:
            return self.aug.view(domain_images[rows], views.boxes[view, rows], views.flips[view, rows])

        logits = _outputs_per_view(self.teacher, batch, self.k, n, self.bs, autocast)
        if path is not None:
            save_cached(path, {"boxes": views.boxes.cpu(), "flips": views.flips.cpu(), "logits": logits.cpu()})
        return views, logits


def _cache_file(cache_dir: Path | None, folder: str, key: str) -> Path | None:
    """``<cache_dir>/<folder>/<hash of key>.pt``, or None without a disk cache."""
    if cache_dir is None:
        return None
    return cache_dir / folder / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.pt"


@torch.no_grad()
def _outputs_per_view(
    net: torch.nn.Module, batch: Callable[[int, slice], Tensor], views: int, n: int, batch_size: int, autocast
) -> Tensor:
    """views × N × … float32 outputs of ``net`` in eval mode; ``batch(view, rows)`` gives its input."""
    was_training = net.training
    net.eval()
    try:
        out = []
        for v in range(views):
            chunks = []
            for i in range(0, n, batch_size):
                with autocast():
                    chunks.append(net(batch(v, slice(i, i + batch_size))).float())
            out.append(torch.cat(chunks))
    finally:
        net.train(was_training)
    return torch.stack(out)


def domain_key(domain: Domain) -> str:
    """A content hash of a domain's images (for keys that must change when the pixels do)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(str(tuple(domain.images.shape)).encode())
    h.update(domain.images.contiguous().numpy().tobytes())
    return h.hexdigest()


@dataclass
class FrozenOutputs:
    """What the engine serves instead of recomputing a frozen network every step."""

    feature_steps: int = 0  # steps served backbone features (0: images throughout)
    source_features: Tensor | None = None  # views × N × D
    target_features: Tensor | None = None
    holdout_features: Tensor | None = None  # N × D: the held-out source's test view (a backbone that never trains)
    teacher_views: int = 0  # K fixed views with the teacher's logits (0: teacher runs online)
    source_teacher: tuple[FixedViews, Tensor] | None = None  # the views and K × N × C logits
    target_teacher: tuple[FixedViews, Tensor] | None = None

    def scored_features(self, total_steps: int) -> CachedTestViews | None:
        """The cached test-view features of the target images and the held-out source, for a cell
        whose backbone never trains: its evaluations run the head on them instead of the backbone
        on every image again."""
        if self.target_features is None or self.feature_steps < total_steps:
            return None
        return CachedTestViews(self.target_features[0], self.holdout_features)  # view 0: the centre crop


@dataclass
class CachedTestViews:
    """A frozen backbone's test-view features (N×D) of what a cell scores: its target images and,
    where the source has a held-out split, those images."""

    target: Tensor
    holdout: Tensor | None


def prepare_frozen_outputs(
    setup: CellSetup,
    schedule: ParamSchedule,
    src_images: Tensor,
    tgt_images: Tensor,
    cache_dir: Path | None,
    teacher_model: str | None,
) -> FrozenOutputs:
    """Backbone features for the steps where the backbone is frozen, and a kd teacher's logits on
    fixed views, each computed once per (network, domain, views) and kept in the disk cache.

    Whether each is used follows from the configuration alone (never from the cache's state),
    so a cell's numbers do not depend on what happened to be cached. ``tgt_images`` are those of
    ``setup.data.served_target`` (the unlabelled images the target views come from).
    """
    cell, recipe, strategy, teacher = setup.cell, setup.recipe, setup.strategy, setup.teacher
    views = type(strategy).target_views
    out = FrozenOutputs()
    steps = frozen_backbone_steps(setup.model, schedule)
    if (
        type(strategy).accepts_features
        and bool(recipe.feature_cache)
        and steps > 0
        and "strong" not in views
        and (teacher is None or not type(strategy).teacher_in_steps)
    ):
        bank = FeatureBank(
            setup.model,
            setup.augmenter,
            ["center", "flip"] if recipe.hflip else ["center"],
            recipe.eval_batch_size,
            cache_dir,
            key=f"{cell.backbone}|{setup.weights_used}|{cell.weights}|{weights_digest(setup)}|"
            f"{recipe.image_size}{setup.augmenter.normalize.key()}",
        )
        out.feature_steps = steps
        if setup.data.source_train is not None:  # a source-free cell has no source images
            out.source_features = bank.features(src_images, domain_key(setup.data.source_train), setup.autocast)
        scored_from_cache = steps >= setup.total_steps and setup.data.served_target is setup.data.target
        if views or scored_from_cache:  # the target's test views also score a backbone that never trains
            out.target_features = bank.features(tgt_images, domain_key(setup.data.served_target), setup.autocast)
        holdout = setup.data.source_holdout
        if scored_from_cache and holdout is not None:
            bs = recipe.eval_batch_size
            test_view = FeatureBank(setup.model, setup.augmenter, ["center"], bs, cache_dir, bank.key)
            images = holdout.images.to(src_images.device)
            out.holdout_features = test_view.features(images, domain_key(holdout), setup.autocast)[0]
    if teacher is not None and strategy.teacher_views:
        # a teacher was loaded, so its weights file is set (setup.load_teacher refuses a cell without one)
        teacher_model = cast(str, teacher_model)
        out.teacher_views = strategy.teacher_views
        tbank = TeacherViewBank(
            teacher,
            setup.augmenter,
            out.teacher_views,
            recipe.eval_batch_size,
            cache_dir,
            key=f"teacher={checked_digest(Path(teacher_model))}{setup.augmenter.normalize.key()}",
        )
        if setup.data.source_train is not None:
            out.source_teacher = tbank.build(src_images, domain_key(setup.data.source_train), setup.autocast)
        if views:
            out.target_teacher = tbank.build(tgt_images, domain_key(setup.data.served_target), setup.autocast)
    return out


def weights_digest(setup: CellSetup) -> str:
    """The sha256 of the weights file the backbone loaded ('' for random or hub weights): a file
    replaced under the same source name must not serve the old file's cached features."""
    return str(dict(setup.backbone.weights).get("sha256", ""))


def frozen_backbone_steps(model: TransferModel, schedule: ParamSchedule) -> int:
    """How many steps pass, from the first, before any backbone parameter trains."""
    backbone = {id(p) for p in model.backbone.parameters()}
    starts = [schedule.start_step[id(g)] for g in schedule.groups if any(id(p) in backbone for p in g.params)]
    return min(starts, default=schedule.total_steps)
