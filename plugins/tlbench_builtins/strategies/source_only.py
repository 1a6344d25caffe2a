"""``source_only``: fine-tune on labelled source images only (the lower bound of every DA table)."""

from __future__ import annotations

from tlbench import Batch, StepContext, StepOutput, Strategy, SupervisedParams, hookimpl


class SourceOnly(Strategy):
    """Source-only fine-tuning: cross-entropy on labelled source images, nothing else.

    The baseline of unsupervised domain adaptation (the source-only rows of Ganin et al. 2016 and
    Long et al. 2015, tllib's ``erm``/``source_only``): backbone at ``model.backbone_lr_scale`` times the head
    learning rate, head and bottleneck at the full rate (the base class's parameter groups). Target images are
    never seen.

    Parameters:
        label_smoothing (0.0): label smoothing of the source cross-entropy (0 = plain cross-entropy,
            the published baseline).
    """

    Params = SupervisedParams

    name = "source_only"
    protocols = ("uda", "finetune")
    target_views = ()
    trains_backbone = True
    accepts_features = True  # through ctx.model only: runs on a frozen backbone's features (trainable: head)

    def training_step(self, batch: Batch, ctx: StepContext) -> StepOutput:
        return self.supervised_step(batch, ctx, self.params.label_smoothing)


@hookimpl
def register_strategies(register):
    register(SourceOnly)
