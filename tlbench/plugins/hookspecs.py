"""The hook specifications: everything a plugin can add to tlbench.

Each ``register_*`` hook receives a ``register`` callback; calling it with a class (or an
instance, for weight sources) makes that name available and lets tlbench remember which plugin
provided it. Registering a name that another plugin already registered is an error naming both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from tlbench.spec.cell import Cell
    from tlbench.spec.record import CellRecord

PROJECT = "tlbench"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

Register = Callable[[Any], None]


@hookspec
def register_strategies(register: Register) -> None:
    """Register :class:`tlbench.Strategy` subclasses (transfer strategies)."""


@hookspec
def register_datasets(register: Register) -> None:
    """Register :class:`tlbench.Dataset` subclasses (sources of domains)."""


@hookspec
def register_shifts(register: Register) -> None:
    """Register :class:`tlbench.Shift` subclasses (derive a new domain from any domain)."""


@hookspec
def register_weight_sources(register: Register) -> None:
    """Register :class:`tlbench.WeightSource` subclasses (where pretrained backbone weights come from)."""


@hookspec
def register_backbones(register: Register) -> None:
    """Register :class:`tlbench.BackboneProvider` subclasses (families of networks created by name)."""


@hookspec
def register_reporters(register: Register) -> None:
    """Register :class:`tlbench.Reporter` subclasses (leaderboard output formats)."""


@hookspec
def register_launchers(register: Register) -> None:
    """Register :class:`tlbench.Launcher` subclasses (how the cells of a matrix are executed)."""


@hookspec
def register_trackers(register: Register) -> None:
    """Register :class:`tlbench.Tracker` subclasses (experiment trackers fed with every finished cell)."""


@hookspec
def register_validators(register: Register) -> None:
    """Register :class:`tlbench.Validator` subclasses (score checkpoints without target labels, for selection)."""


@hookspec
def before_cell(cell: Cell) -> None:
    """Called just before a cell trains, in the process that trains it."""


@hookspec
def after_cell(cell: Cell, record: CellRecord) -> None:
    """Called after a cell ends (ok, failed or diverged), with its record, before the record is written."""
