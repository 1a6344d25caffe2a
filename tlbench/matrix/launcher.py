"""The launcher contract: how the cells of a matrix get executed.

A launcher receives a list of independent cells (the runner hands them over wave by wave, so a
teacher's wave ends before its students' starts) and a function that trains one cell; it returns
each record to the driver through ``on_record`` as soon as it exists. The driver alone writes
results, atomically, so a worker that dies loses at most its own cell.

Optionally a launcher reports when a cell starts running (``on_start``), so the driver can show
how many cells are running across all workers; launchers that predate it still work.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from tlbench.errors import UserError
from tlbench.plugins.registry import Plugin
from tlbench.spec.record import failure_record


class Launcher(Plugin):
    """Base class of launcher plugins. ``option_help`` lists the options it accepts."""

    plugin_kind: ClassVar[str] = "launcher"
    name: ClassVar[str] = ""
    option_help: ClassVar[dict[str, str]] = {}

    def __init__(self, **options: Any):
        unknown = sorted(set(options) - set(self.option_help))
        if unknown:
            raise UserError(
                f"launcher {self.name!r}: unknown option(s) {', '.join(unknown)}; "
                f"valid: {', '.join(self.option_help) or 'none'}"
            )
        self.options = options

    def launch(
        self,
        tasks: Sequence[Any],
        execute: Callable[[Any], Any],
        on_record: Callable[[Any], None],
        on_start: Callable[[Any], None] | None = None,
    ) -> None:
        """Run ``execute(task)`` for every task (a picklable :class:`tlbench.spec.cell.CellTask`) and
        pass each resulting :class:`tlbench.spec.record.CellRecord` to ``on_record`` in the driver.

        ``on_start(task)``, when given, is called in the driver as a task starts running (again
        if it is retried). On KeyboardInterrupt a launcher stops its workers and re-raises.
        """
        raise NotImplementedError

    def close(self) -> None:
        """Release what ``launch`` kept for the next wave (workers, a cluster connection); the
        runner calls it once after the last wave, also after an error or Ctrl-C."""

    @staticmethod
    def failed_record(task: Any, error: str, *, started_at: str = "", wall_s: float | None = None) -> Any:
        """The ``failed`` record of a task whose worker never returned one (it died, was lost)."""
        return failure_record(task.cell, "failed", error, started_at=started_at, wall_s=wall_s)
