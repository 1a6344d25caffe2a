"""Sweeps: a list where a suite expects one value means "each of these", and the matrix is the product.

``dann: {trade_off: [0.1, 0.3, 1.0]}`` and ``recipe: {lr: [0.003, 0.01]}`` give six dann cells per
pair and seed, one id each (the id hashes the resolved values, as for any cell). A key whose value is
itself a sequence (``crop_scale``, mmd's ``alphas``) is swept by a list of lists. A suite without lists
expands exactly as before, to the same cell ids.

Every point of a sweep is a cell of the same leaderboard row; the suite's ``selection:`` decides
which one the row reports (:mod:`tlbench.reporting.selection`).
"""

from __future__ import annotations

import dataclasses
import itertools
import warnings
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tlbench.errors import UserError
from tlbench.spec.recipe import Recipe

if TYPE_CHECKING:
    from tlbench.training.strategy import Strategy


@dataclass(frozen=True)
class SweepPoint:
    """One point of a sweep, as a cell and its record carry it.

    ``values`` are the swept keys' values (recipe keys as ``recipe.<key>``), ``default`` says whether
    every one of them is its default (what selection ``last`` reports), and ``order`` is the point's
    place in the sweep (0: every first value).
    """

    values: dict[str, Any]
    default: bool
    order: int

    def to_dict(self) -> dict[str, Any]:
        return {"values": dict(self.values), "default": self.default, "order": self.order}

    @classmethod
    def from_dict(cls, data: Any) -> SweepPoint | None:
        """The point a stored mapping describes; None for anything that is not one (a damaged or
        foreign record: the cell then counts as outside any sweep)."""
        if not isinstance(data, dict):
            return None
        values, order = data.get("values"), data.get("order", 0)
        return cls(
            values=dict(values) if isinstance(values, dict) else {},
            default=bool(data.get("default")),
            order=order if isinstance(order, int) and not isinstance(order, bool) else 0,
        )

    def __getitem__(self, key: str) -> Any:
        """``point["values"]``, as when a sweep point was a dict: deprecated, read ``point.values``."""
        warnings.warn(
            f"sweep[{key!r}] is deprecated since a sweep point became a SweepPoint; read sweep.{key}",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.to_dict()[key]

    def describe(self) -> str:
        """``key=value, ...``: the swept values, or ``default`` when there are none."""
        return ", ".join(f"{k}={v}" for k, v in self.values.items()) or "default"


def is_sweep(value: Any, sequence_valued: bool = False) -> bool:
    """Whether ``value`` lists several values of one key (for a sequence-valued key: a list of lists)."""
    if not isinstance(value, list):
        return False
    return bool(value) and all(isinstance(v, list) for v in value) if sequence_valued else True


def split_sweep(
    mapping: dict[str, Any], sequence_keys: Collection[str] = (), *, where: str
) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """(``mapping`` with every swept key at its first value, ``{key: values}`` of the swept keys).

    ``where`` names the mapping in errors (``strategies.dann.params``)."""
    fixed, axes = dict(mapping), {}
    for key, value in mapping.items():
        if not is_sweep(value, key in sequence_keys):
            continue
        if not value:
            raise UserError(f"{where}.{key}: an empty list sweeps nothing; give one value or a list of values")
        if len({repr(v) for v in value}) != len(value):
            raise UserError(f"{where}.{key}: {value!r} lists a value twice; list each value once")
        axes[key] = list(value)
        fixed[key] = value[0]
    return fixed, axes


def sweep_points(axes: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the swept values, in the suite's order (the first point: every first value)."""
    keys = list(axes)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(axes[k] for k in keys))] or [{}]


def sequence_params(params_cls: type) -> set[str]:
    """The fields of a strategy's ``Params`` dataclass whose default is a list or tuple."""
    out = set()
    for f in dataclasses.fields(params_cls):
        default = (
            f.default
            if f.default is not dataclasses.MISSING
            else (f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        )
        if isinstance(default, (list, tuple)):
            out.add(f.name)
    return out


def param_points(
    strategy_cls: type[Strategy], params: dict[str, Any], *, where: str = "params"
) -> list[dict[str, Any]]:
    """A strategy entry's parameter mappings, one per point of its sweep (one without lists)."""
    fixed, axes = split_sweep(params, sequence_params(strategy_cls.Params), where=where)
    return [{**fixed, **point} for point in sweep_points(axes)]


def strategy_points(
    strategy_cls: type[Strategy], params: dict[str, Any], recipes: list[tuple[dict[str, Any], Recipe]], *, where: str
) -> list[tuple[dict[str, Any], Recipe, SweepPoint | None]]:
    """``(params, recipe, sweep point)`` for every point of one strategy entry × the suite's recipe sweep.

    ``recipes`` are ``(swept values, recipe)``; the point is None when neither the entry nor the recipe
    is swept."""
    fixed, axes = split_sweep(params, sequence_params(strategy_cls.Params), where=where)
    try:
        defaults = dataclasses.asdict(strategy_cls.parse_params({}))
    except (TypeError, ValueError):  # a parameter without a default: no point is "the defaults"
        defaults = {}
    out: list[tuple[dict[str, Any], Recipe, SweepPoint | None]] = []
    for param_values in sweep_points(axes):
        for recipe_values, recipe in recipes:
            if not axes and not recipe_values:
                out.append((fixed, recipe, None))
                continue
            values = {**param_values, **{f"recipe.{k}": v for k, v in recipe_values.items()}}
            default = all(k in defaults and _same(defaults[k], v) for k, v in param_values.items()) and all(
                _same(Recipe.model_fields[k].default, v) for k, v in recipe_values.items()
            )
            out.append(({**fixed, **param_values}, recipe, SweepPoint(values, default, len(out))))
    return out


def _same(default: Any, value: Any) -> bool:
    """A swept value equals a default (a YAML list equals a tuple default)."""
    norm = lambda x: list(x) if isinstance(x, (list, tuple)) else x  # noqa: E731
    return norm(default) == norm(value)
