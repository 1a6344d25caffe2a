"""The checkpoint subset: a fixed random part of a large target, the same at every point, labels unread."""

from __future__ import annotations

import types

import pytest
import torch

from tlbench.spec.recipe import Recipe
from tlbench.training.checkpoints import CheckpointEvaluator, checkpoint_subset
from tlbench.training.evaluation import Evaluation, ModelOutputs


def test_the_subset_is_fixed_sorted_and_depends_on_the_size_only():
    a = checkpoint_subset(9298, 1000)
    assert len(a) == 1000 and torch.equal(a, checkpoint_subset(9298, 1000)) and torch.equal(a, a.sort().values)
    assert len(set(a.tolist())) == 1000 and 0 <= int(a.min()) and int(a.max()) < 9298
    assert not torch.equal(a[:100], torch.arange(100))  # random, not the first images
    assert checkpoint_subset(795, 1000) is None and checkpoint_subset(9298, 0) is None


def _evaluator(n=12, cap=5):
    setup = types.SimpleNamespace(recipe=Recipe(eval_points_images=cap), total_steps=10)
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, 2, 2)
    labels = torch.arange(n) % 3
    return CheckpointEvaluator(setup, images, labels, points=2), labels


def test_every_checkpoint_reads_the_same_subset_and_the_last_is_cut_to_it():
    ev, labels = _evaluator()
    index = checkpoint_subset(12, 5)
    assert torch.equal(ev.target_images[:, 0, 0, 0].long(), index) and torch.equal(ev.target_labels, labels[index])
    assert len(ev.target_labels) == 5
    # the final evaluation reads every image; its logits predict class 0 everywhere
    logits = torch.zeros(12, 3)
    logits[:, 0] = 1.0
    final = Evaluation(
        target_acc=100 * float((labels == 0).float().mean()),
        eval_img_per_s=1.0,
        source_acc=None,
        target_outputs=ModelOutputs(logits, torch.randn(12, 4), 1.0),
    )
    cut = ev._on_subset(final)
    assert cut.target_outputs.logits.shape == (5, 3)
    assert torch.equal(cut.target_outputs.embedding, final.target_outputs.embedding[index])
    assert cut.target_acc == pytest.approx(100 * float((labels[index] == 0).float().mean()))


def test_a_recipe_at_its_defaults_reads_a_thousand_target_images():
    # the key is left out of the cell id at its default (Recipe.id_config), never out of the recipe
    assert "eval_points_images" not in Recipe().id_config()
    setup = types.SimpleNamespace(recipe=Recipe(), total_steps=10)
    images = torch.zeros(1500, 3, 2, 2, dtype=torch.uint8)
    ev = CheckpointEvaluator(setup, images, torch.zeros(1500, dtype=torch.int64), points=5)
    assert len(ev.target_images) == len(ev.target_labels) == 1000


def test_a_target_no_larger_than_the_cap_is_read_whole():
    ev, labels = _evaluator(n=4, cap=5)
    assert ev.subset is None and len(ev.target_images) == len(ev.target_labels) == 4
