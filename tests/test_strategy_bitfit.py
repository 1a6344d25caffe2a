"""BitFit: only the backbone's bias terms (and the head) train; every other backbone parameter and statistic stays."""

from __future__ import annotations

import pytest
import torch
from conftest import train_few_steps  # tests/ is on sys.path (pytest rootdir conftest)
from torch import nn

from tlbench import SetupContext, StepContext, TransferModel, UserError
from tlbench.testing import make_tiny_batch, make_tiny_model
from tlbench_builtins.strategies.bitfit import BitFit

CPU = torch.device("cpu")


class HandNet(nn.Module):
    """A backbone whose bias terms are counted by hand: a bias-free conv followed by BatchNorm (beta: 4),
    a conv with a bias (5), LayerNorm (bias 5) and a linear layer (bias 6)."""

    num_features = 6

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 5, 1)
        self.ln = nn.LayerNorm(5)
        self.fc = nn.Linear(5, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(torch.relu(self.bn1(self.conv1(x))))
        return self.fc(self.ln(x.mean(dim=(2, 3))))


def set_up(strategy: BitFit, model: TransferModel) -> BitFit:
    strategy.setup(model, SetupContext(model.num_classes, model.feature_dim, model.embed_dim, 10, CPU, 0))
    return strategy


def tiny_vit_model() -> TransferModel:
    import timm

    torch.manual_seed(0)
    backbone = timm.create_model("test_vit", pretrained=False, num_classes=0, img_size=32)
    return TransferModel(backbone, 3, bottleneck_dim=16, backbone_name="test_vit")


def trained_names(strategy: BitFit, model: TransferModel, group: str = "bias") -> list[str]:
    names = {id(p): n for n, p in model.backbone.named_parameters()}
    (found,) = [g for g in strategy.param_groups(model) if g.name == group]
    return [names[id(p)] for p in found.params]


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_trains_the_bias_terms_counted_by_hand_and_the_head():
    model = TransferModel(HandNet(), 3, bottleneck_dim=8)
    strategy = set_up(BitFit(), model)
    assert trained_names(strategy, model) == ["bn1.bias", "conv2.bias", "ln.bias", "fc.bias"]
    groups = {g.name: g for g in strategy.param_groups(model)}
    assert sum(p.numel() for p in groups["bias"].params) == 4 + 5 + 5 + 6
    # the head: bottleneck Linear(6, 8) + BatchNorm1d(8), classifier Linear(8, 3)
    assert sum(p.numel() for p in groups["head"].params) == (6 * 8 + 8) + (8 + 8) + (8 * 3 + 3)
    assert groups["bias"].lr_scale == 1.0 and groups["head"].lr_scale == 1.0


def test_norm_bias_false_leaves_normalisation_shifts_out():
    model = TransferModel(HandNet(), 3, bottleneck_dim=8)
    assert trained_names(set_up(BitFit(norm_bias=False), model), model) == ["conv2.bias", "fc.bias"]

    efficientnet = make_tiny_model()  # its convs are bias-free but for the squeeze-excitation ones
    assert trained_names(set_up(BitFit(norm_bias=False), efficientnet), efficientnet) == [
        "blocks.3.0.se.conv_reduce.bias",
        "blocks.3.0.se.conv_expand.bias",
        "blocks.4.0.se.conv_reduce.bias",
        "blocks.4.0.se.conv_expand.bias",
    ]


def test_a_backbone_without_bias_terms_is_refused_with_what_to_do():
    backbone = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    model = TransferModel(backbone, 3, bottleneck_dim=8, feature_dim=4, backbone_name="plain")
    with pytest.raises(UserError, match="'plain' has no bias terms outside its norm layers; set params.norm_bias"):
        set_up(BitFit(norm_bias=False), model).param_groups(model)


@pytest.mark.parametrize("make", [make_tiny_model, tiny_vit_model], ids=["efficientnet", "vit"])
def test_exactly_the_bias_parameters_change_and_everything_else_in_the_backbone_stays_bit_identical(make):
    model = make()
    strategy = set_up(BitFit(), model)
    by_name = [n for n, _ in model.backbone.named_parameters() if n.split(".")[-1] == "bias"]
    assert trained_names(strategy, model) == by_name  # every bias (LayerNorm's, BatchNorm's beta too), only them
    before = snapshot(model.backbone)
    head_before = snapshot(model.classifier)
    train_few_steps(strategy, model)
    after = model.backbone.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == set(by_name)  # weights, BatchNorm's gamma and running statistics: bit-identical
    assert not torch.equal(head_before["weight"], model.classifier.weight)


def test_norm_stats_update_lets_the_backbone_batchnorm_statistics_follow_the_batches():
    model = make_tiny_model()
    strategy = set_up(BitFit(norm_stats="update"), model)
    before = snapshot(model.backbone)
    train_few_steps(strategy, model, steps=1)
    after = model.backbone.state_dict()
    assert not torch.equal(before["bn1.running_mean"], after["bn1.running_mean"])
    assert torch.equal(before["bn1.weight"], after["bn1.weight"])


def test_frozen_statistics_stay_frozen_even_when_the_engine_put_the_batchnorm_in_training_mode():
    model = make_tiny_model()
    strategy = set_up(BitFit(), model)
    model.train()  # what the engine leaves a BatchNorm whose beta trains in
    ctx = StepContext(step=0, total_steps=1, model=model, device=CPU, num_classes=model.num_classes)
    strategy.training_step(make_tiny_batch(()), ctx)
    assert not model.backbone.bn1.training
    assert model.bottleneck[1].training  # the head's own BatchNorm is not the backbone's: it keeps training mode


@pytest.mark.parametrize(
    "params, message",
    [
        ({"norm_stats": "batch"}, "bitfit: params.norm_stats must be one of frozen, update, got 'batch'"),
        ({"lr_scale": 0.0}, "bitfit: params.lr_scale must be a positive number, got 0.0"),
        ({"label_smoothing": 1.0}, r"bitfit: params.label_smoothing must lie in \[0, 1\), got 1.0"),
    ],
)
def test_params_are_validated_with_one_line_messages(params, message):
    with pytest.raises(UserError, match=message):
        BitFit.parse_params(params)
