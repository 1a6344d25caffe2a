"""How the engine draws source and target batches: shuffled epochs, or class-balanced source draws."""

from __future__ import annotations

import pytest
import torch

from tlbench.errors import UserError
from tlbench.spec.recipe import Recipe
from tlbench.training.batches import ClassBalancedSampler, Sampler, source_sampler


def test_shuffled_epochs_visit_every_index_once_per_epoch():
    g = torch.Generator().manual_seed(0)
    sampler = Sampler(10, 4, g, torch.device("cpu"))
    drawn = torch.cat([sampler.next() for _ in range(5)])  # 20 indices = two epochs
    assert sorted(drawn[:10].tolist()) == list(range(10)) and sorted(drawn[10:].tolist()) == list(range(10))


def test_class_balanced_draws_give_every_class_the_same_share_whatever_its_size():
    labels = torch.tensor([0] * 900 + [1] * 90 + [2] * 10)  # 90% / 9% / 1% of the source
    sampler = ClassBalancedSampler(labels, 500, torch.Generator().manual_seed(0))
    drawn = torch.cat([sampler.next() for _ in range(60)])  # 30,000 draws
    share = torch.bincount(labels[drawn], minlength=3).float() / len(drawn)
    torch.testing.assert_close(share, torch.full((3,), 1 / 3), atol=0.02, rtol=0)
    assert set(drawn[labels[drawn] == 2].tolist()) == set(range(990, 1000))  # the rare class: all of its images


def test_the_recipe_chooses_the_source_sampler():
    labels = torch.tensor([0, 0, 1])
    g = torch.Generator().manual_seed(0)
    base = Recipe()
    assert base.source_sampling == "shuffle"
    assert isinstance(source_sampler(labels, base, g, torch.device("cpu")), Sampler)
    balanced = Recipe(source_sampling="class_balanced")
    assert isinstance(source_sampler(labels, balanced, g, torch.device("cpu")), ClassBalancedSampler)


def test_an_unknown_source_sampling_is_a_suite_error_naming_the_choices(tmp_path):
    from tlbench.spec.loading import load_suite

    path = tmp_path / "s.yaml"
    path.write_text(
        "name: s\ndataset: sklearn_digits\npairs: [digits->digits+invert]\nbackbones: [test_efficientnet]\n"
        "strategies: [source_only]\nrecipe: {source_sampling: balanced}\n"
    )
    with pytest.raises(UserError, match="source_sampling.*(shuffle|class_balanced)"):
        load_suite(path)
