"""In-place activations that copy their input under autograd are turned out of place: no copy, same numbers."""

from __future__ import annotations

import copy

import pytest
import timm
import timm.layers.activations as timm_act
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from tlbench.models.transfer import TransferModel, activations_out_of_place


def _clones_in_forward(model: nn.Module, x: torch.Tensor) -> int:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        model(x)
    return sum(e.name == "aten::clone" for e in prof.events())


@pytest.mark.parametrize(
    "cls",
    [
        nn.ReLU6,
        nn.Hardtanh,
        nn.SiLU,
        nn.Hardswish,
        nn.Mish,
        timm_act.Swish,
        timm_act.HardSwish,
        timm_act.HardSigmoid,
        timm_act.HardMish,
    ],
)
def test_each_kind_copies_in_place_and_not_out_of_place(cls):
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    net = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), cls(inplace=True))
    assert _clones_in_forward(net, x) == 1  # autograd saves the input the in-place op overwrites
    assert activations_out_of_place(net) == 1
    assert _clones_in_forward(net, x) == 0 and net[1].inplace is False


def test_activations_whose_backward_reads_the_output_stay_in_place():
    net = nn.Sequential(
        nn.Conv2d(3, 3, 1),
        nn.ReLU(inplace=True),
        nn.LeakyReLU(inplace=True),
        nn.ELU(inplace=True),
        timm_act.Sigmoid(inplace=True),
        timm_act.Tanh(inplace=True),
    )
    assert activations_out_of_place(net) == 0
    assert all(m.inplace for m in net[1:])


def test_transfer_model_trains_lite0_without_copies_and_with_the_same_gradients():
    torch.manual_seed(0)
    backbone = timm.create_model("tf_efficientnet_lite0", num_classes=0)
    in_place = copy.deepcopy(backbone)  # timm's own: ReLU6(inplace=True)
    model = TransferModel(backbone, 5, backbone_name="tf_efficientnet_lite0")
    assert not any(isinstance(m, nn.ReLU6) and m.inplace for m in model.modules())
    x = torch.randn(2, 3, 64, 64)
    assert _clones_in_forward(in_place.train(), x) > 0
    assert _clones_in_forward(model.backbone.train(), x) == 0
    in_place(x).square().sum().backward()
    model.backbone(x).square().sum().backward()
    for (name, a), b in zip(in_place.named_parameters(), model.backbone.parameters()):
        assert torch.equal(a.grad, b.grad), name  # bit for bit: the same clamp, the same backward
