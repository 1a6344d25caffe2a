"""LoRA through peft: which layers get adapters, how many parameters, the update formula, what trains, what is kept."""

from __future__ import annotations

import sys

import peft  # noqa: F401  (imported at collection: it imports transformers, seconds no test should be timed with)
import pytest
import torch
from conftest import train_few_steps  # tests/ is on sys.path (pytest rootdir conftest)
from torch import nn

from tlbench import SetupContext, TransferModel, UserError
from tlbench.testing import make_tiny_batch, make_tiny_model
from tlbench.testing.tiny import make_tiny_backbone
from tlbench_builtins.strategies.lora import Lora, listed_targets

CPU = torch.device("cpu")

#: test_efficientnet's layers that "auto" adapts at r = 8, by hand from its architecture:
#: (name, in channels, out channels, kernel size); left out: the depthwise blocks.3.0.conv_dw and
#: blocks.4.0.conv_dw, and blocks.3.0's squeeze-excitation convs (128 -> 8 -> 128: 8 is not above r)
TINY_EFFICIENTNET_TARGETS = [
    ("conv_stem", 3, 24, 3),
    ("blocks.0.0.conv", 24, 16, 3),
    ("blocks.1.0.conv_exp", 16, 64, 3),
    ("blocks.1.0.conv_pwl", 64, 24, 1),
    ("blocks.2.0.conv_exp", 24, 96, 3),
    ("blocks.2.0.conv_pwl", 96, 32, 1),
    ("blocks.3.0.conv_pw", 32, 128, 1),
    ("blocks.3.0.conv_pwl", 128, 48, 1),
    ("blocks.4.0.conv_pw", 48, 192, 1),
    ("blocks.4.0.se.conv_reduce", 192, 12, 1),
    ("blocks.4.0.se.conv_expand", 12, 192, 1),
    ("blocks.4.0.conv_pwl", 192, 64, 1),
    ("conv_head", 64, 256, 1),
]


def set_up(strategy: Lora, model: TransferModel) -> Lora:
    strategy.setup(model, SetupContext(model.num_classes, model.feature_dim, model.embed_dim, 10, CPU, 0))
    return strategy


def tiny_vit_model(seed: int = 0) -> TransferModel:
    """timm's test_vit (6 blocks of width 64, random weights) at 32 px: 4 patches."""
    import timm

    torch.manual_seed(seed)
    backbone = timm.create_model("test_vit", pretrained=False, num_classes=0, img_size=32)
    return TransferModel(backbone, 3, bottleneck_dim=16, backbone_name="test_vit")


def groups_of(strategy: Lora, model: TransferModel) -> dict[str, list[nn.Parameter]]:
    return {g.name: g.params for g in strategy.param_groups(model)}


@pytest.mark.parametrize("make", [make_tiny_model, tiny_vit_model], ids=["efficientnet", "vit"])
def test_the_adapted_model_starts_as_the_pretrained_one(make):
    adapted, plain = make(), make()
    set_up(Lora(), adapted)
    x = make_tiny_batch(()).source
    assert torch.equal(adapted.eval()(x), plain.eval()(x))  # B starts at zero: not a bit differs


def test_auto_adapts_the_ungrouped_convolutions_and_counts_r_times_in_k_k_plus_out_parameters_each():
    model = make_tiny_model()
    strategy = set_up(Lora(), model)
    assert strategy.adapted == [name for name, *_ in TINY_EFFICIENTNET_TARGETS]
    layer = model.backbone.get_submodule("blocks.0.0.conv")
    assert tuple(layer.lora_A["default"].weight.shape) == (8, 24, 3, 3)  # A: a 3x3 conv to r channels
    assert tuple(layer.lora_B["default"].weight.shape) == (16, 8, 1, 1)  # B: a 1x1 conv from them
    groups = groups_of(strategy, model)
    by_hand = sum(8 * (c_in * k * k + c_out) for _, c_in, c_out, k in TINY_EFFICIENTNET_TARGETS)
    assert by_hand == 20632
    assert sum(p.numel() for p in groups["lora"]) == by_hand
    # the head: bottleneck Linear(256, 16) + BatchNorm1d(16), classifier Linear(16, 3)
    assert sum(p.numel() for p in groups["head"]) == (256 * 16 + 16) + (16 + 16) + (16 * 3 + 3)


def test_attention_only_lora_on_a_vit_counts_r_times_in_plus_out_per_layer():
    model = tiny_vit_model()
    strategy = set_up(Lora(r=4, targets=["attn.qkv", "attn.proj"]), model)
    assert strategy.adapted == [f"blocks.{i}.attn.{m}" for i in range(6) for m in ("qkv", "proj")]
    # qkv: 64 -> 192, proj: 64 -> 64; six blocks
    assert sum(p.numel() for p in groups_of(strategy, model)["lora"]) == 6 * (4 * (64 + 192) + 4 * (64 + 64))


def test_a_target_entry_matches_like_peft_by_the_end_of_the_module_name():
    backbone = tiny_vit_model().backbone
    assert listed_targets(backbone, ["proj"])[0] == "patch_embed.proj"  # "proj" alone takes the patch embedding too
    assert len(listed_targets(backbone, ["proj"])) == 7


def test_a_targeted_linear_computes_w0_x_plus_alpha_over_r_times_b_a_x_and_saves_the_merged_weight():
    model = tiny_vit_model()
    set_up(Lora(r=4, alpha=6.0, targets=["attn.qkv"]), model)
    layer = model.backbone.get_submodule("blocks.0.attn.qkv")
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    with torch.no_grad():
        b.copy_(torch.randn(b.shape, generator=torch.Generator().manual_seed(1)))
    w0, bias = layer.base_layer.weight.detach(), layer.base_layer.bias.detach()
    delta = torch.zeros(192, 64)
    for k in range(4):  # B·A as the sum of its r = 4 outer products, scaled by alpha / r = 6 / 4
        delta += 1.5 * torch.outer(b[:, k].detach(), a[k].detach())
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(layer(x), x @ (w0 + delta).T + bias)
    saved = model.state_dict()
    torch.testing.assert_close(saved["backbone.blocks.0.attn.qkv.weight"], w0 + delta)
    assert not any("lora_" in k or "base_layer" in k for k in saved)


def test_after_training_only_the_adapters_and_the_head_have_changed():
    model = make_tiny_model()
    strategy = set_up(Lora(), model)
    lora_names = {n for n, _ in model.backbone.named_parameters() if ".lora_" in n}
    assert len(lora_names) == 2 * len(TINY_EFFICIENTNET_TARGETS)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    stats = {n: b.clone() for n, b in model.backbone.named_buffers()}
    train_few_steps(strategy, model)
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    head = {f"bottleneck.{n}" for n, _ in model.bottleneck.named_parameters()} | {"classifier.weight"}
    head.add("classifier.bias")
    assert changed == {f"backbone.{n}" for n in lora_names} | head  # base weights, BN gamma/beta: bit-identical
    assert all(torch.equal(stats[n], b) for n, b in model.backbone.named_buffers())  # BN statistics frozen


@pytest.mark.parametrize("make", [make_tiny_model, tiny_vit_model], ids=["efficientnet", "vit"])
def test_the_saved_model_loads_into_a_model_without_adapters_and_back_into_an_adapted_one(make):
    model = make()
    strategy = set_up(Lora(), model)
    train_few_steps(strategy, model, steps=2)
    x = make_tiny_batch((), seed=9).source
    expected = model.eval()(x)
    state = model.state_dict()

    plain = make()  # a kd teacher is built without adapters, then loads the saved weights strictly
    plain.load_state_dict(state)
    torch.testing.assert_close(plain.eval()(x), expected)

    again = make()
    set_up(Lora(), again)
    again.load_state_dict(state)
    torch.testing.assert_close(again.eval()(x), expected)


def test_backbone_stages_still_cover_every_backbone_parameter_once_with_each_adapter_in_its_layers_stage():
    backbone = make_tiny_backbone()
    declared = [[f"{c}.{p}" for p, _ in m.named_parameters()] for c, m in backbone.named_children()]
    declared = [names for names in declared if names]
    for stages_given in (None, declared):  # timm's group_matcher; a provider's own stage lists
        model = TransferModel(make_tiny_backbone(), 3, bottleneck_dim=16, stages=stages_given)
        set_up(Lora(), model)
        stages = model.backbone_stages()
        ids = [id(p) for stage in stages for p in stage]
        assert sorted(ids) == sorted(id(p) for p in model.backbone.parameters())
        head = model.backbone.get_submodule("conv_head")
        (last,) = [s for s in stages if any(p is head.base_layer.weight for p in s)]
        assert any(p is head.lora_A["default"].weight for p in last)


def test_named_targets_that_peft_cannot_adapt_or_that_name_nothing_are_refused():
    with pytest.raises(UserError, match=r"matches blocks.3.0.conv_dw \(Conv2d\); LoRA here adapts only nn.Linear"):
        set_up(Lora(targets=["conv_dw"]), make_tiny_model())
    with pytest.raises(UserError, match="lora: params.targets entry 'qkv' names no module of the backbone"):
        set_up(Lora(targets=["qkv"]), make_tiny_model())


def test_a_suites_list_of_targets_is_one_value_and_a_list_of_lists_sweeps():
    from tlbench.spec.sweep import param_points

    assert param_points(Lora, {"targets": ["attn.qkv", "attn.proj"]}) == [{"targets": ["attn.qkv", "attn.proj"]}]
    swept = param_points(Lora, {"targets": [["auto"], ["attn.qkv"]]})
    assert swept == [{"targets": ["auto"]}, {"targets": ["attn.qkv"]}]


def test_without_peft_the_strategy_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # import peft now raises ImportError
    with pytest.raises(UserError, match=r"install it with pip install 'tlbench\[peft\]' \(peft==0.22.0\)"):
        set_up(Lora(), make_tiny_model())


@pytest.mark.parametrize(
    "params, message",
    [
        ({"r": 0}, "lora: params.r must be a rank of at least 1, got 0"),
        ({"alpha": 0}, "lora: params.alpha must be a positive number, got 0"),
        ({"targets": []}, r"lora: params.targets must be \[auto\] or a list of module names, got \[\]"),
        ({"targets": ["auto", "qkv"]}, r"must be \[auto\] or a list of module names, got \['auto', 'qkv'\]"),
        ({"targets": "auto"}, "targets: expected a list, got 'auto'"),
        ({"dropout": 1.0}, r"lora: params.dropout must lie in \[0, 1\), got 1.0"),
        ({"lr_scale": -1.0}, "lora: params.lr_scale must be a positive number, got -1.0"),
    ],
)
def test_params_are_validated_with_one_line_messages(params, message):
    with pytest.raises(UserError, match=message):
        Lora.parse_params(params)
