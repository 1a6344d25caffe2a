"""Conformance checks of dataset and shift plugins."""

from __future__ import annotations

import copy
import tempfile as _tempfile
from collections.abc import Mapping
from pathlib import Path as _Path
from typing import Any

import torch
from torch import Tensor

from tlbench.data.domains import DEFAULT_SEVERITY, Dataset, Domain, DomainSpec, Shift
from tlbench.errors import UserError
from tlbench.testing.common import _call, _check_docstring, _check_plugin_name, _require, _user_error_only

#: the image side check_dataset asks for: small, and not the native size of any common dataset
DATASET_CHECK_SIZE = 12
#: batches check_shift transforms: (N, H, W) of uint8 N×3×H×W images
SHIFT_CHECK_SHAPES: tuple[tuple[int, int, int], ...] = ((5, 16, 16), (2, 40, 40))
_UNKNOWN_OPTION = "tlbench_conformance_unknown_option"


# -- datasets ------------------------------------------------------------------------------------
def check_dataset(cls: type[Dataset], root: Any = None, **options: Any) -> None:
    """Check that dataset class ``cls`` honours the contract tlbench relies on; ``AssertionError`` if not.

    ``root`` and ``options`` are what a suite would give (its data root and ``dataset_options``)
    and must point at data the dataset can load: a tiny generated tree is best (every domain is
    loaded, twice for the first one). Checks: metadata (``name``, a docstring whose first line is one
    whole sentence, ``option_help``
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
        _require(
            isinstance(key, str) and isinstance(text, str) and bool(text.strip()),
            f"{who}.option_help[{key!r}] must be a non-empty help text, got {text!r}",
        )
    _require(isinstance(cls.aliases, Mapping), f"{who}.aliases must be a dict alias -> domain name")
    unknown = sorted(set(options) - set(cls.option_help))
    _require(not unknown, f"option(s) {', '.join(unknown)} passed to check_dataset are not in {who}.option_help")

    ok, err = _user_error_only(
        f"{who}(root, {_UNKNOWN_OPTION}=1)", lambda: cls(root, **options, **{_UNKNOWN_OPTION: 1})
    )
    _require(
        not ok,
        f"{who} accepted the unknown option {_UNKNOWN_OPTION!r}; call Dataset.__init__ "
        "(super().__init__(root, **options)) so a typo in dataset_options is a UserError",
    )
    _check_dataset_without_data(cls, options)

    dataset = _new_dataset(cls, root, options)
    ok, err = _user_error_only(f"{who}.check()", dataset.check)
    _require(
        ok,
        f"{who}.check() refused the data given to check_dataset: {err}; pass the root and options "
        "of a (tiny) copy of the data",
    )
    domains = _check_domain_names(cls, dataset)
    classes: list[str] | None = None
    first: Domain | None = None
    for name in domains:
        fp = _call(f"{who}.fingerprint({name!r})", lambda: dataset.fingerprint(name))
        _require(
            isinstance(fp, str) and bool(fp), f"{who}.fingerprint({name!r}) must be a non-empty string, got {fp!r}"
        )
        again = _call(f"{who}.fingerprint({name!r})", lambda: dataset.fingerprint(name))
        other = _call(
            f"{who}.fingerprint({name!r}) on a new instance", lambda: _new_dataset(cls, root, options).fingerprint(name)
        )
        _require(
            fp == again == other,
            f"{who}.fingerprint({name!r}) is not stable: {fp!r}, {again!r}, {other!r} "
            "(base it on file names, sizes and times, e.g. tlbench.files_fingerprint)",
        )
        domain = _call(f"{who}.load({name!r}, {DATASET_CHECK_SIZE})", lambda: dataset.load(name, DATASET_CHECK_SIZE))
        _check_domain(who, name, domain)
        if classes is None:
            classes, first = list(domain.classes), domain
        _require(
            list(domain.classes) == classes,
            f"{who}: domain {name!r} has classes {list(domain.classes)[:5]}... but {domains[0]!r} has "
            f"{classes[:5]}...; every domain needs the same class list (a label means one class everywhere)",
        )
    assert first is not None
    again = _call(
        f"{who}.load({domains[0]!r}) on a new instance",
        lambda: _new_dataset(cls, root, options).load(domains[0], DATASET_CHECK_SIZE),
    )
    _require(
        torch.equal(again.images, first.images) and torch.equal(again.labels, first.labels),
        f"{who}.load({domains[0]!r}) gives different images or labels on a second call; loading must be "
        "deterministic (sort file lists, draw no random numbers)",
    )


def _new_dataset(cls: type[Dataset], root: Any, options: Mapping[str, Any]) -> Dataset:
    ok, result = _user_error_only(f"{cls.__name__}(root, **options)", lambda: cls(root, **copy.deepcopy(dict(options))))
    _require(ok, f"{cls.__name__}(root, **options) refused the data given to check_dataset: {result}")
    return result


def _check_dataset_without_data(cls: type[Dataset], options: Mapping[str, Any]) -> None:
    """Missing data must surface as a UserError before training (construction, check() or domains())."""
    who = cls.__name__
    with _tempfile.TemporaryDirectory(prefix="tlbench-empty-root-") as empty:
        ok, dataset = _user_error_only(
            f"{who}(<empty data root>, **options)", lambda: cls(_Path(empty), **copy.deepcopy(dict(options)))
        )
        if not ok:
            return
        ok, _ = _user_error_only(f"{who}.check() with an empty data root", dataset.check)
        if not ok:
            return
        _user_error_only(f"{who}.domains() with an empty data root", dataset.domains)


def _check_domain_names(cls: type[Dataset], dataset: Dataset) -> list[str]:
    who = cls.__name__
    domains = _call(f"{who}.domains()", dataset.domains)
    _require(
        isinstance(domains, list) and bool(domains) and all(isinstance(d, str) for d in domains),
        f"{who}.domains() must return a non-empty list of names, got {domains!r}",
    )
    _require(len(set(domains)) == len(domains), f"{who}.domains() lists a name twice: {domains}")
    for name in [*domains, *cls.aliases]:
        _require(
            bool(name)
            and not any(c.isspace() for c in name)
            and "->" not in name
            and "+" not in name
            and "," not in name,
            f"{who}: domain name {name!r} cannot be used in a pair such as 'A->B+rotate:3' or in "
            "--pairs 'A->B,B->A'; avoid spaces, '+', ',' and '->'",
        )
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
    _require(
        images.dtype == torch.uint8
        and images.dim() == 4
        and tuple(images.shape[1:]) == (3, DATASET_CHECK_SIZE, DATASET_CHECK_SIZE)
        and len(images) > 0,
        f"{where}: images must be uint8 N×3×{DATASET_CHECK_SIZE}×{DATASET_CHECK_SIZE} with N > 0, got "
        f"{tuple(images.shape)} {images.dtype} (tlbench.resize_uint8 resizes)",
    )
    _require(
        isinstance(labels, Tensor) and labels.dtype == torch.int64 and labels.shape == (len(images),),
        f"{where}: labels must be int64 of shape ({len(images)},), got "
        f"{getattr(labels, 'dtype', type(labels).__name__)} {tuple(getattr(labels, 'shape', ()))}",
    )
    _require(
        isinstance(classes, list) and bool(classes) and all(isinstance(c, str) for c in classes),
        f"{where}: classes must be a non-empty list of class names (str), got {classes!r}"[:300],
    )
    _require(len(set(classes)) == len(classes), f"{where}: a class name appears twice in {classes}"[:300])
    low, high = int(labels.min()), int(labels.max())
    _require(
        0 <= low and high < len(classes),
        f"{where}: labels span {low}..{high} but there are {len(classes)} classes; labels index classes",
    )
    _require(isinstance(domain.skipped, list), f"{where}: skipped must be a list of messages")


# -- shifts --------------------------------------------------------------------------------------
def check_shift(cls: type[Shift], *, seed: int = 0) -> None:
    """Check that shift class ``cls`` honours the contract tlbench relies on; ``AssertionError`` if not.

    Checks: metadata (``name`` usable in a domain spec such as ``digits+NAME:3``, a docstring whose
    first line is one whole sentence,
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
    _require(
        spec.shifts == ((cls.name, DEFAULT_SEVERITY),),
        f"{who}.name {cls.name!r} does not survive a domain spec round trip ({spec})",
    )
    _require(isinstance(cls.has_severity, bool), f"{who}.has_severity must be True or False")
    severities = (1, 2, 3, 4, 5) if cls.has_severity else (DEFAULT_SEVERITY,)
    shift = cls()
    for n, h, w in SHIFT_CHECK_SHAPES:
        images = torch.randint(
            0, 256, (n, 3, h, w), generator=torch.Generator().manual_seed(seed + h), dtype=torch.uint8
        )
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
                _require(
                    isinstance(out, Tensor) and out.dtype == torch.uint8 and out.shape == images.shape,
                    f"{where} must return uint8 {tuple(images.shape)}, got "
                    f"{tuple(getattr(out, 'shape', ()))} {getattr(out, 'dtype', type(out).__name__)}",
                )
                runs.append(out)
            _require(
                torch.equal(runs[0], runs[1]),
                f"{where}: two calls with generator seed {seed} differ; draw randomness only from the "
                "generator argument (torch.randn(..., generator=generator))",
            )
            outputs.append(runs[0])
        if cls.has_severity:
            _require(
                any(not torch.equal(outputs[0], o) for o in outputs[1:]),
                f"{who}: severities 1 to 5 all give the same output on uint8 {n}×3×{h}×{w} images; "
                "use the severity, or set has_severity = False",
            )
