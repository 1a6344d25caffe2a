"""Errors tlbench raises on purpose.

A :class:`UserError` is a problem with what the user gave us (a suite, a path, a name): the CLI
prints its one-line message and exits with code 2, with the traceback only under ``--debug``.
Anything else that escapes a cell is recorded as that cell's failure, never a crash of the run.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class TlbenchError(Exception):
    """Base class of tlbench's own errors."""


class UserError(TlbenchError):
    """Bad input: a one-line message that says what was wrong and what would be valid."""


class ParamsError(UserError, ValueError):
    """A strategy's parameters that do not fit its ``Params`` (an unknown key, a value of the wrong
    type): the ``UserError`` docs/plugins.md promises a plugin's tests, and a ``ValueError`` for the
    callers that caught that before."""


class UnknownNameError(UserError, KeyError):
    """A plugin name (strategy, dataset, ...) that nobody registered."""

    def __init__(self, kind: str, name: str, known: Iterable[str]):
        self.kind, self.name = kind, name
        known = sorted(known)
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)  # as the weights and backbone hints
        hint = f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(known) or 'none'}"
        super().__init__(f"unknown {kind} {name!r}; {hint}")

    def __str__(self) -> str:  # KeyError would wrap the message in quotes
        return self.args[0]


class DuplicateNameError(TlbenchError):
    """Two plugins registered the same name for the same kind."""


class WeightsUnavailableError(UserError):
    """Pretrained weights were asked for and no source could provide them."""


class DivergedError(TlbenchError):
    """The training loss became non-finite; the cell is recorded as diverged at ``step``."""

    def __init__(self, step: int, value: float):
        self.step, self.value = step, value
        super().__init__(f"loss became non-finite ({value}) at step {step}")


class RunLockedError(UserError):
    """Another tlbench process holds the output directory."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, systemd, a batch system's time limit) during ``tlbench run``: it takes Ctrl-C's
    path (the cells in flight are interrupted, not taken for deaths) and the command exits 143."""
