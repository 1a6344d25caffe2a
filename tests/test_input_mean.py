"""A backbone's own recipe keys, and ``recipe.input_mean: domains`` (the mean pixel of both domains)."""

from __future__ import annotations

import pytest
import torch
import yaml

from tests.conftest import TINY_SUITE
from tlbench.data.domains import Domain
from tlbench.errors import UserError
from tlbench.models.backbones import Backbone
from tlbench.plugins.registry import get_registry
from tlbench.spec.loading import validate
from tlbench.spec.plan import plan
from tlbench.spec.recipe import Recipe
from tlbench.training.augment import Normalizer
from tlbench.training.setup import CellData, input_mean


def _cells(backbones=None, **recipe):
    data = yaml.safe_load(TINY_SUITE)
    data["recipe"].update(recipe)
    if backbones is not None:
        data["backbones"] = backbones
    return plan(validate(data, origin="tiny.yaml"), get_registry(), check_data=False).cells


def test_input_mean_backbone_keeps_every_cell_id():
    assert [c.id for c in _cells(input_mean="backbone")] == [c.id for c in _cells()]
    assert "input_mean" not in _cells()[0].recipe.id_config()
    assert {c.id for c in _cells(input_mean="domains")}.isdisjoint(c.id for c in _cells())


def test_a_backbone_recipe_reaches_only_that_backbones_cells():
    plain = {"name": "test_efficientnet", "weights": "random"}
    own = {"name": "test_resnet", "weights": "random", "recipe": {"input_mean": "domains"}}
    cells = _cells([plain, own])
    by_backbone = {b: [c for c in cells if c.backbone == b] for b in ("test_efficientnet", "test_resnet")}
    assert [c.id for c in by_backbone["test_efficientnet"]] == [c.id for c in _cells()]
    assert {c.recipe.input_mean for c in by_backbone["test_resnet"]} == {"domains"}


@pytest.mark.parametrize(
    "own, message",
    [
        ({"input_means": "domains"}, "backbones.test_efficientnet.recipe: unknown key"),
        ({"input_mean": "both"}, "backbones.test_efficientnet.recipe.input_mean"),
        ({"lr": 0.1}, "lr is swept in the suite's recipe"),
    ],
)
def test_a_bad_backbone_recipe_is_one_line_naming_it(own, message):
    with pytest.raises(UserError, match=message):
        _cells([{"name": "test_efficientnet", "weights": "random", "recipe": own}], lr=[0.01, 0.03])


def _domain(name, pixel, n, labels=0):
    images = torch.zeros(n, 3, 4, 4, dtype=torch.uint8)
    for ch, value in enumerate(pixel):
        images[:, ch] = value
    return Domain(name, images, torch.full((n,), labels, dtype=torch.int64), ["a", "b"])


def test_domains_mean_is_the_mean_pixel_of_source_training_and_served_target_images():
    data = CellData(
        source_train=_domain("s", (0, 51, 255), 3),
        source_holdout=_domain("h", (255, 255, 255), 5),
        target=_domain("t", (102, 51, 0), 1),
        num_classes=2,
    )
    colour, grey = (
        Backbone(network=torch.nn.Identity(), feature_dim=3),
        Backbone(network=torch.nn.Identity(), feature_dim=3, in_chans=1, mean=(0.5,), std=(0.5,)),
    )
    # three source images and one target image; the held-out source is not part of it
    expected = ((3 * 0 + 102) / 4 / 255, (3 * 51 + 51) / 4 / 255, (3 * 255 + 0) / 4 / 255)
    assert input_mean(Recipe(input_mean="domains"), data, colour) == pytest.approx(expected)
    assert input_mean(Recipe(input_mean="domains"), data, grey) == pytest.approx((sum(expected) / 3,))
    assert input_mean(Recipe(input_mean="backbone"), data, colour) is None  # the backbone's own constants
    assert input_mean(Recipe(), data, grey) is None


def test_under_finetune_the_mean_reads_the_unlabelled_images_not_the_scored_ones():
    data = CellData(
        source_train=_domain("s", (0, 0, 0), 1),
        source_holdout=None,
        target=_domain("test", (255, 255, 255), 9),
        num_classes=2,
        unlabelled=_domain("pool", (100, 100, 100), 1),
    )
    colour = Backbone(network=torch.nn.Identity(), feature_dim=3)
    assert input_mean(Recipe(input_mean="domains"), data, colour) == pytest.approx((50 / 255,) * 3)


def test_a_normalisation_of_its_own_enters_cache_keys_and_the_backbones_does_not():
    own = Normalizer((0.2, 0.3, 0.4), (0.5, 0.5, 0.5), "cpu", from_backbone=False)
    assert Normalizer((0.5,) * 3, (0.5,) * 3, "cpu").key() == ""
    assert own.key() != "" and own.key() != Normalizer((0.2, 0.3, 0.5), (0.5,) * 3, "cpu", from_backbone=False).key()
    x = torch.full((1, 3, 2, 2), 51.0)
    assert own(x)[0, :, 0, 0].tolist() == pytest.approx([0.0, -0.2, -0.4])
