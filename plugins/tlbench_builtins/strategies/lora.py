"""``lora``: low-rank adapters on the frozen backbone's linear layers and convolutions, through Hugging Face peft."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tlbench import (
    Batch,
    ParamGroup,
    SetupContext,
    StepContext,
    StepOutput,
    Strategy,
    TransferModel,
    UserError,
    hookimpl,
)

#: the name peft gives the one adapter it injects (its default)
ADAPTER = "default"
#: the pinned release this strategy is tested with (pyproject's ``peft`` extra)
PEFT_REQUIREMENT = "peft==0.22.0"


def import_peft() -> Any:
    """peft, imported on first use: it imports transformers (seconds), which no other strategy needs."""
    try:
        import peft
    except ImportError as exc:
        raise UserError(
            f"lora: needs Hugging Face peft ({exc}); install it with pip install 'tlbench[peft]' ({PEFT_REQUIREMENT})"
        ) from exc
    return peft


def adaptable(module: nn.Module) -> bool:
    """A layer whose LoRA branch computes what peft assumes: a plain ``nn.Linear`` or an ungrouped plain
    ``nn.Conv2d``. Subclasses with a forward of their own (timm's ``Conv2dSame`` pads at run time,
    ``StdConv2d`` standardises its weight) and grouped/depthwise convolutions (peft cannot merge them)
    are not."""
    if type(module) is nn.Linear:
        return True
    return type(module) is nn.Conv2d and module.groups == 1


def fans(module: nn.Module) -> tuple[int, int]:
    """(fan-in, fan-out) of a linear layer or a convolution: the matrix LoRA's update ``B·A`` has the shape of."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    conv: Any = module
    kh, kw = conv.kernel_size
    return conv.in_channels * kh * kw, conv.out_channels


def auto_targets(backbone: nn.Module, r: int) -> list[str]:
    """Every adaptable layer of ``backbone`` on which a rank-``r`` update is low-rank: ``r < min(fan-in, fan-out)``
    (where it is not, the "adapter" would be a full-rank update with more parameters than the layer)."""
    return [n for n, m in backbone.named_modules() if n and adaptable(m) and r < min(fans(m))]


def listed_targets(backbone: nn.Module, names: list[str]) -> list[str]:
    """The backbone's layers named by ``names``, matched as peft matches a list: a module's full name
    equals an entry or ends with ``.`` + the entry (``qkv`` matches every ``blocks.N.attn.qkv``); in module order."""
    modules = dict(backbone.named_modules())
    chosen: set[str] = set()
    for entry in names:
        matches = [n for n in modules if n and (n == entry or n.endswith("." + entry))]
        if not matches:
            raise UserError(f"lora: params.targets entry {entry!r} names no module of the backbone")
        for n in matches:
            if not adaptable(modules[n]):
                raise UserError(
                    f"lora: params.targets entry {entry!r} matches {n} ({type(modules[n]).__name__}); LoRA here "
                    "adapts only nn.Linear and ungrouped nn.Conv2d layers: name those"
                )
        chosen.update(matches)
    return [n for n in modules if n in chosen]  # in the backbone's order, whatever the list's


def merge_into_plain_state(module: Any, state: dict[str, Any], prefix: str, _metadata: Any) -> None:
    """``state_dict`` hook of an adapted layer: save the merged weight ``W0 + (alpha/r)·B·A`` under the plain
    layer's names and drop the adapter's entries, so the saved model is the plain network (LoRA's deployed
    form, Hu et al. §4.1) and loads into a model without adapters (a kd teacher)."""
    base = prefix + "base_layer."
    with torch.no_grad():
        weight = state.pop(base + "weight")
        state[prefix + "weight"] = weight + module.get_delta_weight(ADAPTER).to(weight.dtype)
    if base + "bias" in state:
        state[prefix + "bias"] = state.pop(base + "bias")
    for key in [k for k in state if k.startswith(prefix + "lora_")]:
        del state[key]


def load_plain_state(module: Any, state: dict[str, Any], prefix: str, *_: Any) -> None:
    """``load_state_dict`` pre-hook of an adapted layer: plain entries (what :func:`merge_into_plain_state`
    saves) load as the frozen base weight, with B set to zero (A kept), so the loaded model computes
    exactly the saved one."""
    if prefix + "weight" not in state:
        return  # peft's own layout: loads as is
    state[prefix + "base_layer.weight"] = state.pop(prefix + "weight")
    if prefix + "bias" in state:
        state[prefix + "base_layer.bias"] = state.pop(prefix + "bias")
    for branch, fill in (("lora_A", None), ("lora_B", torch.zeros_like)):
        for name, p in getattr(module, branch)[ADAPTER].named_parameters():
            state.setdefault(f"{prefix}{branch}.{ADAPTER}.{name}", p.detach().clone() if fill is None else fill(p))


def renamed_stages(
    stages: list[list[str]], old_names: Mapping[int, str], backbone: nn.Module, adapted: list[str]
) -> list[list[str]]:
    """A provider's stage lists (parameter names) after injection: each base parameter under its new name
    (``conv.weight`` -> ``conv.base_layer.weight``), each layer's adapter in the stage of its base weight."""
    new_of_old = {old_names[id(p)]: n for n, p in backbone.named_parameters() if id(p) in old_names}
    renamed = [[new_of_old.get(n, n) for n in names] for names in stages]
    for layer in adapted:
        stage = next((s for s in renamed if f"{layer}.base_layer.weight" in s), None)
        if stage is not None:
            stage.extend(n for n, _ in backbone.named_parameters() if n.startswith(f"{layer}.lora_"))
    return renamed


class Lora(Strategy):
    """LoRA: low-rank adapters on the frozen backbone's linear layers and convolutions (Hu et al. 2022).

    Hu, Shen, Wallis, Allen-Zhu, Li, Wang, Wang & Chen, "LoRA: Low-Rank Adaptation of Large Language
    Models", ICLR 2022; reference scripts microsoft/LoRA (``examples/NLU/roberta_base_mnli.sh``). The
    adapters are Hugging Face peft's (``LoraConfig`` + ``inject_adapter_in_model``, pinned
    ``peft==0.22.0``, the ``peft`` extra).

    Each targeted layer ``h = W0·x`` becomes ``h = W0·x + (alpha/r)·B·A·x`` with ``A`` (r×fan-in, peft's
    Kaiming-uniform init) and ``B`` (fan-out×r, zero init, so the adapted model starts as the pretrained
    one); for a k×k convolution ``A`` is a k×k convolution to ``r`` channels and ``B`` a 1×1 one from
    them, r·(in·k·k + out) parameters. ``W0`` and every other backbone parameter stay frozen, and so do
    the backbone's BatchNorm statistics (the engine keeps a norm layer without trainable parameters in
    eval mode). Loss: CE(source), as for ``source_only``. The adapters train at ``lr_scale`` times the
    recipe's learning rate, the head (bottleneck and classifier) at the full rate; the record's
    ``trainable_params`` counts both. The saved model (``state_dict``) holds the merged weights
    ``W0 + (alpha/r)·B·A`` under the plain layer names: it loads into a model without adapters (a kd
    teacher's), and back into an adapted one with ``B`` = 0.

    Parameters:
        r (8): the adapters' rank (peft's default; microsoft/LoRA's RoBERTa-base GLUE scripts use 8).
        alpha (16.0): the update is scaled by ``alpha / r`` (microsoft/LoRA's RoBERTa-base scripts use
            ``lora_alpha 16`` with ``r 8``; peft's own default is 8).
        targets ([auto]): the layers adapted (a list, so that a suite's list is one value, not a sweep).
            ``[auto]``: every plain ``nn.Linear`` and ungrouped plain
            ``nn.Conv2d`` of the backbone on which a rank-``r`` update is low-rank (``r`` below both its
            fan-in and fan-out): a ViT's attention ``qkv`` and ``proj``, its MLP and patch embedding; a
            convnet's 1×1 and full convolutions, not its depthwise ones nor timm's ``Conv2dSame`` (the
            ``tf_`` EfficientNets' stem and strided convolutions, whose run-time padding peft's adapter
            does not repeat). Or module names, matched as peft matches a list (an entry matches a
            module named exactly so or ending in ``.`` + it): ``[attn.qkv, attn.proj]`` is a ViT's
            attention-only LoRA, as in the paper (which adapts W_q and W_v; timm fuses Q, K and V
            in ``qkv``; a bare ``proj`` would take the patch embedding's ``patch_embed.proj`` too).
        dropout (0.0): dropout on the adapters' input (peft's default).
        lr_scale (1.0): learning rate of the adapters as a multiple of the recipe's (head) rate: the
            reference scripts train adapters and classifier at one rate (4e-4 to 5e-4), far above
            RoBERTa's usual full fine-tuning rates (1e-5 to 3e-5); ``1.0`` is ten times the rate
            ``source_only`` gives the backbone (``model.backbone_lr_scale``, 0.1).
        label_smoothing (0.0): label smoothing of the cross-entropy (0 = plain cross-entropy).
    """

    @dataclass
    class Params:
        r: int = 8
        alpha: float = 16.0
        targets: tuple[str, ...] = ("auto",)
        dropout: float = 0.0
        lr_scale: float = 1.0
        label_smoothing: float = 0.0

        def __post_init__(self) -> None:
            if self.r < 1:
                raise UserError(f"lora: params.r must be a rank of at least 1, got {self.r}")
            if not self.alpha > 0:
                raise UserError(f"lora: params.alpha must be a positive number, got {self.alpha}")
            targets = list(self.targets)
            if not targets or not all(targets) or ("auto" in targets and len(targets) > 1):
                raise UserError(f"lora: params.targets must be [auto] or a list of module names, got {targets!r}")
            if not 0.0 <= self.dropout < 1.0:
                raise UserError(f"lora: params.dropout must lie in [0, 1), got {self.dropout}")
            if not self.lr_scale > 0:
                raise UserError(f"lora: params.lr_scale must be a positive number, got {self.lr_scale}")
            if not 0.0 <= self.label_smoothing < 1.0:
                raise UserError(f"lora: params.label_smoothing must lie in [0, 1), got {self.label_smoothing}")

    name = "lora"
    protocols = ("uda", "finetune")
    target_views = ()
    trains_backbone = True

    def __init__(self, params: Any = None, **overrides: Any):
        super().__init__(params, **overrides)
        #: full names of the backbone's adapted layers, set by ``setup`` (names, not modules: the
        #: strategy must not own the model's modules)
        self.adapted: list[str] = []

    def setup(self, model: TransferModel, ctx: SetupContext) -> None:
        """Inject the adapters into ``model.backbone`` in place, and make its saved state the merged plain one."""
        peft = import_peft()
        p = self.params
        backbone = model.backbone
        auto = list(p.targets) == ["auto"]
        names = auto_targets(backbone, p.r) if auto else listed_targets(backbone, list(p.targets))
        if not names:
            raise UserError(
                f"lora: backbone {model.backbone_name or type(backbone).__name__!r} has no nn.Linear or ungrouped "
                f"nn.Conv2d layer wider than r={p.r}; lower params.r"
            )
        old_names = {id(q): n for n, q in backbone.named_parameters()}
        config = peft.LoraConfig(r=p.r, lora_alpha=p.alpha, lora_dropout=p.dropout, target_modules=names, bias="none")
        peft.inject_adapter_in_model(config, backbone)
        self.adapted = names
        for name in names:
            layer = backbone.get_submodule(name)
            layer._register_state_dict_hook(merge_into_plain_state)
            layer._register_load_state_dict_pre_hook(load_plain_state, with_module=True)
        if model.stage_names is not None:
            model.stage_names = renamed_stages(model.stage_names, old_names, backbone, names)

    def adapter_parameters(self, model: TransferModel) -> list[nn.Parameter]:
        """The A and B matrices of every adapted layer, in layer order."""
        params: list[nn.Parameter] = []
        for name in self.adapted:
            layer: Any = model.backbone.get_submodule(name)
            params += list(layer.lora_A[ADAPTER].parameters()) + list(layer.lora_B[ADAPTER].parameters())
        return params

    def param_groups(self, model: TransferModel) -> list[ParamGroup]:
        if not self.adapted:
            raise RuntimeError("lora: param_groups before setup: the backbone has no adapters yet")
        return [
            ParamGroup("lora", self.adapter_parameters(model), lr_scale=self.params.lr_scale),
            ParamGroup("head", list(model.head_parameters())),
        ]

    def training_step(self, batch: Batch, ctx: StepContext) -> StepOutput:
        return self.supervised_step(batch, ctx, self.params.label_smoothing)


@hookimpl
def register_strategies(register):
    register(Lora)
