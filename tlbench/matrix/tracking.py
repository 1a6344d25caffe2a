"""Feeding the trackers: the runner's side of the tracker contract.

The feed builds the suite's trackers (and ``--tracker NAME``'s) in the driver, hands each a cell as
its record is written, the leaderboard files at the end, and closes them. A tracker that raises is
reported once, naming it and what it raised, and is not called again in this run; the cells, their
records and the run's exit code never depend on a tracker.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from tlbench.errors import UserError
from tlbench.spec.cell import Cell
from tlbench.spec.record import CellRecord


class TrackerFeed:
    """The trackers of one run."""

    def __init__(self, entries: list[tuple[str, dict[str, Any]]], out_dir: Path, suite: dict[str, Any], registry):
        self.trackers: list[Any] = []
        for name, options in entries:
            cls = registry.get("tracker", name)
            tracker = self._call(name, lambda: cls(out_dir, suite, **options))
            if tracker is not None:
                self.trackers.append(tracker)

    def log_cell(self, cell: Cell, record: CellRecord) -> None:
        for tracker in list(self.trackers):
            self._call(tracker.name, lambda: tracker.log_cell(cell, record), tracker)

    def log_reports(self, files: list[Path]) -> None:
        for tracker in list(self.trackers):
            self._call(tracker.name, lambda: tracker.log_reports(list(files)), tracker)

    def close(self) -> None:
        for tracker in list(self.trackers):
            self._call(tracker.name, tracker.close, tracker)
        self.trackers = []

    def _call(self, name: str, call, tracker: Any = None) -> Any:
        try:
            return call()
        except UserError:
            raise  # bad options in the suite: exit 2 before any cell trains
        except Exception as exc:  # noqa: BLE001 - a broken tracker is warned about, never fatal
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            warnings.warn(
                f"tracker {name!r} failed ({type(exc).__name__}: {first}); the run goes on without it, "
                "its results are unaffected",
                stacklevel=3,
            )
            if tracker is not None and tracker in self.trackers:
                self.trackers.remove(tracker)
            return None


def tracker_entries(suite_trackers: list[Any], cli_names: list[str] | None) -> list[tuple[str, dict[str, Any]]]:
    """The suite's trackers, then those named with ``--tracker`` that the suite does not list."""
    entries = [(t.name, dict(t.options)) for t in suite_trackers]
    for name in cli_names or []:
        if name not in {n for n, _ in entries}:
            entries.append((name, {}))
    return entries
