"""``dlr``: discriminative learning rates, decaying stage by stage from the output side."""

from __future__ import annotations

from dataclasses import dataclass

from tlbench import Batch, ParamGroup, StepContext, StepOutput, Strategy, TransferModel, UserError, hookimpl


class DiscriminativeLR(Strategy):
    """Discriminative fine-tuning (Howard & Ruder 2018, ULMFiT; layer-wise learning-rate decay).

    The whole network trains with cross-entropy on labelled source images, but each backbone stage
    gets its own learning rate: the head (bottleneck + classifier) trains at the full rate, the
    output-most backbone stage at ``model.backbone_lr_scale`` times it, and every stage further
    towards the input at ``decay`` times the stage above it: stage ``i`` counted from the output
    side (``i = 0`` output-most) gets ``backbone_lr_scale * decay**i``. Stages come from
    ``model.backbone_stages()`` (timm's ``group_matcher``).

    Parameters:
        decay (0.5): learning-rate factor per stage towards the input (ULMFiT used 1/2.6 per layer;
            1.0 reduces to plain fine-tuning).
    """

    @dataclass
    class Params:
        decay: float = 0.5

        def __post_init__(self) -> None:
            if not 0.0 < self.decay <= 1.0:
                raise UserError(f"dlr: params.decay must lie in (0, 1], got {self.decay}")

    name = "dlr"
    protocols = ("uda", "finetune")
    target_views = ()
    trains_backbone = True

    def param_groups(self, model: TransferModel) -> list[ParamGroup]:
        stages = model.backbone_stages()
        groups = [ParamGroup("head", list(model.head_parameters()))]
        for i, params in enumerate(reversed(stages)):  # i = 0 is the output-most stage
            index = len(stages) - 1 - i
            groups.append(
                ParamGroup(
                    f"backbone.stage{index}", list(params), lr_scale=model.backbone_lr_scale * self.params.decay**i
                )
            )
        return groups

    def training_step(self, batch: Batch, ctx: StepContext) -> StepOutput:
        return self.supervised_step(batch, ctx)


@hookimpl
def register_strategies(register):
    register(DiscriminativeLR)
