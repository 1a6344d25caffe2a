"""``tent`` and ``bn_adapt``: test-time adaptation of a source model's normalisation, batch by batch."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from tlbench import (
    Batch,
    ParamGroup,
    SetupContext,
    StepContext,
    StepOutput,
    Strategy,
    TransferModel,
    Update,
    UserError,
    hookimpl,
)


def softmax_entropy(logits: Tensor) -> Tensor:
    """The Shannon entropy of each row's softmax, ``-sum_k p_k log p_k`` (Tent's objective, Wang et al. 2021, Eq. 1)."""
    return -(logits.softmax(dim=1) * logits.log_softmax(dim=1)).sum(dim=1)


def normalise_by_batch(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Make every BatchNorm layer of ``model`` normalise by the statistics of the batch in front of it,
    in training and in evaluation mode alike (running statistics dropped, as Tent's and BN-adapt's
    reference code does); returns those layers."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for layer in layers:
        layer.track_running_stats = False
        layer.running_mean = None
        layer.running_var = None
    return layers


@dataclass
class _SourceModelParams:
    teacher_strategy: str = "source_only"
    teacher_params: dict[str, Any] = field(default_factory=dict)  # a mapping: parse_params checks the types


class _TestTime(Strategy):
    """A test-time method: starts as its source model (the teacher cell), predicts each batch of the
    target stream in evaluation mode (dropout off) with every BatchNorm layer normalising by that batch."""

    Params = _SourceModelParams
    protocols = ("test_time",)
    target_views = ("weak",)  # the stream serves the test view of each target image
    trains_backbone = True
    needs_teacher = True

    def setup(self, model: TransferModel, ctx: SetupContext) -> None:
        if ctx.teacher is None:
            raise UserError(f"{self.name} needs its trained source model (the teacher cell); none was given")
        model.load_state_dict(ctx.teacher.state_dict())
        self.norm_layers = normalise_by_batch(model)

    def predict(self, batch: Batch, ctx: StepContext) -> Tensor:
        if batch.target is None:
            raise ValueError(f"{self.name} needs target images: the batch has none")
        ctx.model.eval()  # dropout off; BatchNorm still normalises by the batch (normalise_by_batch)
        return ctx.model(batch.target)


class BnAdapt(_TestTime):
    """BN-adapt: the source model with each BatchNorm layer normalising by the test batch's own statistics.

    Schneider, Rusak, Eck, Bringmann, Brendel & Bethge, "Improving robustness against common
    corruptions by covariate shift adaptation", NeurIPS 2020 (with no source prior, N = 0).
    Reference implementation: DequanWang/tent, ``norm.py`` (the ``norm`` baseline of Tent's tables).
    Nothing trains: each batch is predicted with the statistics of that batch alone.

    Parameters:
        teacher_strategy ("source_only"): the registered strategy that trains the source model.
        teacher_params ({}): its parameters.
    """

    name = "bn_adapt"

    def param_groups(self, model: TransferModel) -> list[ParamGroup]:
        return []

    def training_updates(self, batch: Batch, ctx: StepContext) -> Iterator[Update]:
        with torch.no_grad():
            logits = self.predict(batch, ctx)
        yield Update("", softmax_entropy(logits.float()).mean(), (), {}, logits)


class Tent(_TestTime):
    """Tent: test-time entropy minimisation over the normalisation layers' affine parameters (Wang et al. 2021).

    Wang, Shelhamer, Liu, Olshausen & Darrell, "Tent: Fully Test-Time Adaptation by Entropy
    Minimization", ICLR 2021. Reference implementation: DequanWang/tent, ``tent.py``. Each BatchNorm
    layer normalises by the test batch's statistics; each batch is predicted, then one update
    minimises the mean entropy of those predictions (:func:`softmax_entropy`) over the BatchNorm
    layers' scales and shifts only, so the next batch meets the adapted model (continual: never
    reset). The reference adapts a ResNet's ``BatchNorm2d`` layers; here every BatchNorm layer of the
    model, the bottleneck's ``BatchNorm1d`` included (LeNet has no other). Its optimiser (Adam, lr
    1e-3, on CIFAR-10-C; SGD 2.5e-4 with momentum on ImageNet-C) is the suite's recipe.

    Parameters:
        teacher_strategy ("source_only"): the registered strategy that trains the source model.
        teacher_params ({}): its parameters.
    """

    name = "tent"

    def param_groups(self, model: TransferModel) -> list[ParamGroup]:
        """The BatchNorm layers' affine parameters (weight and bias), nothing else."""
        params = [p for layer in self.norm_layers for p in (layer.weight, layer.bias) if p is not None]
        if not params:
            raise UserError("tent: the model has no BatchNorm layer with affine parameters to adapt")
        return [ParamGroup("norm", params)]

    def training_step(self, batch: Batch, ctx: StepContext) -> StepOutput:
        logits = self.predict(batch, ctx)
        loss = softmax_entropy(logits.float()).mean()
        return StepOutput(loss, {"entropy": loss.detach()}, predictions=logits.detach())


@hookimpl
def register_strategies(register):
    register(BnAdapt)
    register(Tent)
