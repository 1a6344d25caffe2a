"""Training curves read back: the leaderboard's long table of them, and ``tlbench curves``.

``tlbench curves DIR [--cells PATTERN] [--metric NAME] [--png FILE]`` prints each chosen cell's
curves as a table (or draws them to a PNG) for a quick look without a tracker. A cell is chosen by a
shell-style wildcard on its description (``"tf_efficientnet_lite0 dann digits->digits+invert seed=0"``)
or on its id.
"""

from __future__ import annotations

import fnmatch
import io
from pathlib import Path
from typing import Any, cast

import pandas as pd

from tlbench.errors import UserError
from tlbench.spec.record import CellRecord
from tlbench.spec.store import load_records

#: the long table's columns: one row per (cell, metric, logging step)
CURVE_COLUMNS = ("backbone", "strategy", "pair", "seed", "metric", "step", "value")


def describe(record: CellRecord) -> str:
    """A cell's description, as progress bars and trackers name it."""
    return f"{record.backbone} {record.label} {record.column} seed={record.seed}"


def curve_frame(records: list[CellRecord]) -> pd.DataFrame:
    """Every record's curves in one long table (``CURVE_COLUMNS``); records without curves add nothing."""
    rows = []
    for r in records:
        if not isinstance(r.curves, dict):
            continue
        steps = r.curves.get("steps") or []
        for metric, values in sorted((r.curves.get("series") or {}).items()):
            for step, value in zip(steps, values):
                if value is not None:
                    rows.append((r.backbone, r.label, r.column, r.seed, metric, int(step), float(value)))
    return pd.DataFrame(rows, columns=list(CURVE_COLUMNS))


def select_cells(dirs: list[Path], pattern: str | None) -> list[CellRecord]:
    """The records of ``dirs`` that have curves, whose description or id matches ``pattern``."""
    for d in dirs:
        if not Path(d).is_dir():
            raise UserError(f"{d}: no such results directory (expected the --out folder of a tlbench run)")
    records = [r for r in load_records(dirs, curves=True, reader="the curves") if isinstance(r.curves, dict)]
    if pattern:
        records = [
            r for r in records if fnmatch.fnmatchcase(describe(r), pattern) or fnmatch.fnmatchcase(r.cell_id, pattern)
        ]
    if not records:
        what = f" matching {pattern!r}" if pattern else ""
        raise UserError(
            f"no cells with curves{what} in {', '.join(map(str, dirs))}; list them with 'tlbench curves DIR'"
        )
    return sorted(records, key=describe)


def metric_names(records: list[CellRecord], metric: str | None) -> list[str]:
    """The metrics to show: ``metric`` (a wildcard) or all; an unknown one names those that exist."""
    # records of select_cells: each has its curves
    names = sorted({m for r in records for m in (cast("dict[str, Any]", r.curves).get("series") or {})})
    if metric is None:
        return names
    chosen = [m for m in names if fnmatch.fnmatchcase(m, metric)]
    if not chosen:
        raise UserError(f"no curve named {metric!r}; these cells have: {', '.join(names)}")
    return chosen


def curves_text(records: list[CellRecord], metrics: list[str]) -> str:
    """One table per cell: a row per logging step, a column per metric."""
    from tabulate import tabulate

    parts = []
    for r in records:
        curves = cast("dict[str, Any]", r.curves)  # records of select_cells: each has its curves
        series = curves.get("series") or {}
        shown = [m for m in metrics if m in series]
        rows = [[step, *(series[m][i] for m in shown)] for i, step in enumerate(curves.get("steps") or [])]
        parts.append(
            f"{describe(r)}  [{r.cell_id}]\n" + tabulate(rows, headers=["step", *shown], floatfmt=".4g", missingval="-")
        )
    return "\n\n".join(parts) + "\n"


def curves_png(records: list[CellRecord], metrics: list[str]) -> bytes:
    """One panel per metric, one line per cell."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = min(3, len(metrics))
    rows = -(-len(metrics) // cols)
    fig = Figure(figsize=(4.2 * cols, 2.8 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, metric in zip(axes, metrics):
        for r in records:
            curves = cast("dict[str, Any]", r.curves)  # records of select_cells: each has its curves
            values = (curves.get("series") or {}).get(metric)
            if values is None:
                continue
            points = [(s, v) for s, v in zip(curves["steps"], values) if v is not None]
            if points:
                ax.plot(*zip(*points), marker=".", label=describe(r))
        ax.set_title(metric, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(True, alpha=0.3)
    for ax in axes[len(metrics) :]:
        ax.set_axis_off()
    if len(records) <= 8:
        axes[0].legend(fontsize=6, loc="best")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    return buf.getvalue()
