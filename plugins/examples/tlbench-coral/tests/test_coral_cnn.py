"""The coral_cnn backbone honours tlbench's backbone contract and trains from scratch only."""

from __future__ import annotations

import pytest

from tlbench.testing import check_backbone
from tlbench_coral.coral_cnn import CoralNets


def test_provider_conforms():
    check_backbone(CoralNets)


@pytest.mark.parametrize("size", [12, 32])
def test_any_image_size_gives_the_declared_features(size):
    import torch

    made = CoralNets().create("coral_cnn")
    assert made.network(torch.zeros(2, 3, size, size)).shape == (2, made.feature_dim)
    assert [len(s) for s in made.stages] == [3, 3]  # conv weight, BN weight and bias per stage


def test_it_has_no_pretrained_weights():
    assert CoralNets().names(pretrained=True) == []
    assert CoralNets().has_pretrained("coral_cnn") is False
