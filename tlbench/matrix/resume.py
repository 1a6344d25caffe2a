"""Resuming: which cells a run skips, retries or records without running.

A cell is done when its record is ok or diverged (a failed cell is retried); a kd teacher also
needs intact weights. A cell whose run died while it ran is retried once, then recorded as killed;
a student whose teacher failed is recorded as failed; a finished cell whose code has changed is
refused unless kept on purpose (:mod:`tlbench.matrix.staleness`).
"""

from __future__ import annotations

import warnings
from typing import Any

from tlbench.data.files import checked_file_ok
from tlbench.matrix.staleness import refuse_stale, stale_cells
from tlbench.spec.cell import Cell
from tlbench.spec.record import CellRecord, failure_record
from tlbench.spec.store import ResultsDir


def is_skipped(cell: Cell, out: ResultsDir, teacher_ids: frozenset[str] | set[str], force: bool) -> bool:
    """Whether a cell is skipped: its result is kept (and, for a kd teacher, its weights are intact)."""
    if force or not out.is_done(cell.id):
        return False
    if cell.id not in teacher_ids:
        return True
    rec = out.read_record(cell.id)
    return rec is not None and (rec.status != "ok" or checked_file_ok(out.model_path(cell.id)))


def killed_cells(cells: list[Cell], out: ResultsDir) -> list[CellRecord]:
    """Cells whose run died while they ran (a ``running.json`` but no record): retried once, then failed.

    The first death may have been anything (a SIGKILL, a power cut): the cell simply runs again,
    with a warning. A cell that a second run also died on is recorded as failed, named "killed", and
    the matrix goes on without it; the next run tries it again, like any failed cell.
    """
    found = []
    for cell in cells:
        sentinel = out.running_path(cell.id)
        if not sentinel.is_file() or out.is_done(cell.id):
            continue
        deaths = out.read_deaths(cell.id) + 1
        if deaths < 2:
            out.write_running(cell.id, deaths)
            warnings.warn(
                f"cell {cell.id} ({cell.describe()}) was running when an earlier run died "
                "(killed, out of memory?); running it again",
                stacklevel=2,
            )
            continue
        found.append(
            failure_record(
                cell,
                "failed",
                f"killed: the run died {deaths} times while this cell was running (the "
                "kernel's out-of-memory killer, or a signal); run the same command again "
                "to retry it, with a smaller recipe.batch_size if memory was short",
            )
        )
    return found


def check_stale(cells: list[Cell], out: ResultsDir, registry: Any, *, force: bool, keep: bool) -> None:
    """Finished cells computed by other code than is installed now: refused, or kept with a warning."""
    if force:
        return  # they are rerun anyway
    stale = stale_cells(cells, out, registry)
    if stale and not keep:
        refuse_stale(stale)
    if stale:
        warnings.warn(
            f"{len(stale)} finished cell(s) kept although their code changed since they ran (--keep-stale)",
            stacklevel=2,
        )


def failed_teacher_record(cell: Cell, out: ResultsDir) -> CellRecord | None:
    if cell.teacher is None:
        return None
    rec = out.read_record(cell.teacher.id)
    if rec is not None and rec.status == "ok":
        return None
    why = rec.error if rec else "it did not run"
    return failure_record(cell, "failed", f"teacher cell {cell.teacher.id} ({cell.teacher.describe()}) failed: {why}")
