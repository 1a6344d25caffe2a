"""Loading a suite: the file read safely, ``--set`` applied, validated, then narrowed by the command line.

Every problem is one line naming where it came from: the file and key path, or the ``--set``
assignment or narrowing flag that wrote the offending value.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from tlbench.errors import UserError
from tlbench.spec.suite import BackboneEntry, StrategyEntry, Suite
from tlbench.spec.suite_yaml import MAX_SUITE_NODES, TOO_MANY_VALUES, count_nodes, parse_yaml, read_yaml
from tlbench.spec.write_errors import check_name_lengths


def apply_override(data: dict[str, Any], assignment: str, *, origin: str = "--set") -> None:
    """Apply ``key.path=value`` (value parsed as YAML, by a suite file's rules and limits) to the raw
    suite mapping."""
    shown = in_message(assignment)
    quoted = repr(assignment) if shown == assignment else f"'{shown}'"
    if "=" not in assignment:
        raise UserError(f"{origin} {quoted}: expected key.path=value, e.g. recipe.steps=200")
    key, _, raw = assignment.partition("=")
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise UserError(f"{origin} {quoted}: empty key")
    try:
        value = parse_yaml(raw, f"{origin} {shown}", what="the value") if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    node = data
    for p in parts[:-1]:
        nxt = node.get(p)
        if nxt is None:
            nxt = node[p] = {}
        if not isinstance(nxt, dict):
            raise UserError(f"{origin} {quoted}: {p!r} is not a mapping")
        node = nxt
    node[parts[-1]] = value


def in_message(text: str, limit: int = 80) -> str:
    """A ``--set`` assignment (or a key path) as an error line quotes it: whole when short and printable,
    else escaped and cut, so a megabyte value or a newline in it cannot take over the message."""
    if len(text) <= limit and text.isprintable():
        return text
    escaped = repr(text)[1:-1]
    return escaped if len(escaped) <= limit else f"{escaped[: limit - 20]}... ({len(text):,} characters)"


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> None:
    """Every ``--set`` in turn, then the suite's bound on its expanded size for all of them together
    (each value is bounded on its own by :func:`apply_override`)."""
    for assignment in overrides:
        apply_override(data, assignment)
    if overrides and count_nodes(data, MAX_SUITE_NODES) > MAX_SUITE_NODES:
        raise UserError(f"--set: the suite with its --set values {TOO_MANY_VALUES}")


def validate(data: dict[str, Any], *, origin: str, overrides: Sequence[str] = ()) -> Suite:
    """The suite model, or a one-line error naming the first problem's key path.

    The error is blamed on the ``--set`` assignment that wrote the offending key, if one did,
    and on ``origin`` (the suite file) otherwise.
    """
    try:
        return Suite.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        origin = _blame(err["loc"], overrides) or origin
        loc = in_message(".".join(str(p) for p in err["loc"])) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            model = _model_at(err["loc"][:-1])
            valid = ", ".join(model.model_fields) if model else ""
            msg = f"unknown key{'; valid keys here: ' + valid if valid else ''}"
        elif err["type"] == "missing":
            msg = "required key is missing"
        elif "input" in err and not isinstance(err["input"], (dict, list)):
            shown = repr(err["input"])  # a 10,000-character value is not repeated whole
            msg = f"{msg} (got {shown if len(shown) <= 80 else shown[:76] + '...'})"
        more = f" (and {exc.error_count() - 1} more problem(s))" if exc.error_count() > 1 else ""
        if err["type"] == "suite_key":  # a whole-suite rule: the message names its key itself
            raise UserError(f"{origin}: {msg}{more}") from None
        raise UserError(f"{origin}: {loc}: {msg}{more}") from None


def _blame(loc: tuple, overrides: Sequence[str]) -> str | None:
    """``--set KEY=VALUE`` for the last assignment whose key path and ``loc`` overlap, else None."""
    where = [str(p) for p in loc]
    for assignment in reversed(overrides):
        parts = [p for p in assignment.partition("=")[0].strip().split(".") if p]
        n = min(len(parts), len(where))
        if n and parts[:n] == where[:n]:
            return f"--set {in_message(assignment)}"
    return None


def _model_at(loc: tuple) -> type[BaseModel] | None:
    model: type[BaseModel] | None = Suite
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        ann = field.annotation
        args = getattr(ann, "__args__", ()) or (ann,)
        model = next((a for a in args if isinstance(a, type) and issubclass(a, BaseModel)), None)
    return model


def load_suite(
    path: Path,
    *,
    overrides: Sequence[str] = (),
    backbones: list[str] | None = None,
    strategies: list[str] | None = None,
    pairs: list[str] | None = None,
    seeds: list[int] | None = None,
    data_root: str | None = None,
    tasks: list[str] | None = None,
) -> Suite:
    """Read, narrow and validate a suite. Command-line narrowing never edits the file."""
    data = read_yaml(path)
    data = copy.deepcopy(data)
    apply_overrides(data, overrides)
    suite = validate(data, origin=str(path), overrides=overrides)
    for flag, key, value in (("--pairs", "pairs", pairs), ("--tasks", "tasks", tasks), ("--seeds", "seeds", seeds)):
        if value is not None:  # narrowing is checked like the file: the flag is blamed
            validate({**data, key: value}, origin=f"{flag} {','.join(map(str, value))}")
    if backbones:
        known = {b.name: b for b in suite.backbones}
        suite.backbones = [known.get(n) or BackboneEntry(name=n) for n in backbones]
    if strategies:
        known_strategies = {(s.label or s.name): s for s in suite.strategies}
        suite.strategies = [known_strategies.get(n) or StrategyEntry(name=n) for n in strategies]
    if pairs is not None:
        suite.pairs = pairs
    if tasks is not None:
        suite.tasks = tasks
    if seeds is not None:
        suite.seeds = seeds
    if data_root:
        suite.data_root = data_root
    elif suite.data_root is None and os.environ.get("TLBENCH_DATA_ROOT"):
        suite.data_root = os.environ["TLBENCH_DATA_ROOT"]
    elif suite.data_root is not None and not Path(suite.data_root).is_absolute():
        suite.data_root = str((Path(path).resolve().parent / suite.data_root).resolve())
    if suite.data_root:  # from the suite or $TLBENCH_DATA_ROOT: Path checks of it would raise, not answer
        check_name_lengths(Path(suite.data_root), "the data root")
    return suite
