"""The head's bottleneck: TLlib's one Linear-BN-ReLU by default, Ganin et al.'s fc 100-100 on request."""

from __future__ import annotations

import pytest
import torch
import yaml
from torch import nn

from tests.conftest import TINY_SUITE
from tlbench.errors import UserError
from tlbench.models.transfer import TransferModel, make_bottleneck
from tlbench.plugins.registry import get_registry
from tlbench.spec.loading import validate
from tlbench.spec.plan import plan
from tlbench.spec.recipe import Recipe
from tlbench.training.setup import build_model


def _cells(**recipe):
    data = yaml.safe_load(TINY_SUITE)
    data["recipe"].update(recipe)
    return plan(validate(data, origin="tiny.yaml"), get_registry(), check_data=False).cells


def test_the_default_bottleneck_keeps_its_parameter_names_and_every_cell_id():
    head = make_bottleneck(12, 8)
    assert [type(m) for m in head] == [nn.Linear, nn.BatchNorm1d, nn.ReLU]
    assert list(head.state_dict()) == [
        "0.weight",
        "0.bias",
        "1.weight",
        "1.bias",
        "1.running_mean",
        "1.running_var",
        "1.num_batches_tracked",
    ]
    assert [c.id for c in _cells(bottleneck_layers=1, bottleneck_norm="batch")] == [c.id for c in _cells()]
    assert "bottleneck_norm" not in _cells()[0].recipe.id_config()
    assert {c.id for c in _cells(bottleneck_norm="none")}.isdisjoint(c.id for c in _cells())


def test_ganins_label_predictor_is_two_plain_layers_of_100():
    model = TransferModel(
        nn.Flatten(), 10, bottleneck_dim=100, bottleneck_layers=2, bottleneck_norm="none", feature_dim=768
    )
    assert [type(m) for m in model.bottleneck] == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU]
    assert [m.out_features for m in model.bottleneck if isinstance(m, nn.Linear)] == [100, 100]
    out = model.forward_all(torch.randn(5, 768))
    assert out.embedding.shape == (5, 100) and out.logits.shape == (5, 10)
    # no statistics of the training batches: a sample's output does not depend on its batch
    model.train()
    alone = model.forward_all(torch.ones(1, 768)).logits
    with_others = model.forward_all(torch.cat([torch.ones(1, 768), torch.randn(4, 768)])).logits[:1]
    torch.testing.assert_close(alone, with_others)


def test_the_recipe_builds_the_head_it_names():
    recipe = Recipe(bottleneck_dim=16, bottleneck_layers=3, bottleneck_norm="none", backbone_lr_scale=1.0)
    model, _, _ = build_model("dann_mnist", "random", 10, recipe, get_registry())
    assert sum(isinstance(m, nn.Linear) for m in model.bottleneck) == 3
    assert not any(isinstance(m, nn.BatchNorm1d) for m in model.bottleneck)
    assert model.forward(torch.randn(2, 3, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize(
    "recipe, message",
    [
        ({"bottleneck_norm": "layer"}, "recipe.bottleneck_norm"),
        ({"bottleneck_layers": 0}, "recipe.bottleneck_layers"),
    ],
)
def test_a_bad_bottleneck_is_one_line_naming_the_key(recipe, message):
    with pytest.raises(UserError, match=message):
        _cells(**recipe)
