"""Conformance kit for strategy plugin authors (also a pytest plugin: ``pytest11`` entry point).

Call :func:`check_strategy` from your plugin's tests to learn, in seconds on a CPU, whether a
strategy honours the contract the engine relies on::

    from tlbench.testing import check_strategy
    from my_plugin import MyStrategy

    def test_my_strategy_conforms():
        check_strategy(MyStrategy)

With pytest installed, the fixtures ``tiny_backbone``, ``tiny_model`` and ``tiny_batch_factory``
are available in every test session (timm's 99k-parameter ``test_efficientnet``, 3 classes,
3×32×32 images). The helpers behind them (:func:`make_tiny_model`, :func:`make_tiny_batch`)
work without pytest. Every failed check raises ``AssertionError`` saying what was wrong.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from tlbench.model import TransferModel, set_batchnorm_eval_where_frozen
from tlbench.strategy import Batch, ParamGroup, SetupContext, StepContext, StepOutput, Strategy

TINY_BACKBONE = "test_efficientnet"
TINY_CLASSES = 3
TINY_BOTTLENECK = 16
TINY_IMAGE_SIZE = 32
TINY_BATCH_SIZE = 4
VALID_TARGET_VIEWS: tuple[tuple[str, ...], ...] = ((), ("weak",), ("weak", "strong"))

__all__ = [
    "check_strategy", "make_tiny_backbone", "make_tiny_model", "make_tiny_batch",
    "engine_start_step", "apply_engine_trainability", "VALID_TARGET_VIEWS",
]


# -- tiny parts ------------------------------------------------------------------------------
def make_tiny_backbone(seed: int = 0) -> nn.Module:
    """timm's ``test_efficientnet`` without classifier (pooled 256-d features), randomly initialised
    from ``seed`` without touching the caller's random state."""
    import timm

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return timm.create_model(TINY_BACKBONE, pretrained=False, num_classes=0)


def make_tiny_model(seed: int = 0, num_classes: int = TINY_CLASSES,
                    bottleneck_dim: int = TINY_BOTTLENECK) -> TransferModel:
    """A :class:`TransferModel` on the tiny backbone (3 classes, 16-unit bottleneck by default)."""
    backbone = make_tiny_backbone(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        return TransferModel(backbone, num_classes, bottleneck_dim=bottleneck_dim, backbone_name=TINY_BACKBONE)


def make_tiny_batch(target_views: Iterable[str] = ("weak", "strong"), *, batch_size: int = TINY_BATCH_SIZE,
                    image_size: int = TINY_IMAGE_SIZE, num_classes: int = TINY_CLASSES, seed: int = 0,
                    target_shift: float = 0.5, device: torch.device | str = "cpu") -> Batch:
    """A two-domain batch of random normalised images; the target domain is shifted by ``target_shift``.

    Source labels cycle through every class. ``target_views`` says which target views the batch
    carries, as a strategy's ``target_views`` does.
    """
    views = tuple(target_views)
    g = torch.Generator().manual_seed(seed)
    shape = (batch_size, 3, image_size, image_size)
    source = torch.randn(shape, generator=g)
    labels = torch.arange(batch_size) % num_classes
    target = torch.randn(shape, generator=g) + target_shift if "weak" in views else None
    strong = (target + 0.3 * torch.randn(shape, generator=g)) if "strong" in views and target is not None else None
    index = torch.arange(batch_size) if target is not None else None
    to = (lambda t: None if t is None else t.to(device))
    return Batch(source=to(source), source_labels=to(labels), target=to(target),
                 target_strong=to(strong), target_index=to(index))


# -- what the engine does, reproduced for the checks ----------------------------------------------
def engine_start_step(start: float, total_steps: int) -> int:
    """The step at which a group with ``start`` joins the optimizer: ``ceil(start * total_steps)``."""
    return math.ceil(start * total_steps)


def apply_engine_trainability(modules: Iterable[nn.Module], groups: list[ParamGroup], step: int,
                              total_steps: int) -> set[int]:
    """Set ``requires_grad`` as the engine does at ``step``: True for the parameters of groups that
    have joined, False for every other parameter of ``modules``. Returns the ids of the trainable ones."""
    enabled = {id(p) for g in groups if engine_start_step(g.start, total_steps) <= step for p in g.params}
    for module in modules:
        for p in module.parameters():
            p.requires_grad_(id(p) in enabled)
    return enabled


# -- the conformance check -------------------------------------------------------------------
def check_strategy(cls: type, params: Any = None, *, seed: int = 0, total_steps: int = 10) -> None:
    """Check that strategy class ``cls`` honours the engine's contract; ``AssertionError`` if not.

    Checks: metadata (``name``, a docstring, ``Params`` a dataclass whose fields all have defaults,
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
                raise AssertionError(f"{cls.__name__}: two runs with seed {seed} differ in {key} "
                                     f"({value.flatten()[:3].tolist()} vs {other.flatten()[:3].tolist()}); "
                                     "draw randomness only from torch's global generator")
        else:
            _require(value == other, f"{cls.__name__}: two runs with seed {seed} differ in {key}")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def _check_metadata(cls: type) -> None:
    _require(isinstance(cls, type) and issubclass(cls, Strategy),
             f"{cls!r} must be a subclass of tlbench.Strategy")
    who = cls.__name__
    _require(isinstance(cls.name, str) and bool(cls.name) and not any(c.isspace() for c in cls.name),
             f"{who}.name must be a non-empty string without spaces (the name suites use), got {cls.name!r}")
    _require(bool((cls.__doc__ or "").strip()),
             f"{who} needs a docstring naming the method, its paper and each parameter's meaning and default")
    _require(isinstance(cls.Params, type) and dataclasses.is_dataclass(cls.Params),
             f"{who}.Params must be a dataclass of the strategy's parameters, got {cls.Params!r}")
    missing = [f.name for f in dataclasses.fields(cls.Params)
               if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    _require(not missing, f"{who}.Params field(s) {', '.join(missing)} have no default; give each its published default")
    try:
        cls.default_params()
    except Exception as exc:
        raise AssertionError(f"{who}.Params() with its defaults failed: {type(exc).__name__}: {exc}") from exc
    _require(tuple(cls.target_views) in VALID_TARGET_VIEWS,
             f"{who}.target_views must be one of {VALID_TARGET_VIEWS}, got {cls.target_views!r}")
    _require(isinstance(cls.target_views, tuple), f"{who}.target_views must be a tuple, got {cls.target_views!r}")
    for flag in ("trains_backbone", "accepts_features", "needs_teacher"):
        _require(isinstance(getattr(cls, flag), bool), f"{who}.{flag} must be True or False, got {getattr(cls, flag)!r}")


def _resolve_params(cls: type, params: Any) -> Any:
    if params is None or isinstance(params, Mapping):
        try:
            return cls.parse_params(dict(params or {}))
        except Exception as exc:
            raise AssertionError(f"{cls.__name__}.parse_params({dict(params or {})!r}) failed: "
                                 f"{type(exc).__name__}: {exc}") from exc
    _require(isinstance(params, cls.Params), f"params must be a mapping or a {cls.__name__}.Params, got {params!r}")
    return params


def _new_strategy(cls: type, params: Any, model: TransferModel, total_steps: int, seed: int) -> Strategy:
    strategy = cls(copy.deepcopy(params))
    ctx = SetupContext(num_classes=model.num_classes, feature_dim=model.feature_dim, embed_dim=model.embed_dim,
                       total_steps=total_steps, device=torch.device("cpu"), seed=seed)
    try:
        strategy.setup(model, ctx)
    except Exception as exc:
        raise AssertionError(f"{cls.__name__}.setup failed: {type(exc).__name__}: {exc}") from exc
    return strategy.to(torch.device("cpu"))


def _check_groups(cls: type, groups: Any, model: TransferModel, strategy: Strategy) -> None:
    who = cls.__name__
    if not (isinstance(groups, list) and all(isinstance(g, ParamGroup) for g in groups)):
        got = type(groups).__name__ if not isinstance(groups, list) else [type(g).__name__ for g in groups]
        raise AssertionError(f"{who}.param_groups must return a list of tlbench.ParamGroup, got {got}")
    _require(bool(groups), f"{who}.param_groups returned no group: nothing would train")
    names = [g.name for g in groups]
    _require(len(set(names)) == len(names), f"{who}.param_groups: group names must be unique, got {names}")
    owned = {id(p) for p in model.parameters()} | {id(p) for p in strategy.parameters()}
    backbone = {id(p) for p in model.backbone.parameters()}
    seen: dict[int, str] = {}
    for g in groups:
        _require(isinstance(g.name, str) and bool(g.name), f"{who}: every group needs a name, got {g.name!r}")
        _require(bool(g.params), f"{who}: group {g.name!r} has no parameters")
        for p in g.params:
            _require(isinstance(p, nn.Parameter), f"{who}: group {g.name!r} holds a {type(p).__name__}, not an nn.Parameter")
            _require(id(p) in owned, f"{who}: group {g.name!r} holds a parameter of neither the model nor the strategy")
            _require(id(p) not in seen, f"{who}: a parameter is in both group {seen.get(id(p))!r} and group {g.name!r}")
            seen[id(p)] = g.name
            if not cls.trains_backbone:
                _require(id(p) not in backbone, f"{who}.trains_backbone is False but group {g.name!r} holds "
                                                "backbone parameters")
        _require(math.isfinite(g.lr_scale) and g.lr_scale > 0,
                 f"{who}: group {g.name!r} has lr_scale {g.lr_scale}; it must be a positive number")
        _require(0.0 <= g.start <= 1.0, f"{who}: group {g.name!r} has start {g.start}; it must be a fraction in [0, 1]")
        _require(g.weight_decay is None or g.weight_decay >= 0,
                 f"{who}: group {g.name!r} has weight_decay {g.weight_decay}; use None or a value >= 0")
    _require(any(g.start == 0 for g in groups), f"{who}: no group starts at 0, so the first step would train nothing")


def _score_recorder(who: str, batch: Batch, calls: list[int]) -> Callable[[Tensor, Tensor, Tensor], None]:
    def score(index: Tensor, labels: Tensor, mask: Tensor) -> None:
        n = 0 if batch.target is None else len(batch.target)
        for what, t in (("index", index), ("pseudo_labels", labels), ("mask", mask)):
            _require(isinstance(t, Tensor) and t.shape == (n,),
                     f"{who}: score_pseudo_labels {what} must be a tensor of shape ({n},), got "
                     f"{getattr(t, 'shape', type(t).__name__)}")
        _require(mask.dtype == torch.bool, f"{who}: score_pseudo_labels mask must be bool, got {mask.dtype}")
        _require(not labels.is_floating_point(), f"{who}: score_pseudo_labels labels must be class indices")
        calls.append(1)

    return score


def _as_features(model: TransferModel, batch: Batch) -> Batch:
    """The batch the engine serves a frozen backbone: pooled features instead of images."""
    with torch.no_grad():
        f = (lambda t: None if t is None else model.features(t).detach())
        return dataclasses.replace(batch, source=f(batch.source), target=f(batch.target),
                                   target_strong=f(batch.target_strong))


def _run(cls: type, params: Any, seed: int, total_steps: int) -> dict[str, Any]:
    """One seeded run of the checks; returns what must be identical across runs."""
    who = cls.__name__
    record: dict[str, Any] = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = make_tiny_model(seed)
        teacher = None
        if cls.needs_teacher:
            teacher = make_tiny_model(seed + 100).eval()  # its parameters keep requires_grad: a missing no_grad shows
        strategy = _new_strategy(cls, params, model, total_steps, seed)
        groups = strategy.param_groups(model)
        _check_groups(cls, groups, model, strategy)

        named = {id(p): f"model.{n}" for n, p in model.named_parameters()}
        named.update({id(p): f"strategy.{n}" for n, p in strategy.named_parameters()})
        by_id = {id(p): p for p in list(model.parameters()) + list(strategy.parameters())}
        reached: dict[int, bool] = {}  # param id -> got a gradient at a step where it trained
        inputs = ("images", "features") if cls.accepts_features else ("images",)
        for step in (0, total_steps - 1):
            enabled = apply_engine_trainability((model, strategy), groups, step, total_steps)
            model.train()
            strategy.train()
            set_batchnorm_eval_where_frozen(model)
            for kind in inputs:
                batch = make_tiny_batch(cls.target_views, seed=seed + step)
                if kind == "features":
                    batch = _as_features(model, batch)
                calls: list[int] = []
                ctx = StepContext(step=step, total_steps=total_steps, model=model, device=torch.device("cpu"),
                                  num_classes=model.num_classes, teacher=teacher,
                                  score_pseudo_labels=_score_recorder(who, batch, calls))
                for p in by_id.values():
                    p.grad = None
                where = f"{who}.training_step at step {step}/{total_steps} on {kind}"
                try:
                    out = strategy.training_step(batch, ctx)
                except AssertionError:
                    raise
                except Exception as exc:
                    raise AssertionError(f"{where} raised {type(exc).__name__}: {exc}") from exc
                _check_output(where, out, bool(enabled))
                grads = [n for pid, n in named.items() if by_id[pid].grad is not None]
                _require(not grads, f"{where} computed gradients itself ({grads[:3]}...): return the loss, "
                                    "the engine calls backward()")
                out.loss.backward()
                for pid, n in named.items():
                    p = by_id[pid]
                    if pid in enabled:
                        reached[pid] = reached.get(pid, False) or p.grad is not None
                    else:
                        _require(p.grad is None, f"{where}: gradient reached {n}, which does not train at "
                                                 "this step (in no group, or its group has not joined yet)")
                    _require(p.requires_grad == (pid in enabled),
                             f"{where} changed requires_grad of {n}; declare what trains in param_groups instead")
                if teacher is not None:
                    _require(all(p.grad is None for p in teacher.parameters()),
                             f"{where}: gradient reached the teacher; call it under torch.no_grad()")
                record[f"loss[{step},{kind}]"] = out.loss.detach().clone()
                record[f"pseudo-label scoring calls[{step},{kind}]"] = len(calls)
                for pid, n in named.items():
                    g = by_id[pid].grad
                    if g is not None:
                        record[f"grad of {n}[{step},{kind}]"] = g.detach().clone()
        missing = [named[pid] for pid, ok in reached.items() if not ok]
        _require(not missing, f"{who}: no gradient reached {len(missing)} parameter(s) the strategy declares "
                              f"trainable, e.g. {missing[:3]}; leave unused parameters out of param_groups")

        _check_state_roundtrip(cls, params, strategy, seed, total_steps)
        for k, v in strategy.state_dict().items():
            record[f"state {k}"] = v.detach().clone() if isinstance(v, Tensor) else v
    return record


def _check_output(where: str, out: Any, expects_grad: bool) -> None:
    _require(isinstance(out, StepOutput), f"{where} must return a tlbench.StepOutput, got {type(out).__name__}")
    loss = out.loss
    _require(isinstance(loss, Tensor) and loss.dim() == 0,
             f"{where}: loss must be a scalar tensor, got {getattr(loss, 'shape', type(loss).__name__)}")
    _require(loss.is_floating_point(), f"{where}: loss must be a floating-point tensor, got {loss.dtype}")
    _require(bool(torch.isfinite(loss)), f"{where}: loss is not finite ({loss.item()})")
    if expects_grad:
        _require(loss.requires_grad, f"{where}: loss does not depend on any trainable parameter")
    _require(isinstance(out.metrics, dict), f"{where}: metrics must be a dict, got {type(out.metrics).__name__}")
    for key, value in out.metrics.items():
        _require(isinstance(key, str), f"{where}: metric names must be strings, got {key!r}")
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool)) or (
            isinstance(value, Tensor) and value.numel() == 1)
        if not ok:
            raise AssertionError(f"{where}: metric {key!r} must be a number or a one-element tensor, got {value!r}")


def _check_state_roundtrip(cls: type, params: Any, strategy: Strategy, seed: int, total_steps: int) -> None:
    who = cls.__name__
    state = strategy.state_dict()
    torch.manual_seed(seed + 12345)  # a fresh instance initialised differently
    fresh = _new_strategy(cls, params, make_tiny_model(seed + 7), total_steps, seed)
    try:
        fresh.load_state_dict(copy.deepcopy(state), strict=True)
    except Exception as exc:
        raise AssertionError(f"{who}: state_dict does not load into a fresh, set-up instance: "
                             f"{type(exc).__name__}: {exc}") from exc
    reloaded = fresh.state_dict()
    _require(list(reloaded) == list(state), f"{who}: state_dict keys differ after a round trip")
    for key, value in state.items():
        if isinstance(value, Tensor):
            _require(torch.equal(value, reloaded[key]), f"{who}: state_dict entry {key!r} differs after a round trip")


# -- pytest fixtures -------------------------------------------------------------------------
try:
    import pytest
except ImportError:  # the checks above work without pytest
    pytest = None  # type: ignore[assignment]

if pytest is not None:

    @pytest.fixture
    def tiny_backbone() -> nn.Module:
        """timm ``test_efficientnet`` with ``num_classes=0`` (256-d pooled features), seed 0."""
        return make_tiny_backbone()

    @pytest.fixture
    def tiny_model() -> TransferModel:
        """A :class:`TransferModel` on the tiny backbone: 3 classes, 16-unit bottleneck."""
        return make_tiny_model()

    @pytest.fixture
    def tiny_batch_factory() -> Callable[..., Batch]:
        """:func:`make_tiny_batch`: call it with the target views (and size, seed...) you need."""
        return make_tiny_batch


# == conformance of datasets, shifts and reporters ================================================
# (appended: the same idea as check_strategy for the other plugin kinds; each raises AssertionError)
import tempfile as _tempfile
from pathlib import Path as _Path

from tlbench.data import DEFAULT_SEVERITY, Dataset, Domain, DomainSpec, Shift
from tlbench.errors import UserError
from tlbench.reporting import Reporter

#: the image side check_dataset asks for: small, and not the native size of any common dataset
DATASET_CHECK_SIZE = 12
#: batches check_shift transforms: (N, H, W) of uint8 N×3×H×W images
SHIFT_CHECK_SHAPES: tuple[tuple[int, int, int], ...] = ((5, 16, 16), (2, 40, 40))
_UNKNOWN_OPTION = "tlbench_conformance_unknown_option"

__all__ += ["check_dataset", "check_shift", "check_reporter", "sample_records",
            "DATASET_CHECK_SIZE", "SHIFT_CHECK_SHAPES"]


def _check_plugin_name(who: str, name: Any) -> None:
    _require(isinstance(name, str) and bool(name) and not any(c.isspace() for c in name),
             f"{who}.name must be a non-empty string without spaces (the name suites use), got {name!r}")


def _check_docstring(cls: type, what: str) -> None:
    _require(bool((cls.__doc__ or "").strip()),
             f"{cls.__name__} needs a docstring: its first line is what 'tlbench list' shows for {what}")


def _user_error_only(where: str, call: Callable[[], Any]) -> tuple[bool, Any]:
    """``(True, result)``, or ``(False, the UserError)``; any other exception is an AssertionError."""
    try:
        return True, call()
    except UserError as exc:
        return False, exc
    except Exception as exc:
        raise AssertionError(f"{where} raised {type(exc).__name__}: {exc}; problems with the user's data or "
                             "options must be a tlbench.UserError (one line: what is wrong, what would be valid)"
                             ) from exc


# -- datasets ------------------------------------------------------------------------------------
def check_dataset(cls: type, root: Any = None, **options: Any) -> None:
    """Check that dataset class ``cls`` honours the contract tlbench relies on; ``AssertionError`` if not.

    ``root`` and ``options`` are what a suite would give (its data root and ``dataset_options``)
    and must point at data the dataset can load: a tiny generated tree is best (every domain is
    loaded, twice for the first one). Checks: metadata (``name``, a docstring, ``option_help``
    a mapping of option names to help texts, ``aliases`` naming listed domains); an unknown option
    is a :class:`tlbench.UserError`; with an empty data root, construction, ``check()`` and
    ``domains()`` fail only with a ``UserError``; with the given data, ``check()`` passes,
    ``domains()`` lists unique names usable in a pair (no ``+``, ``->``, ``,`` or spaces) and
    ``resolve`` maps every name and alias; ``fingerprint`` is a non-empty string, the same across
    calls and across instances; ``load(domain, size)`` returns a :class:`tlbench.Domain` with uint8
    N×3×size×size images, int64 labels in ``range(len(classes))``, the same class names in every
    domain; loading the first domain again on a fresh instance gives the same pixels and labels.
    """
    who = getattr(cls, "__name__", repr(cls))
    _require(isinstance(cls, type) and issubclass(cls, Dataset), f"{cls!r} must be a subclass of tlbench.Dataset")
    _check_plugin_name(who, cls.name)
    _check_docstring(cls, "datasets")
    _require(isinstance(cls.option_help, Mapping), f"{who}.option_help must be a dict option -> help text")
    for key, text in cls.option_help.items():
        _require(isinstance(key, str) and isinstance(text, str) and bool(text.strip()),
                 f"{who}.option_help[{key!r}] must be a non-empty help text, got {text!r}")
    _require(isinstance(cls.aliases, Mapping), f"{who}.aliases must be a dict alias -> domain name")
    unknown = sorted(set(options) - set(cls.option_help))
    _require(not unknown, f"option(s) {', '.join(unknown)} passed to check_dataset are not in {who}.option_help")

    ok, err = _user_error_only(f"{who}(root, {_UNKNOWN_OPTION}=1)",
                               lambda: cls(root, **options, **{_UNKNOWN_OPTION: 1}))
    _require(not ok, f"{who} accepted the unknown option {_UNKNOWN_OPTION!r}; call Dataset.__init__ "
                     "(super().__init__(root, **options)) so a typo in dataset_options is a UserError")
    _check_dataset_without_data(cls, options)

    dataset = _new_dataset(cls, root, options)
    ok, err = _user_error_only(f"{who}.check()", dataset.check)
    _require(ok, f"{who}.check() refused the data given to check_dataset: {err}; pass the root and options "
                 "of a (tiny) copy of the data")
    domains = _check_domain_names(cls, dataset)
    classes: list[str] | None = None
    first: Domain | None = None
    for name in domains:
        fp = _call(f"{who}.fingerprint({name!r})", lambda: dataset.fingerprint(name))
        _require(isinstance(fp, str) and bool(fp), f"{who}.fingerprint({name!r}) must be a non-empty string, got {fp!r}")
        again = _call(f"{who}.fingerprint({name!r})", lambda: dataset.fingerprint(name))
        other = _call(f"{who}.fingerprint({name!r}) on a new instance",
                      lambda: _new_dataset(cls, root, options).fingerprint(name))
        _require(fp == again == other, f"{who}.fingerprint({name!r}) is not stable: {fp!r}, {again!r}, {other!r} "
                                       "(base it on file names, sizes and times, e.g. tlbench.files_fingerprint)")
        domain = _call(f"{who}.load({name!r}, {DATASET_CHECK_SIZE})", lambda: dataset.load(name, DATASET_CHECK_SIZE))
        _check_domain(who, name, domain)
        if classes is None:
            classes, first = list(domain.classes), domain
        _require(list(domain.classes) == classes,
                 f"{who}: domain {name!r} has classes {list(domain.classes)[:5]}... but {domains[0]!r} has "
                 f"{classes[:5]}...; every domain needs the same class list (a label means one class everywhere)")
    assert first is not None
    again = _call(f"{who}.load({domains[0]!r}) on a new instance",
                  lambda: _new_dataset(cls, root, options).load(domains[0], DATASET_CHECK_SIZE))
    _require(torch.equal(again.images, first.images) and torch.equal(again.labels, first.labels),
             f"{who}.load({domains[0]!r}) gives different images or labels on a second call; loading must be "
             "deterministic (sort file lists, draw no random numbers)")


def _call(where: str, call: Callable[[], Any]) -> Any:
    try:
        return call()
    except Exception as exc:
        raise AssertionError(f"{where} raised {type(exc).__name__}: {exc}") from exc


def _new_dataset(cls: type, root: Any, options: Mapping[str, Any]) -> Dataset:
    ok, result = _user_error_only(f"{cls.__name__}(root, **options)", lambda: cls(root, **copy.deepcopy(dict(options))))
    _require(ok, f"{cls.__name__}(root, **options) refused the data given to check_dataset: {result}")
    return result


def _check_dataset_without_data(cls: type, options: Mapping[str, Any]) -> None:
    """Missing data must surface as a UserError before training (construction, check() or domains())."""
    who = cls.__name__
    with _tempfile.TemporaryDirectory(prefix="tlbench-empty-root-") as empty:
        ok, dataset = _user_error_only(f"{who}(<empty data root>, **options)",
                                       lambda: cls(_Path(empty), **copy.deepcopy(dict(options))))
        if not ok:
            return
        ok, _ = _user_error_only(f"{who}.check() with an empty data root", dataset.check)
        if not ok:
            return
        _user_error_only(f"{who}.domains() with an empty data root", dataset.domains)


def _check_domain_names(cls: type, dataset: Dataset) -> list[str]:
    who = cls.__name__
    domains = _call(f"{who}.domains()", dataset.domains)
    _require(isinstance(domains, list) and bool(domains) and all(isinstance(d, str) for d in domains),
             f"{who}.domains() must return a non-empty list of names, got {domains!r}")
    _require(len(set(domains)) == len(domains), f"{who}.domains() lists a name twice: {domains}")
    for name in [*domains, *cls.aliases]:
        _require(bool(name) and not any(c.isspace() for c in name) and "->" not in name
                 and "+" not in name and "," not in name,
                 f"{who}: domain name {name!r} cannot be used in a pair such as 'A->B+rotate:3' or in "
                 "--pairs 'A->B,B->A'; avoid spaces, '+', ',' and '->'")
    for name in domains:
        _require(dataset.resolve(name) == name, f"{who}.resolve({name!r}) should return {name!r}")
    for alias, target in cls.aliases.items():
        _require(target in domains, f"{who}.aliases[{alias!r}] = {target!r} is not one of domains() {domains}")
        _require(dataset.resolve(alias) == target, f"{who}.resolve({alias!r}) should return {target!r}")
    return domains


def _check_domain(who: str, name: str, domain: Any) -> None:
    where = f"{who}.load({name!r}, {DATASET_CHECK_SIZE})"
    _require(isinstance(domain, Domain), f"{where} must return a tlbench.Domain, got {type(domain).__name__}")
    images, labels, classes = domain.images, domain.labels, domain.classes
    _require(images.dtype == torch.uint8 and images.dim() == 4
             and tuple(images.shape[1:]) == (3, DATASET_CHECK_SIZE, DATASET_CHECK_SIZE) and len(images) > 0,
             f"{where}: images must be uint8 N×3×{DATASET_CHECK_SIZE}×{DATASET_CHECK_SIZE} with N > 0, got "
             f"{tuple(images.shape)} {images.dtype} (tlbench.resize_uint8 resizes)")
    _require(isinstance(labels, Tensor) and labels.dtype == torch.int64 and labels.shape == (len(images),),
             f"{where}: labels must be int64 of shape ({len(images)},), got "
             f"{getattr(labels, 'dtype', type(labels).__name__)} {tuple(getattr(labels, 'shape', ()))}")
    _require(isinstance(classes, list) and bool(classes) and all(isinstance(c, str) for c in classes),
             f"{where}: classes must be a non-empty list of class names (str), got {classes!r}"[:300])
    _require(len(set(classes)) == len(classes), f"{where}: a class name appears twice in {classes}"[:300])
    low, high = int(labels.min()), int(labels.max())
    _require(0 <= low and high < len(classes),
             f"{where}: labels span {low}..{high} but there are {len(classes)} classes; labels index classes")
    _require(isinstance(domain.skipped, list), f"{where}: skipped must be a list of messages")


# -- shifts --------------------------------------------------------------------------------------
def check_shift(cls: type, *, seed: int = 0) -> None:
    """Check that shift class ``cls`` honours the contract tlbench relies on; ``AssertionError`` if not.

    Checks: metadata (``name`` usable in a domain spec such as ``digits+NAME:3``, a docstring,
    boolean ``has_severity``); for random uint8 batches of two sizes and every severity it takes
    (1 to 5; only the default 3 when ``has_severity`` is False), ``apply`` returns uint8 images of
    the input's shape, leaves its input unchanged (domains are shared between cells), and gives the
    same output for the same seed whatever torch's global random state (randomness only from the
    ``generator`` argument); a shift with severities changes its output with the severity.
    """
    who = getattr(cls, "__name__", repr(cls))
    _require(isinstance(cls, type) and issubclass(cls, Shift), f"{cls!r} must be a subclass of tlbench.Shift")
    _check_plugin_name(who, cls.name)
    _check_docstring(cls, "shifts")
    try:
        spec = DomainSpec.parse(f"base+{cls.name}:{DEFAULT_SEVERITY}")
    except UserError as exc:
        raise AssertionError(f"{who}.name {cls.name!r} cannot be used in a domain spec: {exc}") from exc
    _require(spec.shifts == ((cls.name, DEFAULT_SEVERITY),),
             f"{who}.name {cls.name!r} does not survive a domain spec round trip ({spec})")
    _require(isinstance(cls.has_severity, bool), f"{who}.has_severity must be True or False")
    severities = (1, 2, 3, 4, 5) if cls.has_severity else (DEFAULT_SEVERITY,)
    shift = cls()
    for n, h, w in SHIFT_CHECK_SHAPES:
        images = torch.randint(0, 256, (n, 3, h, w), generator=torch.Generator().manual_seed(seed + h),
                               dtype=torch.uint8)
        original = images.clone()
        outputs = []
        for severity in severities:
            where = f"{who}.apply(uint8 {n}×3×{h}×{w}, severity={severity})"
            runs = []
            for global_seed in (1, 2):
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(global_seed)  # a shift that uses the global generator differs between runs
                    out = _call(where, lambda: shift.apply(images, severity, torch.Generator().manual_seed(seed)))
                _require(torch.equal(images, original), f"{where} modified its input in place; return a new tensor")
                _require(isinstance(out, Tensor) and out.dtype == torch.uint8 and out.shape == images.shape,
                         f"{where} must return uint8 {tuple(images.shape)}, got "
                         f"{tuple(getattr(out, 'shape', ()))} {getattr(out, 'dtype', type(out).__name__)}")
                runs.append(out)
            _require(torch.equal(runs[0], runs[1]),
                     f"{where}: two calls with generator seed {seed} differ; draw randomness only from the "
                     "generator argument (torch.randn(..., generator=generator))")
            outputs.append(runs[0])
        if cls.has_severity:
            _require(any(not torch.equal(outputs[0], o) for o in outputs[1:]),
                     f"{who}: severities 1 to 5 all give the same output on uint8 {n}×3×{h}×{w} images; "
                     "use the severity, or set has_severity = False")


# -- reporters -----------------------------------------------------------------------------------
def sample_records() -> list[Any]:
    """Cell records of a small finished run: 2 strategies × 2 pairs × 2 seeds, one failed and one
    diverged cell whose error texts hold characters that need escaping in most formats."""
    from tlbench.results import CellRecord

    records = []
    for s, strategy in enumerate(("source_only", "my_method")):
        for p, (source, target) in enumerate((("amazon", "webcam"), ("digits", "digits+rotate:3"))):
            for seed in (0, 1):
                i = len(records)
                status, error, acc = "ok", "", 60.0 + 10 * s + 5 * p + seed
                if (s, p, seed) == (1, 1, 1):
                    status, error, acc = "failed", ("Traceback (most recent call last):\n  ...\nValueError: "
                                                    "<b>bad</b> & 100% of x_1 | {y} $z$ #w"), None
                if (s, p, seed) == (0, 1, 0):
                    status, error, acc = "diverged", "loss became non-finite (nan) at step 3", None
                records.append(CellRecord(
                    suite="conformance", dataset="sample", backbone="test_efficientnet", strategy=strategy,
                    source=source, target=target, seed=seed, status=status, error=error, target_acc=acc,
                    source_acc=None if acc is None else acc + 20, train_img_per_s=100.0 + i,
                    eval_img_per_s=400.0 + i, peak_mem_mb=50.0, trainable_params=1000, total_params=2000,
                    steps=10, wall_s=1.5, device="cpu", torch_version=torch.__version__, tlbench_version="0",
                    cell_id=f"{i:016x}", started_at=f"2024-01-01T00:00:{i:02d}"))
    return records


def check_reporter(cls: type, records: Iterable[Any] | None = None) -> None:
    """Check that reporter class ``cls`` honours the contract tlbench relies on; ``AssertionError`` if not.

    Checks: metadata (``name``, a docstring or ``description``, an integer ``order``); for the
    leaderboard of ``records`` (default :func:`sample_records`, with a failed and a diverged cell)
    and for one of only its successful cells, ``write(board, out_dir)`` returns a list of the
    non-empty files it wrote, all inside ``out_dir``, and leaves no other file there; writing again
    into the same folder works and returns the same file names.
    """
    from tlbench.leaderboard import build_leaderboard

    who = getattr(cls, "__name__", repr(cls))
    _require(isinstance(cls, type) and issubclass(cls, Reporter), f"{cls!r} must be a subclass of tlbench.Reporter")
    _check_plugin_name(who, cls.name)
    _require(isinstance(cls.description, str), f"{who}.description must be a string")
    _require(bool(cls.description.strip() or (cls.__doc__ or "").strip()),
             f"{who} needs a description (one line for 'tlbench list reporters') or a docstring")
    _require(isinstance(cls.order, int) and not isinstance(cls.order, bool), f"{who}.order must be an int")
    records = list(records) if records is not None else sample_records()
    suite = {"name": "conformance", "dataset": "sample"}
    boards = {"with failures": records, "all ok": [r for r in records if r.status == "ok"]}
    for label, recs in boards.items():
        with _tempfile.TemporaryDirectory(prefix="tlbench-report-") as tmp:
            out_dir = _Path(tmp) / "report"
            out_dir.mkdir()
            names = []
            for attempt in (1, 2):
                where = f"{who}.write (records {label}, write #{attempt})"
                board = build_leaderboard(recs, suite, date="2024-01-01 00:00 UTC")
                paths = _call(where, lambda: cls().write(board, out_dir))
                _require(isinstance(paths, list) and bool(paths),
                         f"{where} must return the list of files it wrote, got {paths!r}")
                resolved = []
                for p in paths:
                    _require(isinstance(p, (str, _Path)), f"{where} returned {p!r}, not a path")
                    p = _Path(p).resolve()
                    _require(p.is_file() and p.stat().st_size > 0, f"{where}: returned file {p} is missing or empty")
                    _require(out_dir.resolve() in p.parents, f"{where}: {p} is outside the output folder {out_dir}")
                    resolved.append(p)
                present = {f.resolve() for f in out_dir.rglob("*") if f.is_file()}
                extra = sorted(str(f) for f in present - set(resolved))
                _require(not extra, f"{where} left files it did not return: {extra[:3]}")
                names.append(sorted(p.name for p in resolved))
            _require(names[0] == names[1], f"{who}.write wrote {names[0]} then {names[1]} into the same folder")
