"""What each step is served: the batch source, the engine's second phase.

Images live on the training device as uint8 and are augmented there in whole batches. For each
step the :class:`BatchSource` draws indices (shuffled epochs, or class-balanced draws of the
labelled source), then serves each side in one of three forms: an augmented image view, a fixed
view with a frozen teacher's cached logits on it, or, while the backbone is frozen, a cached
feature vector of a frozen view. Target labels never enter a batch.

One generator (seeded by the cell's seed) feeds every random draw, in a fixed order per step:
source indices, the source view, target indices, the target view, the strong target view.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tlbench.errors import UserError
from tlbench.spec.recipe import Recipe
from tlbench.training.augment import Augmenter, FixedViews
from tlbench.training.frozen import FrozenOutputs
from tlbench.training.strategy import Batch


class Sampler:
    """Endless shuffled epochs over a domain's indices, on the training device."""

    def __init__(self, n: int, batch_size: int, g: torch.Generator, device: torch.device):
        self.n, self.bs, self.g, self.device = n, batch_size, g, device
        self._perm = torch.empty(0, dtype=torch.long, device=device)
        self._pos = 0

    def next(self) -> Tensor:
        """The next batch of indices."""
        parts, need = [], self.bs
        while need > 0:
            if self._pos >= len(self._perm):
                self._perm = torch.randperm(self.n, generator=self.g, device=self.g.device).to(self.device)
                self._pos = 0
            take = self._perm[self._pos : self._pos + need]
            self._pos += len(take)
            need -= len(take)
            parts.append(take)
        return parts[0] if len(parts) == 1 else torch.cat(parts)


class ClassBalancedSampler:
    """Indices drawn with replacement, each class equally likely (weights 1 / class count).

    For a class-imbalanced labelled source: the classes' share in training batches then no longer
    follows the source's own label distribution, which the target need not share (PyTorch's
    ``WeightedRandomSampler`` recipe, drawn on the training device).
    """

    def __init__(self, labels: Tensor, batch_size: int, g: torch.Generator):
        counts = torch.bincount(labels)
        self.weights = (1.0 / counts.clamp_min(1).float())[labels]
        self.bs, self.g = batch_size, g

    def next(self) -> Tensor:
        """The next batch of indices."""
        return torch.multinomial(self.weights, self.bs, replacement=True, generator=self.g)


def source_sampler(
    labels: Tensor, recipe: Recipe, g: torch.Generator, device: torch.device
) -> Sampler | ClassBalancedSampler:
    """The labelled source's sampler the recipe asks for."""
    if recipe.source_sampling == "class_balanced":
        return ClassBalancedSampler(labels, int(recipe.batch_size), g)
    return Sampler(len(labels), int(recipe.batch_size), g, device)


class DomainImages:
    """One side of a cell (labelled source or unlabelled target) as the steps see it: uint8 images on
    the device, and optionally the cached frozen outputs that replace them."""

    def __init__(self, images: Tensor, features: Tensor | None, fixed: tuple[FixedViews, Tensor] | None):
        self.images, self.features, self.fixed = images, features, fixed

    def view(self, idx: Tensor, augmenter: Augmenter, g: torch.Generator) -> tuple[Tensor, Tensor | None]:
        """The step's input for ``images[idx]`` and, with fixed teacher views, the teacher's logits on it."""
        if self.features is not None:  # the cached centre view of each image, or its mirror image
            flips = augmenter.flip_draw(len(idx), g)  # the draw a weak view of the centre crop makes
            choice = flips.long() if flips is not None else torch.zeros(len(idx), dtype=torch.long, device=g.device)
            return self.features[choice, idx], None
        if self.fixed is None:
            return augmenter.weak(self.images[idx], g), None
        views, logits = self.fixed
        v = torch.randint(0, views.count, (len(idx),), generator=g, device=g.device)
        return augmenter.view(self.images[idx], views.boxes[v, idx], views.flips[v, idx]), logits[v, idx]


class BatchSource:
    """Serves step ``s`` its :class:`tlbench.Batch`: what the strategy's ``target_views`` ask for, from
    images, fixed teacher views or cached features (the latter only for the first ``feature_steps``)."""

    def __init__(
        self,
        source: DomainImages,
        source_labels: Tensor,
        target: DomainImages,
        *,
        target_views: tuple[str, ...],
        augmenter: Augmenter,
        recipe: Recipe,
        g: torch.Generator,
        feature_steps: int,
    ):
        self.source, self.source_labels, self.target = source, source_labels, target
        self.views, self.augmenter, self.g = target_views, augmenter, g
        self.feature_steps = feature_steps
        device = source.images.device
        self.batch_size = int(recipe.batch_size)
        # None in a source-free cell: no source image exists to sample
        self.source_sampler = source_sampler(source_labels, recipe, g, device) if len(source_labels) else None
        self.target_sampler = Sampler(len(target.images), self.batch_size, g, device) if target_views else None
        if self.source_sampler is None and not target_views:
            raise UserError("a cell without source images trains on target views: its strategy declares none")

    @classmethod
    def build(
        cls,
        source_images: Tensor,
        source_labels: Tensor,
        target_images: Tensor,
        frozen: FrozenOutputs,
        *,
        target_views: tuple[str, ...],
        augmenter: Augmenter,
        recipe: Recipe,
        g: torch.Generator,
    ) -> BatchSource:
        return cls(
            DomainImages(source_images, frozen.source_features, frozen.source_teacher),
            source_labels,
            DomainImages(target_images, frozen.target_features, frozen.target_teacher),
            target_views=target_views,
            augmenter=augmenter,
            recipe=recipe,
            g=g,
            feature_steps=frozen.feature_steps,
        )

    def batch(self, step: int) -> Batch:
        """The batch of ``step`` (called once per step, in order)."""
        if step == self.feature_steps and (self.source.features is not None or self.target.features is not None):
            # the backbone trains from here on: free the features, serve images
            self.source.features = self.target.features = None
        if self.source_sampler is not None:
            si = self.source_sampler.next()
            x, t = self.source.view(si, self.augmenter, self.g)
            batch = Batch(source=x, source_labels=self.source_labels[si], source_teacher=t)
        else:  # source-free: the source side stays empty (0 rows, shaped like the target view below)
            batch = Batch(source=self.source.images, source_labels=self.source_labels)
        if self.views:
            assert self.target_sampler is not None  # made in __init__ whenever there are target views
            ti = self.target_sampler.next()
            batch.target_index = ti
            batch.target, batch.target_teacher = self.target.view(ti, self.augmenter, self.g)
            if "strong" in self.views:
                batch.target_strong = self.augmenter.strong(self.target.images[ti], self.g)
            if self.source_sampler is None:
                batch.source = batch.target[:0]
        return batch

    @property
    def images_per_step(self) -> int:
        """Images (or feature vectors) one step trains on: the source batch plus each target view."""
        return self.batch_size * ((self.source_sampler is not None) + len(self.views))
