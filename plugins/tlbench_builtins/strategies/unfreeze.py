"""``unfreeze``: gradual unfreezing: the head trains first, the top backbone stages join later."""

from __future__ import annotations

from dataclasses import dataclass

from tlbench import Batch, ParamGroup, StepContext, StepOutput, Strategy, TransferModel, UserError, hookimpl

MODES = ("together", "gradual")


class Unfreeze(Strategy):
    """Gradual unfreezing: the head trains first, the top backbone stages join later (ULMFiT).

    Howard & Ruder 2018, ULMFiT, "gradual unfreezing"; cf. chain-thaw, Felbo et al. 2017.

    The head (bottleneck + classifier) trains from the first step at the full learning rate; the
    last ``stages`` backbone stages (counted from the output side, as ``model.backbone_stages()``
    groups them from timm's ``group_matcher``) stay frozen until a fraction of training has passed,
    then join the optimizer at ``model.backbone_lr_scale`` times the learning rate. Earlier stages
    never train. Loss: cross-entropy on labelled source images. Until the first stage joins the
    backbone is frozen, so the engine serves its cached features (the test crop and its mirror,
    as for ``freeze``) instead of recomputing them every step (``recipe.feature_cache``; the
    record's ``feature_cache_steps`` says for how many steps).

    Parameters:
        stages (2): how many backbone stages, counted from the output side, are unfrozen; ``-1``
            means all of them. More than the backbone has means all.
        at (0.3): fraction of training (0 to 1) at which the first of those stages joins.
        mode ("gradual"): ``"gradual"`` unfreezes one stage at a time, the output-most first, at
            evenly spaced fractions from ``at`` to ``until`` (ULMFiT); ``"together"`` unfreezes all of
            them at ``at``.
        until (0.5): fraction of training at which the last (input-most) of those stages joins in
            ``"gradual"`` mode; ignored in ``"together"`` mode.
    """

    @dataclass
    class Params:
        stages: int = 2
        at: float = 0.3
        mode: str = "gradual"
        until: float = 0.5

        def __post_init__(self) -> None:
            if self.stages == 0 or self.stages < -1:
                raise UserError(
                    f"unfreeze: params.stages must be a positive number of stages or -1 (all), got {self.stages}"
                )
            if self.mode not in MODES:
                raise UserError(f"unfreeze: params.mode must be one of {', '.join(MODES)}, got {self.mode!r}")
            if not 0.0 <= self.at <= 1.0:
                raise UserError(f"unfreeze: params.at must be a fraction of training in [0, 1], got {self.at}")
            if self.mode == "gradual" and not self.at <= self.until <= 1.0:
                raise UserError(f"unfreeze: params.until must lie in [at, 1] = [{self.at}, 1], got {self.until}")

    name = "unfreeze"
    protocols = ("uda", "finetune")
    target_views = ()
    trains_backbone = True
    accepts_features = True

    def join_fractions(self, k: int) -> list[float]:
        """When each of the ``k`` unfrozen stages joins, output-most stage first."""
        p = self.params
        if p.mode == "together" or k == 1:
            return [p.at] * k
        return [p.at + (p.until - p.at) * i / (k - 1) for i in range(k)]

    def param_groups(self, model: TransferModel) -> list[ParamGroup]:
        stages = model.backbone_stages()
        k = len(stages) if self.params.stages == -1 else min(self.params.stages, len(stages))
        groups = [ParamGroup("head", list(model.head_parameters()))]
        for i, start in enumerate(self.join_fractions(k)):  # i = 0 is the output-most stage
            index = len(stages) - 1 - i
            groups.append(
                ParamGroup(f"backbone.stage{index}", list(stages[index]), lr_scale=model.backbone_lr_scale, start=start)
            )
        return groups

    def training_step(self, batch: Batch, ctx: StepContext) -> StepOutput:
        return self.supervised_step(batch, ctx)


@hookimpl
def register_strategies(register):
    register(Unfreeze)
