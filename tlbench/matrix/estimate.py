"""What a run will do before it does it: ``tlbench run --dry-run`` counts the cells and estimates their time.

The estimate is the wall time per step of finished cells like each one still to run, read from the
output folder's records, times that cell's steps: the same network and strategy row on the same
dataset first, else the same network on the same dataset. Cells with neither are counted, not guessed.
"""

from __future__ import annotations

from dataclasses import dataclass

from tlbench.spec.cell import Cell
from tlbench.spec.record import CellRecord
from tlbench.spec.store import ResultsDir


@dataclass
class Estimate:
    total: int  # cells of the matrix
    done: int  # already finished (skipped by a run without --force)
    seconds: float  # estimated wall time of the estimated cells
    estimated: int  # cells to run with an estimate
    unknown: int  # cells to run without records of similar cells

    def lines(self) -> list[str]:
        todo = self.total - self.done
        out = [f"{self.total} cells: {todo} to run, {self.done} already done"]
        if self.estimated:
            more = f"; {self.unknown} more without records of similar cells" if self.unknown else ""
            out.append(
                f"estimated time: {_duration(self.seconds)} for {self.estimated} cell(s), from the records "
                f"of similar finished cells{more}"
            )
        elif todo:
            out.append(
                "no estimate of time: no finished cells of the same network on this dataset in the output "
                "folder (run a few cells first, e.g. with --seeds 0 --pairs ONE_PAIR)"
            )
        return out


def estimate(cells: list[Cell], out: ResultsDir, *, force: bool = False) -> Estimate:
    """Count ``cells`` and estimate the wall time of those a run would train."""
    per_step: dict[tuple, list[float]] = {}
    for r in out.records():
        if r.status == "ok" and r.wall_s and r.steps:
            for key in _keys(r.dataset, _network(r), r.label):
                per_step.setdefault(key, []).append(r.wall_s / r.steps)
    todo = [c for c in cells if force or not out.is_done(c.id)]
    seconds, estimated = 0.0, 0
    for cell in todo:
        rates = next((per_step[k] for k in _keys(cell.dataset, cell.backbone, cell.label) if k in per_step), None)
        if rates:
            seconds += sum(rates) / len(rates) * int(cell.recipe.steps)
            estimated += 1
    return Estimate(len(cells), len(cells) - len(todo), seconds, estimated, len(todo) - estimated)


def _network(r: CellRecord) -> str:
    network = r.extra.get("network") if isinstance(r.extra, dict) else None
    return network if isinstance(network, str) and network else r.backbone


def _keys(dataset: str, network: str, strategy: str) -> list[tuple]:
    """Most similar first: network and strategy row, then the network alone."""
    return [(dataset, network, strategy), (dataset, network)]


def _duration(seconds: float) -> str:
    minutes = seconds / 60
    return f"{seconds:.0f} s" if minutes < 2 else f"{minutes:.0f} min" if minutes < 120 else f"{minutes / 60:.1f} h"
