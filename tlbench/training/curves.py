"""Training curves: every metric a strategy returns, and each group's learning rate, over training.

A :class:`CurveRecorder` is a step observer. Between logging points it only adds the step's metric
tensors on the device (no host synchronisation); at each logging point it reads the window's sums
in one transfer and appends one point. So a cell's curves cost one small device-to-host copy per
logging point, where the loop already synchronises for its non-finite check. The windows cover every
step, so the same sums also give each metric's mean over the whole cell (the record's figures): the
step's metrics are accumulated once, here.

Curves travel with the cell's record to the driver, which writes them beside it
(``cells/<id>/curves.json``) and feeds them to the trackers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import Tensor

from tlbench.training.loop import StepObserver
from tlbench.training.schedule import ParamSchedule
from tlbench.training.strategy import StepOutput

LOSS = "loss"
LR_PREFIX = "lr/"


@dataclass
class Curves:
    """Points at the logging steps: ``steps[i]`` steps done, ``series[name][i]`` the value there."""

    steps: list[int] = field(default_factory=list)
    series: dict[str, list[float | None]] = field(default_factory=dict)

    def add(self, step: int, values: dict[str, float]) -> None:
        """Append a point; a series that starts late is padded with None (it had no value before)."""
        for name in values.keys() - self.series.keys():
            self.series[name] = [None] * len(self.steps)
        self.steps.append(step)
        for name, column in self.series.items():
            column.append(values.get(name))

    def to_dict(self) -> dict[str, Any]:
        return {"steps": list(self.steps), "series": {k: list(v) for k, v in sorted(self.series.items())}}

    @classmethod
    def from_dict(cls, d: Any) -> Curves:
        """The curves of ``to_dict``'s output; ``ValueError`` for anything of another shape."""
        if not isinstance(d, dict) or not isinstance(d.get("steps"), list) or not isinstance(d.get("series"), dict):
            raise ValueError("curves must be a mapping with a 'steps' list and a 'series' mapping")
        steps = [int(s) for s in d["steps"]]
        series = {}
        for name, values in d["series"].items():
            if not isinstance(values, list) or len(values) != len(steps):
                raise ValueError(
                    f"curve {name!r} has {len(values) if isinstance(values, list) else '?'} "
                    f"points for {len(steps)} steps"
                )
            series[str(name)] = [None if v is None else float(v) for v in values]
        return cls(steps, series)

    def __len__(self) -> int:
        return len(self.steps)


class CurveRecorder(StepObserver):
    """Window means of the loss and of every strategy metric, and each parameter group's learning
    rate, at every logging point (the ``steps`` are 1-based: steps done when the point was taken);
    and, from the same sums, each metric's mean over every step (:meth:`means`)."""

    def __init__(self, schedule: ParamSchedule):
        self.schedule = schedule
        self.curves = Curves()
        self._sums: dict[str, Tensor | float] = {}
        self._count = 0
        self._totals: dict[str, float] = {}  # every finished window's sums, on the host

    def after_step(self, step: int, loss: Tensor, out: StepOutput) -> None:
        self._add(LOSS, loss.detach())
        for name, value in out.metrics.items():
            self._add(name, value.detach().float() if isinstance(value, Tensor) else float(value))
        self._count += 1

    def _add(self, name: str, value: Tensor | float) -> None:
        self._sums[name] = self._sums.get(name, 0) + value

    def at_log_point(self, step: int, loss: Tensor) -> None:
        names = list(self._sums)
        on_device = [n for n in names if isinstance(self._sums[n], Tensor)]
        read = (
            torch.stack([cast(Tensor, self._sums[n]).float().mean() for n in on_device]).tolist() if on_device else []
        )
        values = dict(zip(on_device, read))  # the one host transfer of this logging point
        values.update({n: float(self._sums[n]) for n in names if n not in values})
        for n, v in values.items():
            self._totals[n] = self._totals.get(n, 0.0) + v
        point = {n: v / self._count for n, v in values.items()}
        for group in self.schedule.optimizer.param_groups:
            point[f"{LR_PREFIX}{group.get('name', 'group')}"] = float(group["lr"])
        self.curves.add(step + 1, point)
        self._sums, self._count = {}, 0

    def means(self, steps: int) -> dict[str, float]:
        """Each strategy metric's mean over all ``steps`` (the loss is left to the curves)."""
        return {n: v / steps for n, v in self._totals.items() if n != LOSS}
