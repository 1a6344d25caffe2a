"""Weights from a file the user names (``weights: /path/to/resnet50.pth``): the offline way for any backbone."""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from tlbench import UserError, WeightSource, hookimpl, load_state_dict_file

_NOT_PATHS = ("auto", "random")


class LocalFile(WeightSource):
    """A safetensors file or a torch state_dict (loaded with ``weights_only=True``), keys in timm's naming."""

    name = "local_file"
    priority = 10

    def available(self, model_name: str, spec: str) -> bool:
        return bool(spec) and spec not in _NOT_PATHS and Path(spec).expanduser().is_file()

    def state_dict(self, model_name: str, spec: str) -> dict[str, Tensor]:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise UserError(f"weights file {path} does not exist")
        try:
            state = load_state_dict_file(path)
        except UserError:
            raise
        except Exception as exc:  # pickled objects refused by weights_only, a truncated file, ...
            first = (str(exc).strip().splitlines() or [""])[0]  # torch's weights_only refusal is six lines
            raise UserError(
                f"cannot load weights file {path} ({type(exc).__name__}: {first}); "
                f"save a plain state_dict (torch.save(model.state_dict(), path)) or safetensors"
            ) from exc
        # checkpoints saved from DataParallel/DistributedDataParallel prefix every key with "module."
        if state and all(k.startswith("module.") for k in state):
            state = {k[len("module.") :]: v for k, v in state.items()}
        return state

    def weights_file(self, model_name: str, spec: str) -> Path | None:
        return Path(spec).expanduser()

    def hint(self, model_name: str) -> str:
        return (
            f"set weights: /path/to/{model_name}.pth (a timm-named state_dict, .pth/.pt or .safetensors, "
            f"e.g. saved with torch.save(timm.create_model('{model_name}', pretrained=True).state_dict(), path) "
            f"on a machine with internet)"
        )


@hookimpl
def register_weight_sources(register):
    register(LocalFile)
