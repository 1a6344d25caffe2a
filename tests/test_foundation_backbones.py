"""Foundation backbones through timm (issue 36): DINOv2 and CLIP image towers at a suite's image size,
with their own normalisation, a ViT's blocks as the stages of unfreeze/dlr/top-K, and the weight rule
(a hub file or a local file loads as it is; offline without one is one line, never random weights).

Every network here is randomly initialised (this machine has no network); a ViT at 28 to 32 px has
4 to 9 patch tokens, so a forward costs milliseconds."""

from __future__ import annotations

import pytest
import timm
import torch

from tlbench import UserError, WeightsUnavailableError
from tlbench.models.transfer import TransferModel
from tlbench.models.weights import load_backbone
from tlbench.plugins.registry import Registry
from tlbench.testing import apply_engine_trainability, check_backbone
from tlbench_builtins.backbones import timm_models
from tlbench_builtins.backbones.timm_models import ANY_IMAGE_SIZE, TimmModels
from tlbench_builtins.strategies.dlr import DiscriminativeLR
from tlbench_builtins.strategies.unfreeze import Unfreeze
from tlbench_builtins.weights import efficientnet_lite, local_file, timm_hub

DINO_S = "vit_small_patch14_dinov2.lvd142m"
DINO_B = "vit_base_patch14_dinov2.lvd142m"
CLIP_OPENAI = "vit_base_patch16_clip_224.openai"
CLIP_LAION = "vit_base_patch16_clip_224.laion2b"
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry(
        entry_points=False,
        plugins={
            "local_file": local_file,
            "efficientnet_lite": efficientnet_lite,
            "timm_hub": timm_hub,
            "timm_models": timm_models,
        },
    )


@pytest.fixture(scope="module")
def dino_s(registry):
    """ViT-S/14 DINOv2, random weights, created once for the module (about half a second)."""
    torch.manual_seed(0)
    made, _ = load_backbone(DINO_S, "random", registry=registry)
    return made


def _images(size: int, n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(size))


def _stage_names(made) -> list[list[str]]:
    """``model.backbone_stages()`` as parameter names (what unfreeze, dlr and top-K group by)."""
    model = TransferModel(made.network, 3, bottleneck_dim=8, feature_dim=made.feature_dim, stages=made.stages)
    names = {id(p): n for n, p in made.network.named_parameters()}
    return [[names[id(p)] for p in stage] for stage in model.backbone_stages()]


# -- creation at the suite's image size ------------------------------------------------------------------
@pytest.mark.parametrize("size", [28, 32, 224])  # 2x2 tokens; 32 px padded to 42 (3x3); DINOv2's usual 224
def test_dinov2_runs_at_the_suites_image_size_not_only_at_518(dino_s, size):
    assert dino_s.feature_dim == 384
    with torch.no_grad():
        features = dino_s.network.eval()(_images(size))
    assert features.shape == (2, 384) and torch.isfinite(features).all()


def test_clip_runs_off_its_native_224(registry):
    made, _ = load_backbone(CLIP_OPENAI, "random", registry=registry)
    assert made.feature_dim == 768  # the image tower before CLIP's 768->512 projection (timm's head, removed)
    with torch.no_grad():
        assert made.network.eval()(_images(32)).shape == (2, 768)


def test_any_size_is_the_static_model_bit_for_bit_at_its_native_size():
    """At the pretrained grid nothing is resampled: a ViT already used at its own size gives the
    features it gave before it accepted any size."""
    small = {"img_size": 32, "depth": 2, "embed_dim": 64, "num_heads": 2, "num_classes": 0}
    torch.manual_seed(0)
    fixed = timm.create_model("vit_base_patch16_clip_224", **small).eval()
    any_size = timm.create_model("vit_base_patch16_clip_224", **small, **ANY_IMAGE_SIZE).eval()
    any_size.load_state_dict(fixed.state_dict())
    with torch.no_grad():
        assert torch.equal(fixed(_images(32)), any_size(_images(32)))


def test_the_pooled_feature_is_timms_cls_token_after_the_final_norm(dino_s):
    """timm's default, kept on purpose: DINOv2's own linear probe concatenates the CLS token with the
    mean patch token; the documented choice here is timm's ``global_pool='token'``."""
    network = dino_s.network.eval()
    with torch.no_grad():
        tokens = network.forward_features(_images(28))  # final norm applied
        assert torch.equal(network(_images(28)), tokens[:, 0])
    assert network.global_pool == "token"


def test_other_timm_models_are_created_as_before(registry):
    made, _ = load_backbone("resnet18", "random", registry=registry)
    assert type(made.network).__name__ == "ResNet"


def test_an_unknown_pretrained_tag_is_one_line_naming_the_known_ones(registry):
    with pytest.raises(UserError, match=r"no pretrained tag 'lvd' for vit_small_patch14_dinov2 \(its tags: lvd142m\)"):
        load_backbone("vit_small_patch14_dinov2.lvd", "random", registry=registry)


def test_the_conformance_kit_accepts_dinov2():
    check_backbone(TimmModels, [DINO_S])


# -- normalisation ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, expected",
    [
        (DINO_S, IMAGENET),
        (DINO_B, IMAGENET),
        (CLIP_OPENAI, (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)),
        (CLIP_LAION, (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)),
        ("vit_base_patch16_clip_224", (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)),  # the default tag's (openai)
    ],
)
def test_each_backbone_is_normalised_as_its_pretrained_tag_says_even_with_random_weights(name, expected, monkeypatch):
    monkeypatch.setattr(timm_models, "create_any_size", lambda n: _tiny_vit(n))  # the constants, not the size
    made = TimmModels().create(name)
    assert (made.mean, made.std) == expected


def _tiny_vit(name: str):
    """``name``'s architecture and pretrained config at a few thousand parameters."""
    return timm.create_model(name, num_classes=0, img_size=28, depth=1, embed_dim=32, num_heads=2)


# -- stages: unfreeze, dlr, top-K ----------------------------------------------------------------------
def test_a_vits_stages_are_the_embedding_then_each_block_with_the_final_norm_in_the_last(dino_s):
    stages = _stage_names(dino_s)
    assert len(stages) == 13  # embedding + 12 blocks
    assert sorted(stages[0]) == ["cls_token", "patch_embed.proj.bias", "patch_embed.proj.weight", "pos_embed"]
    for i, stage in enumerate(stages[1:]):
        assert {n.split(".")[1] for n in stage if n.startswith("blocks.")} == {str(i)}
    assert [n for n in stages[-1] if not n.startswith("blocks.")] == ["norm.weight", "norm.bias"]
    flat = [n for stage in stages for n in stage]
    assert sorted(flat) == sorted(n for n, _ in dino_s.network.named_parameters())  # each exactly once


def test_clips_pre_norm_is_part_of_the_embedding_stage(monkeypatch):
    monkeypatch.setattr(timm_models, "create_any_size", lambda n: _tiny_vit(n))
    stages = _stage_names(TimmModels().create(CLIP_OPENAI))
    assert sorted(stages[0]) == [
        "cls_token",
        "norm_pre.bias",
        "norm_pre.weight",
        "patch_embed.proj.weight",
        "pos_embed",
    ]
    assert stages[-1][-2:] == ["norm.weight", "norm.bias"]


def test_top_two_stages_are_the_last_two_blocks_with_the_final_norm(dino_s):
    top2 = _stage_names(dino_s)[-2:]  # what recipe.trainable: top2 keeps
    assert {n.split(".")[1] for n in top2[0]} == {"10"}
    assert {n.split(".")[1] for n in top2[1] if n.startswith("blocks.")} == {"11"}
    assert "norm.weight" in top2[1]


def _dino_model(dino_s) -> TransferModel:
    return TransferModel(dino_s.network, 3, bottleneck_dim=8, feature_dim=dino_s.feature_dim, stages=dino_s.stages)


def test_unfreeze_joins_a_vits_last_blocks_from_the_output_side(dino_s):
    model = _dino_model(dino_s)
    blocks = model.backbone.blocks
    groups = Unfreeze(Unfreeze.parse_params({"stages": 2, "at": 0.2, "until": 0.6})).param_groups(model)
    assert [(g.name, g.start) for g in groups] == [("head", 0.0), ("backbone.stage12", 0.2), ("backbone.stage11", 0.6)]
    assert groups[1].params == [*blocks[11].parameters(), *model.backbone.norm.parameters()]
    assert groups[2].params == list(blocks[10].parameters())
    apply_engine_trainability([model], groups, step=3, total_steps=10)  # only the output-most block has joined
    assert all(p.requires_grad for p in blocks[11].parameters()) and model.backbone.norm.weight.requires_grad
    assert not any(p.requires_grad for p in blocks[10].parameters())
    assert not model.backbone.pos_embed.requires_grad and not model.backbone.patch_embed.proj.weight.requires_grad
    for p in model.parameters():
        p.requires_grad_(True)  # the module-scoped backbone goes back as it came


def test_dlr_decays_a_vits_learning_rate_block_by_block(dino_s):
    groups = DiscriminativeLR(DiscriminativeLR.parse_params({"decay": 0.5})).param_groups(_dino_model(dino_s))
    assert [g.name for g in groups] == ["head", *(f"backbone.stage{i}" for i in range(12, -1, -1))]
    assert [g.lr_scale for g in groups[1:4]] == pytest.approx([0.1, 0.05, 0.025])  # backbone_lr_scale 0.1, halved
    assert groups[-1].params[0] is dino_s.network.cls_token  # the embedding learns slowest


# -- weights ---------------------------------------------------------------------------------------------
def _pretrained_like(name: str, seed: int) -> dict[str, torch.Tensor]:
    """The state_dict a ``timm/<name>`` hub file holds: timm's names at the pretrained grid."""
    torch.manual_seed(seed)
    return timm.create_model(name, num_classes=0).state_dict()


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_a_local_file_loads_into_the_any_size_network_as_it_is(tmp_path, registry, suffix):
    from safetensors.torch import save_file

    state = _pretrained_like(DINO_S, seed=3)
    state_with_head = {**state, "head.weight": torch.zeros(5, 384), "head.bias": torch.zeros(5)}  # as CLIP's file
    path = tmp_path / f"model{suffix}"
    if suffix == ".safetensors":
        save_file(state_with_head, str(path))
    else:
        torch.save(state_with_head, path)
    made, used = load_backbone(DINO_S, str(path), registry=registry)
    assert used == "local_file" and made.weights["file"] == str(path) and len(made.weights["sha256"]) == 64
    assert all(torch.equal(v, state[k]) for k, v in made.network.state_dict().items())
    with torch.no_grad():
        assert made.network.eval()(_images(28)).shape == (2, 384)


def test_a_file_saved_at_another_grid_is_one_line_naming_the_shapes(tmp_path, registry):
    torch.manual_seed(0)
    at_224 = timm.create_model("vit_small_patch14_dinov2", num_classes=0, img_size=224).state_dict()
    path = tmp_path / "at224.pth"
    torch.save(at_224, path)
    with pytest.raises(WeightsUnavailableError, match=r"pos_embed has shape \(1, 257, 384\) in the file and \(1, 1370"):
        load_backbone(DINO_S, str(path), registry=registry)


def _hub_cache(tmp_path, monkeypatch, name: str, state: dict[str, torch.Tensor]) -> None:
    """What ``hf download timm/<name>`` leaves in the Hugging Face cache, and no network at all."""
    from huggingface_hub import constants
    from safetensors.torch import save_file

    monkeypatch.setattr(timm_hub, "host_resolves", lambda host, timeout=0: False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    cfg = timm_hub.pretrained_cfg(name)
    assert cfg.hf_hub_id == f"timm/{name}"
    repo = tmp_path / ("models--" + cfg.hf_hub_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    save_file(state, str(snapshot / "model.safetensors"))


def test_weights_auto_loads_timms_hub_file_into_the_any_size_network(tmp_path, monkeypatch, registry):
    state = _pretrained_like(DINO_S, seed=4)
    _hub_cache(tmp_path, monkeypatch, DINO_S, state)
    made, used = load_backbone(DINO_S, "auto", registry=registry)
    assert used == "timm_hub"
    assert all(torch.equal(v, state[k]) for k, v in made.network.state_dict().items())
    with torch.no_grad():
        assert made.network.eval()(_images(28)).shape == (2, 384)


@pytest.mark.parametrize("name", [DINO_S, CLIP_LAION])
def test_offline_without_a_file_is_one_line_saying_how_never_random_weights(monkeypatch, registry, name):
    monkeypatch.setattr(timm_hub, "host_resolves", lambda host, timeout=0: False)
    monkeypatch.setattr(timm_hub, "cached_file", lambda cfg: None)
    monkeypatch.setattr(timm_models, "create_any_size", lambda n: _tiny_vit(n))
    with pytest.raises(WeightsUnavailableError) as info:
        load_backbone(name, "auto", registry=registry)
    message = str(info.value)
    assert "\n" not in message
    assert f"no pretrained weights for backbone {name!r}" in message
    assert "weights: /path/to/" in message and "weights: random" in message and "Hugging Face Hub" in message


# -- a suite ---------------------------------------------------------------------------------------------
FOUNDATION_SUITE = """\
name: foundation
dataset: sklearn_digits
pairs: [digits->digits+invert]
backbones: [{name: vit_small_patch14_dinov2.lvd142m, weights: random}]
strategies: [freeze, {name: unfreeze, params: {stages: 2}}, dlr]
recipe: {steps: 2, batch_size: 4, image_size: 28, resize_size: 28, train_crop: none, hflip: false,
         log_every: 1, timing_warmup_steps: 0, eval_batch_size: 64}
"""


@pytest.mark.slow  # about 20 s: three cells scoring 1,800 images each through a ViT-S
def test_a_suite_trains_dinov2_at_28_px_with_its_tagged_name(tmp_path):
    import pandas as pd

    from tlbench.testing import run_cli

    suite = tmp_path / "foundation.yaml"
    suite.write_text(FOUNDATION_SUITE)
    out = tmp_path / "out"
    assert run_cli(["run", str(suite), "--out", str(out), "--cache", str(tmp_path / "cache"), "--quiet"]) == 0
    df = pd.read_csv(out / "results.csv")
    assert sorted(df["strategy"]) == ["dlr", "freeze", "unfreeze"] and (df["status"] == "ok").all()
    assert set(df["backbone"]) == {DINO_S}


def test_the_hub_s_hint_says_how_to_get_the_file_offline():
    from tlbench_builtins.weights.timm_hub import TimmHub

    hint = TimmHub().hint("vit_small_patch14_dinov2.lvd142m")
    assert "hf download timm/vit_small_patch14_dinov2.lvd142m model.safetensors --local-dir DIR" in hint
    assert "weights: DIR/model.safetensors" in hint
