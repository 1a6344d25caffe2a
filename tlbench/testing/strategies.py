"""The strategy conformance check: does a strategy honour the contract the engine relies on?"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from tlbench.models.transfer import TransferModel, set_batchnorm_eval_where_frozen
from tlbench.plugins.registry import NAME_PATTERN, NAME_RULE
from tlbench.spec.recipe import Recipe
from tlbench.testing.common import _check_summary_line, _require
from tlbench.testing.step_inputs import as_features, target_pass
from tlbench.testing.tiny import make_tiny_batch, make_tiny_model
from tlbench.training.schedule import restrict_to_trainable
from tlbench.training.strategy import (
    Batch,
    ParamGroup,
    SetupContext,
    StepContext,
    StepOutput,
    Strategy,
    Update,
)

VALID_TARGET_VIEWS: tuple[tuple[str, ...], ...] = ((), ("weak",), ("weak", "strong"))


# -- what the engine does, reproduced for the checks ----------------------------------------------
def engine_start_step(start: float, total_steps: int) -> int:
    """The step at which a group with ``start`` joins the optimizer: ``ceil(start * total_steps)``."""
    return math.ceil(start * total_steps)


def apply_engine_trainability(
    modules: Iterable[nn.Module], groups: list[ParamGroup], step: int, total_steps: int
) -> set[int]:
    """Set ``requires_grad`` as the engine does at ``step``: True for the parameters of groups that
    have joined, False for every other parameter of ``modules``. Returns the ids of the trainable ones."""
    enabled = {id(p) for g in groups if engine_start_step(g.start, total_steps) <= step for p in g.params}
    for module in modules:
        for p in module.parameters():
            p.requires_grad_(id(p) in enabled)
    return enabled


# -- the conformance check -------------------------------------------------------------------
def check_strategy(cls: type[Strategy], params: Any = None, *, seed: int = 0, total_steps: int = 10) -> None:
    """Check that strategy class ``cls`` honours the engine's contract; ``AssertionError`` if not.

    Checks: metadata (``name``, a docstring whose first line is one whole sentence, ``Params`` a
    dataclass whose fields all have defaults,
    valid ``target_views``, boolean ``trains_backbone``/``accepts_features``/``needs_teacher``); ``setup`` and
    ``param_groups`` work and the groups are well formed (each parameter once, only the model's
    or the strategy's own, no backbone parameter when ``trains_backbone`` is False); at the first
    and the last step, with ``requires_grad`` set as the engine would, ``training_step`` returns a
    :class:`StepOutput` with a finite scalar loss without calling ``backward()`` itself, and one
    backward reaches every parameter of every group that has joined and no other parameter (nor the
    teacher's); a strategy that ``accepts_features`` also works on cached features (N×D);
    the strategy's ``state_dict`` loads into a fresh instance; two runs with one seed agree exactly.
    ``params`` is a mapping of overrides, a ``Params`` instance, or None for the defaults.
    It runs single-threaded (restoring the thread count after): on so tiny a model one thread is
    the fastest, and a busy machine cannot slow it down with waiting threads.
    """
    _check_metadata(cls)
    resolved = _resolve_params(cls, params)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        first = _run(cls, resolved, seed, total_steps)
        second = _run(cls, resolved, seed, total_steps)
    finally:
        torch.set_num_threads(threads)
    differ = sorted(set(first) ^ set(second))
    _require(not differ, f"{cls.__name__}: two runs with seed {seed} differ in what they produce: {differ[:3]}")
    for key, value in first.items():
        other = second[key]
        if isinstance(value, Tensor):
            if not torch.equal(value, other):
                raise AssertionError(
                    f"{cls.__name__}: two runs with seed {seed} differ in {key} "
                    f"({value.flatten()[:3].tolist()} vs {other.flatten()[:3].tolist()}); "
                    "draw randomness only from torch's global generator"
                )
        else:
            _require(value == other, f"{cls.__name__}: two runs with seed {seed} differ in {key}")


def _check_metadata(cls: type[Strategy]) -> None:
    _require(isinstance(cls, type) and issubclass(cls, Strategy), f"{cls!r} must be a subclass of tlbench.Strategy")
    who = cls.__name__
    _require(
        isinstance(cls.name, str) and NAME_PATTERN.fullmatch(cls.name) is not None,
        f"{who}.name must be the name suites use, and the registry's rule holds for it: {NAME_RULE}; got {cls.name!r}",
    )
    _require(
        bool((cls.__doc__ or "").strip()),
        f"{who} needs a docstring naming the method, its paper and each parameter's meaning and default",
    )
    _check_summary_line(cls, "strategies")
    _require(
        isinstance(cls.Params, type) and dataclasses.is_dataclass(cls.Params),
        f"{who}.Params must be a dataclass of the strategy's parameters, got {cls.Params!r}",
    )
    missing = [
        f.name
        for f in dataclasses.fields(cls.Params)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    _require(
        not missing, f"{who}.Params field(s) {', '.join(missing)} have no default; give each its published default"
    )
    try:
        cls.default_params()
    except Exception as exc:
        raise AssertionError(f"{who}.Params() with its defaults failed: {type(exc).__name__}: {exc}") from exc
    _require(
        tuple(cls.target_views) in VALID_TARGET_VIEWS,
        f"{who}.target_views must be one of {VALID_TARGET_VIEWS}, got {cls.target_views!r}",
    )
    _require(isinstance(cls.target_views, tuple), f"{who}.target_views must be a tuple, got {cls.target_views!r}")
    for flag in ("trains_backbone", "accepts_features", "needs_teacher"):
        _require(
            isinstance(getattr(cls, flag), bool), f"{who}.{flag} must be True or False, got {getattr(cls, flag)!r}"
        )


def _resolve_params(cls: type[Strategy], params: Any) -> Any:
    if params is None or isinstance(params, Mapping):
        try:
            return cls.parse_params(dict(params or {}))
        except Exception as exc:
            raise AssertionError(
                f"{cls.__name__}.parse_params({dict(params or {})!r}) failed: {type(exc).__name__}: {exc}"
            ) from exc
    _require(isinstance(params, cls.Params), f"params must be a mapping or a {cls.__name__}.Params, got {params!r}")
    return params


def _new_strategy(
    cls: type[Strategy], params: Any, model: TransferModel, total_steps: int, seed: int, teacher: Any = None
) -> Strategy:
    strategy = cls(copy.deepcopy(params))
    ctx = SetupContext(
        num_classes=model.num_classes,
        feature_dim=model.feature_dim,
        embed_dim=model.embed_dim,
        total_steps=total_steps,
        device=torch.device("cpu"),
        seed=seed,
        teacher=teacher,
    )
    try:
        strategy.setup(model, ctx)
    except Exception as exc:
        raise AssertionError(f"{cls.__name__}.setup failed: {type(exc).__name__}: {exc}") from exc
    return strategy.to(torch.device("cpu"))


def _check_groups(cls: type[Strategy], groups: Any, model: TransferModel, strategy: Strategy) -> None:
    who = cls.__name__
    if not (isinstance(groups, list) and all(isinstance(g, ParamGroup) for g in groups)):
        got = type(groups).__name__ if not isinstance(groups, list) else [type(g).__name__ for g in groups]
        raise AssertionError(f"{who}.param_groups must return a list of tlbench.ParamGroup, got {got}")
    only_test_time = set(cls.protocols) == {"test_time"}  # may train nothing (BN-adapt: batch statistics)
    _require(bool(groups) or only_test_time, f"{who}.param_groups returned no group: nothing would train")
    names = [g.name for g in groups]
    _require(len(set(names)) == len(names), f"{who}.param_groups: group names must be unique, got {names}")
    owned = {id(p) for p in model.parameters()} | {id(p) for p in strategy.parameters()}
    backbone = {id(p) for p in model.backbone.parameters()}
    seen: dict[int, str] = {}
    for g in groups:
        _require(isinstance(g.name, str) and bool(g.name), f"{who}: every group needs a name, got {g.name!r}")
        _require(bool(g.params), f"{who}: group {g.name!r} has no parameters")
        for p in g.params:
            _require(
                isinstance(p, nn.Parameter), f"{who}: group {g.name!r} holds a {type(p).__name__}, not an nn.Parameter"
            )
            _require(id(p) in owned, f"{who}: group {g.name!r} holds a parameter of neither the model nor the strategy")
            _require(id(p) not in seen, f"{who}: a parameter is in both group {seen.get(id(p))!r} and group {g.name!r}")
            seen[id(p)] = g.name
            if not cls.trains_backbone:
                _require(
                    id(p) not in backbone,
                    f"{who}.trains_backbone is False but group {g.name!r} holds backbone parameters",
                )
        _require(
            math.isfinite(g.lr_scale) and g.lr_scale > 0,
            f"{who}: group {g.name!r} has lr_scale {g.lr_scale}; it must be a positive number",
        )
        _require(0.0 <= g.start <= 1.0, f"{who}: group {g.name!r} has start {g.start}; it must be a fraction in [0, 1]")
        _require(
            g.weight_decay is None or g.weight_decay >= 0,
            f"{who}: group {g.name!r} has weight_decay {g.weight_decay}; use None or a value >= 0",
        )
    _require(
        not groups or any(g.start == 0 for g in groups),
        f"{who}: no group starts at 0, so the first step would train nothing",
    )
    _check_own_modules_train(who, strategy, seen)


def _check_own_modules_train(who: str, strategy: Strategy, grouped: dict[int, str]) -> None:
    """A module the strategy built (a discriminator, a projection head) must be in some group:
    left out, it never trains. Parameters the strategy froze itself (``requires_grad=False`` at
    setup, e.g. an EMA copy) are exempt."""
    left_out: dict[str, list[str]] = {}
    for name, p in strategy.named_parameters():
        if p.requires_grad and id(p) not in grouped:
            left_out.setdefault(name.split(".")[0], []).append(name)
    if left_out:
        module, names = next(iter(left_out.items()))
        raise AssertionError(
            f"{who}: its own module {module!r} ({len(names)} parameter(s), e.g. {names[0]}) is in no "
            f"parameter group, so it never trains; add a ParamGroup for it in param_groups "
            f"(or set requires_grad=False in setup if it must stay fixed)"
        )


def _score_recorder(who: str, batch: Batch, calls: list[int]) -> Callable[[Tensor, Tensor, Tensor], None]:
    def score(index: Tensor, labels: Tensor, mask: Tensor) -> None:
        n = 0 if batch.target is None else len(batch.target)
        for what, t in (("index", index), ("pseudo_labels", labels), ("mask", mask)):
            _require(
                isinstance(t, Tensor) and t.shape == (n,),
                f"{who}: score_pseudo_labels {what} must be a tensor of shape ({n},), got "
                f"{getattr(t, 'shape', type(t).__name__)}",
            )
        _require(mask.dtype == torch.bool, f"{who}: score_pseudo_labels mask must be bool, got {mask.dtype}")
        _require(not labels.is_floating_point(), f"{who}: score_pseudo_labels labels must be class indices")
        calls.append(1)

    return score


def _run(cls: type[Strategy], params: Any, seed: int, total_steps: int) -> dict[str, Any]:
    """One seeded run of the checks; returns what must be identical across runs."""
    who = cls.__name__
    record: dict[str, Any] = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = make_tiny_model(seed)
        teacher = None
        if cls.needs_teacher:
            teacher = make_tiny_model(seed + 100).eval()  # its parameters keep requires_grad: a missing no_grad shows
        strategy = _new_strategy(cls, params, model, total_steps, seed, teacher)
        groups = strategy.param_groups(model)
        _check_groups(cls, groups, model, strategy)

        named = {id(p): f"model.{n}" for n, p in model.named_parameters()}
        named.update({id(p): f"strategy.{n}" for n, p in strategy.named_parameters()})
        by_id = {id(p): p for p in list(model.parameters()) + list(strategy.parameters())}
        reached: dict[int, bool] = {}  # param id -> got a gradient at a step where it trained
        inputs = ("images", "features") if cls.accepts_features else ("images",)
        # on features the backbone is frozen, as the engine serves them only then (recipe.trainable: head)
        on_features = restrict_to_trainable(groups, model, Recipe.model_validate({"trainable": "head"}))
        for step in (0, total_steps - 1):
            for kind in inputs:
                trained = on_features if kind == "features" else groups
                enabled = apply_engine_trainability((model, strategy), trained, step, total_steps)
                model.train()
                strategy.train()
                set_batchnorm_eval_where_frozen(model)
                batch = make_tiny_batch(cls.target_views, seed=seed + step)
                if not {"uda", "finetune"} & set(cls.protocols):  # source-free: batches have no source rows
                    batch = dataclasses.replace(batch, source=batch.source[:0], source_labels=batch.source_labels[:0])
                if kind == "features":
                    batch = as_features(model, batch)
                calls: list[int] = []
                ctx = StepContext(
                    step=step,
                    total_steps=total_steps,
                    model=model,
                    device=torch.device("cpu"),
                    num_classes=model.num_classes,
                    teacher=teacher,
                    score_pseudo_labels=_score_recorder(who, batch, calls),
                )
                if strategy.target_refreshes:  # the engine's whole-target pass, here the batch's target
                    strategy.refresh(target_pass(model, batch), ctx)
                for p in by_id.values():
                    p.grad = None
                where = f"{who}.training_step at step {step}/{total_steps} on {kind}"
                checked = _StepCheck(who, where, named, by_id, enabled, reached, teacher, groups, trained)
                if type(strategy).training_updates is Strategy.training_updates:
                    losses = [checked.single_update(strategy, batch, ctx)]
                else:
                    losses = checked.updates(strategy, batch, ctx)
                for i, loss in enumerate(losses):
                    record[f"loss[{step},{kind},{i}]"] = loss
                record[f"pseudo-label scoring calls[{step},{kind}]"] = len(calls)
                record.update({f"{k}[{step},{kind}]": v for k, v in checked.grads.items()})
        missing = [named[pid] for pid, ok in reached.items() if not ok]
        _require(
            not missing,
            f"{who}: no gradient reached {len(missing)} parameter(s) the strategy declares "
            f"trainable, e.g. {missing[:3]}; leave unused parameters out of param_groups",
        )

        _check_state_roundtrip(cls, params, strategy, seed, total_steps)
        for k, v in strategy.state_dict().items():
            record[f"state {k}"] = v.detach().clone() if isinstance(v, Tensor) else v
    return record


class _StepCheck:
    """One step of the check: the strategy's update(s), each checked as the engine would run it."""

    def __init__(
        self, who, where, named, by_id, enabled, reached, teacher, groups: list[ParamGroup], trained: list[ParamGroup]
    ):
        self.who, self.where, self.named, self.by_id = who, where, named, by_id
        self.enabled, self.reached, self.teacher = enabled, reached, teacher
        self.group_of = {id(p): g.name for g in trained for p in g.params}
        self.group_names = [g.name for g in groups]  # declared; ``trained`` may have emptied some
        self.grads: dict[str, Tensor] = {}

    def single_update(self, strategy: Strategy, batch: Batch, ctx: StepContext) -> Tensor:
        """``training_step``'s one update: one backward, no optimizer step needed after it."""
        try:
            out = strategy.training_step(batch, ctx)
        except AssertionError:
            raise
        except Exception as exc:
            raise AssertionError(f"{self.where} raised {type(exc).__name__}: {exc}") from exc
        _check_output(self.where, out, bool(self.enabled))
        self._backward(self.where, out.loss, None)
        return out.loss.detach().clone()

    def updates(self, strategy: Strategy, batch: Batch, ctx: StepContext) -> list[Tensor]:
        """``training_updates``: each update checked, then applied (plain SGD over its groups) so
        the next one is computed on moved parameters, as in the engine."""
        where = self.where.replace("training_step", "training_updates")
        stream = iter(strategy.training_updates(batch, ctx))
        losses: list[Tensor] = []
        while True:
            try:
                update = next(stream, None)
            except AssertionError:
                raise
            except Exception as exc:
                raise AssertionError(f"{where} raised {type(exc).__name__}: {exc}") from exc
            if update is None:
                break
            here = f"{where}, update {len(losses)}" + (f" ({update.name!r})" if getattr(update, "name", "") else "")
            _require(isinstance(update, Update), f"{here}: yield tlbench.Update objects, got {type(update).__name__}")
            _require(
                update.groups is None
                or (isinstance(update.groups, tuple) and set(update.groups) <= set(self.group_names)),
                f"{here}: groups must be None or a tuple of declared group names "
                f"{self.group_names}, got {update.groups!r}",
            )
            _check_output(here, StepOutput(update.loss, update.metrics), bool(self.enabled))
            if update.groups is not None and not set(update.groups) & set(self.group_of.values()):
                losses.append(update.loss.detach().clone())  # every group it names is frozen: the engine skips it
                continue
            self._backward(here, update.loss, update.groups)
            with torch.no_grad():
                for pid, p in self.by_id.items():
                    if p.grad is not None and (update.groups is None or self.group_of.get(pid) in update.groups):
                        p.add_(p.grad, alpha=-0.01)
                    p.grad = None
            losses.append(update.loss.detach().clone())
        _require(bool(losses), f"{where} yielded no update: a step must train something")
        return losses

    def _backward(self, where: str, loss: Tensor, groups: tuple[str, ...] | None) -> None:
        computed = [n for pid, n in self.named.items() if self.by_id[pid].grad is not None]
        _require(
            not computed,
            f"{where} computed gradients itself ({computed[:3]}...): return the loss, the engine calls backward()",
        )
        loss.backward()
        moved: set[str] = set()
        for pid, n in self.named.items():
            p = self.by_id[pid]
            if pid in self.enabled:
                counts = groups is None or self.group_of.get(pid) in groups
                if counts and p.grad is not None:
                    self.reached[pid] = True
                    moved.add(self.group_of.get(pid, ""))
                else:
                    self.reached.setdefault(pid, False)
            else:
                _require(
                    p.grad is None,
                    f"{where}: gradient reached {n}, which does not train at "
                    "this step (in no group, or its group has not joined yet)",
                )
            _require(
                p.requires_grad == (pid in self.enabled),
                f"{where} changed requires_grad of {n}; declare what trains in param_groups instead",
            )
            if p.grad is not None:
                self.grads[f"grad of {n}"] = p.grad.detach().clone()
        joined = {self.group_of[pid] for pid in self.enabled if pid in self.group_of}
        idle = sorted(g for g in (groups or ()) if g in joined and g not in moved)
        _require(not idle, f"{where} names group(s) {idle} but no gradient reaches them")
        if self.teacher is not None:
            _require(
                all(p.grad is None for p in self.teacher.parameters()),
                f"{where}: gradient reached the teacher; call it under torch.no_grad()",
            )


def _check_output(where: str, out: Any, expects_grad: bool) -> None:
    _require(isinstance(out, StepOutput), f"{where} must return a tlbench.StepOutput, got {type(out).__name__}")
    loss = out.loss
    _require(
        isinstance(loss, Tensor) and loss.dim() == 0,
        f"{where}: loss must be a scalar tensor, got {getattr(loss, 'shape', type(loss).__name__)}",
    )
    _require(loss.is_floating_point(), f"{where}: loss must be a floating-point tensor, got {loss.dtype}")
    _require(bool(torch.isfinite(loss)), f"{where}: loss is not finite ({loss.item()})")
    if expects_grad:
        _require(loss.requires_grad, f"{where}: loss does not depend on any trainable parameter")
    _require(isinstance(out.metrics, dict), f"{where}: metrics must be a dict, got {type(out.metrics).__name__}")
    for key, value in out.metrics.items():
        _require(isinstance(key, str), f"{where}: metric names must be strings, got {key!r}")
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool)) or (
            isinstance(value, Tensor) and value.numel() == 1
        )
        if not ok:
            raise AssertionError(f"{where}: metric {key!r} must be a number or a one-element tensor, got {value!r}")


def _check_state_roundtrip(cls: type[Strategy], params: Any, strategy: Strategy, seed: int, total_steps: int) -> None:
    who = cls.__name__
    state = strategy.state_dict()
    torch.manual_seed(seed + 12345)  # a fresh instance initialised differently
    teacher = make_tiny_model(seed + 100).eval() if cls.needs_teacher else None
    fresh = _new_strategy(cls, params, make_tiny_model(seed + 7), total_steps, seed, teacher)
    try:
        fresh.load_state_dict(copy.deepcopy(state), strict=True)
    except Exception as exc:
        raise AssertionError(
            f"{who}: state_dict does not load into a fresh, set-up instance: {type(exc).__name__}: {exc}"
        ) from exc
    reloaded = fresh.state_dict()
    _require(list(reloaded) == list(state), f"{who}: state_dict keys differ after a round trip")
    for key, value in state.items():
        if isinstance(value, Tensor):
            _require(torch.equal(value, reloaded[key]), f"{who}: state_dict entry {key!r} differs after a round trip")
