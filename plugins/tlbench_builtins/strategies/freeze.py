"""``freeze``: linear probing on a frozen backbone (only the bottleneck and classifier train)."""

from __future__ import annotations

from tlbench import Batch, ParamGroup, StepContext, StepOutput, Strategy, SupervisedParams, TransferModel, hookimpl


class Freeze(Strategy):
    """Frozen backbone ("fixed feature extractor"; Donahue et al. 2014, DeCAF; Yosinski et al. 2014).

    Only the head (bottleneck + classifier) trains, with cross-entropy on labelled source images.
    The backbone gets no gradient and, because its parameters are in no group, the engine keeps its
    BatchNorm statistics fixed. The step goes through ``ctx.model``, so it accepts pooled features
    (N×D) as well as images (``accepts_features``): the engine serves the frozen backbone's
    features, computed once and cached, instead of images (``recipe.feature_cache``).

    Parameters:
        label_smoothing (0.0): label smoothing of the source cross-entropy.
    """

    Params = SupervisedParams

    name = "freeze"
    protocols = ("uda", "finetune")
    target_views = ()
    trains_backbone = False
    accepts_features = True

    def param_groups(self, model: TransferModel) -> list[ParamGroup]:
        return [ParamGroup("head", list(model.head_parameters()))]

    def training_step(self, batch: Batch, ctx: StepContext) -> StepOutput:
        return self.supervised_step(batch, ctx, self.params.label_smoothing)


@hookimpl
def register_strategies(register):
    register(Freeze)
