"""What a transfer strategy is, seen from a plugin author.

The harness owns the loop (device, precision, optimizer, schedule, timing). A strategy only
declares what trains, at which learning rate and from when (:meth:`Strategy.param_groups`),
and computes its losses for one batch (:meth:`Strategy.training_step`). It never calls
``backward()`` or steps an optimizer. Strategies are ``nn.Module``s so that modules they own
(a domain discriminator, say) move with the model and their state round-trips.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import math
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from tlbench.errors import ParamsError
from tlbench.plugins.registry import Plugin

if TYPE_CHECKING:
    from tlbench.models.transfer import Outputs, TransferModel


@dataclass
class ParamGroup:
    """A set of parameters the optimizer trains together.

    ``lr_scale`` multiplies the recipe's learning rate; ``start`` is the fraction of training
    (0 to 1) at which the group joins the optimizer: parameters wait frozen until then.
    Parameters of the model that belong to no group are frozen for the whole run.
    """

    name: str
    params: list[nn.Parameter]
    lr_scale: float = 1.0
    start: float = 0.0
    weight_decay: float | None = None


@dataclass
class Batch:
    """One training step's images, already augmented and normalised on the training device.

    ``source``/``target`` are image batches (N×3×H×W) or, when the engine serves cached
    features of a frozen backbone, feature batches (N×D); :class:`tlbench.TransferModel`
    accepts either. ``source_teacher``/``target_teacher`` are the teacher's logits on exactly
    these images when the engine serves them from its cache (``Strategy.teacher_views``), else
    None. Target labels are never part of a batch.
    """

    source: Tensor
    source_labels: Tensor
    target: Tensor | None = None
    target_strong: Tensor | None = None
    target_index: Tensor | None = None
    source_teacher: Tensor | None = None
    target_teacher: Tensor | None = None


@dataclass
class StepOutput:
    """The loss to minimise and metrics to log (tensors are fine: no host sync is forced).

    ``predictions``: under protocol ``test_time``, the logits on ``batch.target`` that the cell is
    scored on, made before this step's update moved anything (a test-time method predicts a batch
    when it arrives, then adapts on it)."""

    loss: Tensor
    metrics: dict[str, Tensor | float] = field(default_factory=dict)
    predictions: Tensor | None = None


@dataclass
class TargetPass:
    """The model's outputs on every target image a cell is served (the test view, eval mode, no
    gradient), on the training device: row ``i`` is the image that ``Batch.target_index`` calls
    ``i``. What :meth:`Strategy.refresh` receives (SHOT's clustering pseudo-labels are made from it)."""

    logits: Tensor  # N×C
    embedding: Tensor  # N×E, the classifier's input


@dataclass
class JointPass:
    """The source and the target images through the model as one batch, and the source's cross-entropy.

    One forward pass over both domains is how the domain-alignment methods' reference code (TLlib's
    ``dann.py``, ``cdan.py``, ``mcc.py``, ...) feeds its model, so BatchNorm normalises over both;
    ``outputs`` holds the source rows first, then the target rows.
    """

    outputs: Outputs
    n_source: int
    source_ce: Tensor
    source_acc: Tensor

    @property
    def source_logits(self) -> Tensor:
        return self.outputs.logits[: self.n_source]

    @property
    def target_logits(self) -> Tensor:
        return self.outputs.logits[self.n_source :]

    @property
    def source_embedding(self) -> Tensor:
        return self.outputs.embedding[: self.n_source]

    @property
    def target_embedding(self) -> Tensor:
        return self.outputs.embedding[self.n_source :]


@dataclass
class Update:
    """One optimizer update inside a step: minimise ``loss`` over the parameter groups named in
    ``groups`` (None: every group that has joined); the other groups keep their values.

    A strategy whose step is one update (most) returns a :class:`StepOutput` from
    ``training_step``. A method that alternates objectives within a step (MCD's three updates,
    ADDA's discriminator and encoder updates, a GAN's two players) yields several ``Update``s from
    ``training_updates`` instead; the engine runs backward and steps the optimizer after each, so
    the next update is computed with the parameters the previous one moved. ``name`` labels the
    update's loss in the curves (``loss/<name>``). ``groups=()`` is an update that moves nothing
    (a test-time method that only normalises, BN-adapt): its loss is logged, never backpropagated.
    """

    name: str
    loss: Tensor
    groups: tuple[str, ...] | None = None
    metrics: dict[str, Tensor | float] = field(default_factory=dict)
    predictions: Tensor | None = None  # the test-time predictions (StepOutput.predictions), from the first update


@dataclass
class StepContext:
    """Progress and shared objects a strategy may read during a step."""

    step: int
    total_steps: int
    model: TransferModel
    device: torch.device
    num_classes: int
    teacher: nn.Module | None = None
    score_pseudo_labels: Callable[[Tensor, Tensor, Tensor], None] | None = None

    @property
    def progress(self) -> float:
        """Fraction of training done, from 0 at the first step to 1 at the end."""
        return self.step / max(1, self.total_steps)


@dataclass
class SetupContext:
    """What a strategy may know when it builds its own modules."""

    num_classes: int
    feature_dim: int
    embed_dim: int
    total_steps: int
    device: torch.device
    seed: int
    #: the trained teacher (``needs_teacher``), frozen and on the device; a strategy that starts from
    #: it (ADDA's target encoder starts as the trained source model) copies its weights here
    teacher: nn.Module | None = None


@dataclass
class NoParams:
    """A strategy without parameters."""


@dataclass
class SupervisedParams:
    """The parameters of :meth:`Strategy.supervised_step`, for strategies whose step is only that."""

    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.label_smoothing < 1.0:  # torch accepts [0, 1]; 1 would ignore the labels entirely
            raise ValueError(
                f"label_smoothing must lie in [0, 1) (0 is plain cross-entropy), got {self.label_smoothing!r}"
            )


def type_problem(value: Any, annotation: Any) -> str | None:
    """What is wrong with ``value`` for a ``Params`` field's annotation, or None when it fits.

    Checked before any cell trains, so ``trade_off: abc`` is one line, not a crash hours in. The
    YAML spellings of numbers are the only coercions: an int is a valid float, a bool is neither,
    and a float must be finite. Annotations this does not know (a plugin's own classes) pass.
    """
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any or annotation is typing.Any:
        return None
    if origin in (typing.Union, types.UnionType):
        fits = [type_problem(value, a) for a in args]
        return None if None in fits else fits[0]
    if origin is typing.Literal:
        return None if value in args else f"expected one of {', '.join(map(repr, args))}, got {value!r}"
    if annotation is type(None):
        return None if value is None else f"expected null, got {value!r}"
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"expected a number, got {value!r}"
        return None if math.isfinite(value) else f"expected a finite number, got {value!r}"
    if annotation in (int, bool, str):
        if isinstance(value, annotation) and (annotation is bool or not isinstance(value, bool)):
            return None
        return f"expected {_WORDS[annotation]}, got {value!r}"
    if origin in (list, tuple, collections.abc.Sequence):
        if not isinstance(value, (list, tuple)):
            return f"expected a list, got {value!r}"
        item = args[0] if args else Any
        return next((f"item {i}: {p}" for i, v in enumerate(value) if (p := type_problem(v, item))), None)
    if origin is dict or annotation is dict:
        return None if isinstance(value, dict) else f"expected a mapping, got {value!r}"
    return None


_WORDS = {int: "a whole number", bool: "true or false", str: "a string"}


class Strategy(Plugin, nn.Module):
    """Base class of transfer strategies.

    Class attributes a subclass sets:

    - ``name``: the registered name suites use.
    - ``Params``: a dataclass of the strategy's parameters with their published defaults.
    - ``target_views``: which unlabelled target views each batch carries: ``()`` none,
      ``("weak",)`` one augmented view, ``("weak", "strong")`` two (FixMatch-style).
    - ``trains_backbone``: False when the backbone never trains (checked against the groups).
    - ``accepts_features``: True when ``training_step`` reaches the backbone only through
      ``ctx.model``, so pooled features (N×D) work in place of images: for every step at which no
      backbone parameter trains (all of ``freeze``, the head-only phase of ``unfreeze``) the engine
      then serves features of the frozen backbone, computed once and cached, instead of images.
      Such a strategy also honours ``recipe.trainable`` (``head``: the backbone frozen throughout;
      ``topK``: only its K output-most stages train); any other is refused it at validation.
    - ``needs_teacher``: True when ``ctx.teacher`` must be a trained model (``kd``).
    - ``protocols``: the suite protocols the strategy is sound under: ``"uda"`` (a labelled source
      and an unlabelled target domain) and/or ``"finetune"`` (one labelled task; its target views
      are the training images whose labels a budget holds back). A suite pairing it with another
      is refused at validation. Default ``("uda",)``: a method that aligns two domains (DANN, MMD)
      has no second domain to align under fine-tuning.
    """

    plugin_kind: ClassVar[str] = "strategy"
    name: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams
    target_views: ClassVar[tuple[str, ...]] = ()
    trains_backbone: ClassVar[bool] = True
    accepts_features: ClassVar[bool] = False
    needs_teacher: ClassVar[bool] = False
    #: False when the teacher only initialises the model (SHOT's source model) and never runs on a batch:
    #: the engine may then serve cached features to the strategy as to any other
    teacher_in_steps: ClassVar[bool] = True
    protocols: ClassVar[tuple[str, ...]] = ("uda",)

    def __init__(self, params: Any = None, **overrides: Any):
        super().__init__()
        if params is None:
            params = self.parse_params(overrides)
        elif overrides:
            params = dataclasses.replace(params, **overrides)
        self.params = params

    # -- parameters ------------------------------------------------------------------------
    @classmethod
    def parse_params(cls, raw: dict[str, Any] | None) -> Any:
        """Build ``Params`` from a suite's mapping; an unknown key or a value of the wrong type is a
        :class:`tlbench.UserError` (also a ``ValueError``) naming the valid keys or the type expected."""
        raw = dict(raw or {})
        fields = {f.name: f for f in dataclasses.fields(cls.Params)}
        unknown = sorted(set(raw) - set(fields))
        if unknown:
            raise ParamsError(
                f"unknown parameter(s) {', '.join(unknown)} for strategy {cls.name!r}; "
                f"valid: {', '.join(fields) or 'none'}"
            )
        try:
            hints = typing.get_type_hints(cls.Params)
        except Exception:  # noqa: BLE001 - annotations a plugin's module cannot resolve: left unchecked
            hints = {}
        for key, value in raw.items():
            problem = type_problem(value, hints.get(key, Any))
            if problem:
                raise ParamsError(f"{key}: {problem}")
        return cls.Params(**raw)

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        return dataclasses.asdict(cls.Params())

    # -- hooks a strategy implements --------------------------------------------------------
    def setup(self, model: TransferModel, ctx: SetupContext) -> None:
        """Build modules the strategy owns (as attributes of ``self``). Called once, before training."""

    def param_groups(self, model: TransferModel) -> list[ParamGroup]:
        """What trains: by default the backbone at ``backbone_lr_scale`` and the head and the
        strategy's own modules at the full learning rate (the usual fine-tuning recipe)."""
        groups = [
            ParamGroup("backbone", list(model.backbone.parameters()), lr_scale=model.backbone_lr_scale),
            ParamGroup("head", list(model.head_parameters())),
        ]
        own = list(self.parameters())
        if own:
            groups.append(ParamGroup(self.name or "strategy", own))
        return groups

    def training_step(self, batch: Batch, ctx: StepContext) -> StepOutput:
        """The loss of one batch. No ``backward()``, no optimizer step: the engine does those."""
        raise NotImplementedError(
            f"strategy {self.name!r} implements neither training_step (one update a step) nor "
            "training_updates (several)"
        )

    def training_updates(self, batch: Batch, ctx: StepContext) -> Iterator[Update]:
        """The updates of one step, in order; the engine applies each before asking for the next.

        Override this, instead of ``training_step``, for a method with several updates a step; each
        ``Update`` names the parameter groups it moves. The default is one update of every group,
        the loss of ``training_step``.
        """
        out = self.training_step(batch, ctx)
        yield Update("", out.loss, None, out.metrics, out.predictions)

    def joint_pass(self, batch: Batch, ctx: StepContext) -> JointPass:
        """Source and weak target images through ``ctx.model`` as one batch (:class:`JointPass`),
        with the source's cross-entropy and accuracy: the start of every domain-alignment step."""
        if batch.target is None:
            raise ValueError(f"{self.name} needs target images: the batch has no 'weak' target view")
        n_source = len(batch.source)
        outputs = ctx.model.forward_all(torch.cat([batch.source, batch.target]))
        logits_s = outputs.logits[:n_source]
        source_ce = nn.functional.cross_entropy(logits_s, batch.source_labels)
        source_acc = (logits_s.detach().argmax(1) == batch.source_labels).float().mean()
        return JointPass(outputs, n_source, source_ce, source_acc)

    @staticmethod
    def supervised_step(batch: Batch, ctx: StepContext, label_smoothing: float = 0.0) -> StepOutput:
        """Cross-entropy on the labelled source batch: the whole step of the fine-tuning
        strategies (``source_only``, ``freeze``, ``unfreeze``, ``dlr``), which differ only in
        what trains and at which learning rate."""
        logits = ctx.model(batch.source)
        loss = nn.functional.cross_entropy(logits, batch.source_labels, label_smoothing=label_smoothing)
        acc = (logits.detach().argmax(1) == batch.source_labels).float().mean()
        return StepOutput(loss, {"source_ce": loss.detach(), "source_acc": acc})

    @property
    def teacher_views(self) -> int:
        """For a strategy that ``needs_teacher``: how many fixed augmented views of each image the
        engine computes the teacher's logits on, once and cached, serving the student those views
        with the logits in the batch; 0 (the default) runs the teacher on every batch instead."""
        return 0

    @property
    def target_refreshes(self) -> int:
        """How many times over training the engine hands :meth:`refresh` the model's outputs on every
        served target image (:class:`TargetPass`): before step 0 and every ``total_steps // n``
        steps after (SHOT relabels the target each of its 15 intervals). 0, the default: never.
        The pass counts as training time: it is part of what the method costs."""
        return 0

    def refresh(self, target: TargetPass, ctx: StepContext) -> None:
        """Receives a :class:`TargetPass` at the steps :attr:`target_refreshes` asks for, before that
        step's batch (e.g. to recompute pseudo-labels over the whole target)."""

    def extra_metrics(self) -> dict[str, float]:
        """Metrics this strategy adds to the cell's record at the end (optional)."""
        return {}
