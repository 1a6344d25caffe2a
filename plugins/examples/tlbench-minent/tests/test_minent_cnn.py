"""The minent_cnn backbone honours tlbench's backbone contract and trains from scratch only."""

from __future__ import annotations

import pytest

from tlbench.testing import check_backbone
from tlbench_minent.minent_cnn import MinentNets


def test_provider_conforms():
    check_backbone(MinentNets)


@pytest.mark.parametrize("size", [12, 32])
def test_any_image_size_gives_the_declared_features(size):
    import torch

    made = MinentNets().create("minent_cnn")
    assert made.network(torch.zeros(2, 3, size, size)).shape == (2, made.feature_dim)
    assert [len(s) for s in made.stages] == [3, 3]  # conv weight, BN weight and bias per stage


def test_it_has_no_pretrained_weights():
    assert MinentNets().names(pretrained=True) == []
    assert MinentNets().has_pretrained("minent_cnn") is False
