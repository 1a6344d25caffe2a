"""``bitfit``: parameter-efficient fine-tuning of the backbone's bias terms only (BitFit)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from tlbench import Batch, ParamGroup, StepContext, StepOutput, Strategy, TransferModel, UserError, hookimpl

#: the normalisation layers whose additive shift (``bias``, BatchNorm's beta) ``norm_bias`` decides on;
#: timm's own norm layers (BatchNormAct2d, LayerNorm2d, GroupNorm1, ...) subclass these
NORM_LAYERS: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,  # BatchNorm1d/2d/3d, SyncBatchNorm, InstanceNorm
    nn.LayerNorm,
    nn.GroupNorm,
)
NORM_STATS = ("frozen", "update")


def bias_parameters(backbone: nn.Module, norm_bias: bool = True) -> list[tuple[str, nn.Parameter]]:
    """The backbone's bias terms by name, in module order: every parameter called ``bias`` (the
    additive term of a Linear, a convolution or a normalisation layer); those of normalisation
    layers only when ``norm_bias``."""
    found: list[tuple[str, nn.Parameter]] = []
    for module_name, module in backbone.named_modules():
        bias = module._parameters.get("bias")
        if bias is None or (isinstance(module, NORM_LAYERS) and not norm_bias):
            continue
        found.append((f"{module_name}.bias" if module_name else "bias", bias))
    return found


def batchnorm_layers(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


class BitFit(Strategy):
    """BitFit: only the backbone's bias terms and the head train, with cross-entropy on labelled images.

    Ben Zaken, Ravfogel & Goldberg, "BitFit: Simple Parameter-efficient Fine-tuning for
    Transformer-based Masked Language-models", ACL 2022 (short papers); reference code
    benzakenelad/BitFit (``run_glue.py``).

    Loss: CE(source) as for ``source_only``. Every backbone weight stays at its pretrained value; the
    trainable set is the backbone's bias terms (each parameter named ``bias``: those of linear layers
    and convolutions and, with ``norm_bias``, the shift of every normalisation layer: LayerNorm's
    bias in a ViT as in the paper's BERT, BatchNorm's beta in a convnet) plus the head (bottleneck and
    classifier). The biases train at ``lr_scale`` times the recipe's learning rate, the head at the
    full rate. The record's ``trainable_params`` counts the biases and the head.

    Convolutions followed by BatchNorm have no bias of their own (EfficientNet, ResNet): their only
    additive term is BatchNorm's beta, so ``norm_bias`` is on by default, or such a net would train
    almost nothing. With ``norm_stats: frozen`` (the default) the backbone's BatchNorm layers
    normalise with their pretrained running statistics at every step and never update them, so
    each conv–BN pair is exactly a convolution with a bias (folded BN) whose bias alone trains:
    BitFit on the equivalent biased network, nothing but bias terms changing. ``update`` runs them
    in training mode instead (batch statistics, running averages updated, as ``source_only`` does),
    which also adapts the normalisation statistics to the new images, a change BitFit itself has no
    counterpart of (BERT has no BatchNorm).

    Parameters:
        norm_bias (true): train the bias (beta) of normalisation layers too (BitFit trains
            LayerNorm's biases; BatchNorm's beta is a convnet's conv bias, see above).
        norm_stats ("frozen"): the backbone's BatchNorm running statistics: ``"frozen"`` keeps the
            pretrained ones (eval mode at every step), ``"update"`` normalises with batch statistics
            and updates them (training mode).
        lr_scale (1.0): learning rate of the biases as a multiple of the recipe's (head) rate. The
            paper trains biases and classifier at one rate, 20 to 50 times full fine-tuning's
            (reference code default 1e-3 against BERT's usual 2e-5 to 5e-5), so the biases get the
            full rate here, ten times ``model.backbone_lr_scale`` (0.1) of ``source_only``'s backbone.
        label_smoothing (0.0): label smoothing of the cross-entropy (0 = plain cross-entropy).
    """

    @dataclass
    class Params:
        norm_bias: bool = True
        norm_stats: str = "frozen"
        lr_scale: float = 1.0
        label_smoothing: float = 0.0

        def __post_init__(self) -> None:
            if self.norm_stats not in NORM_STATS:
                raise UserError(
                    f"bitfit: params.norm_stats must be one of {', '.join(NORM_STATS)}, got {self.norm_stats!r}"
                )
            if not self.lr_scale > 0:
                raise UserError(f"bitfit: params.lr_scale must be a positive number, got {self.lr_scale}")
            if not 0.0 <= self.label_smoothing < 1.0:
                raise UserError(f"bitfit: params.label_smoothing must lie in [0, 1), got {self.label_smoothing}")

    name = "bitfit"
    protocols = ("uda", "finetune")
    target_views = ()
    trains_backbone = True

    def param_groups(self, model: TransferModel) -> list[ParamGroup]:
        biases = [p for _, p in bias_parameters(model.backbone, self.params.norm_bias)]
        if not biases:
            raise UserError(
                f"bitfit: backbone {model.backbone_name or type(model.backbone).__name__!r} has no bias terms"
                + ("" if self.params.norm_bias else " outside its norm layers; set params.norm_bias: true")
            )
        return [
            ParamGroup("bias", biases, lr_scale=self.params.lr_scale),
            ParamGroup("head", list(model.head_parameters())),
        ]

    def training_step(self, batch: Batch, ctx: StepContext) -> StepOutput:
        """Source cross-entropy, the backbone's BatchNorm layers first set to the mode ``norm_stats`` says
        (the engine would run a BatchNorm whose beta trains in training mode)."""
        frozen = self.params.norm_stats == "frozen"
        for bn in batchnorm_layers(ctx.model.backbone):
            bn.train(not frozen and ctx.model.training)
        return self.supervised_step(batch, ctx, self.params.label_smoothing)


@hookimpl
def register_strategies(register):
    register(BitFit)
