"""``tensorboard`` tracker: event files, one run per cell, under ``<out>/tensorboard``.

Each cell is a run named by its description (backbone, strategy, pair, seed) and id; its curves
become scalars ``train/<metric>`` at their logging steps, its record's numbers ``result/<name>`` at
the last step, and its configuration and status a text summary. Written through
``torch.utils.tensorboard`` (needs the ``tensorboard`` package: ``pip install 'tlbench[tensorboard]'``);
view with ``tensorboard --logdir <out>/tensorboard``.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from tlbench import Tracker, UserError, hookimpl


def run_folder(description: str, cell_id: str) -> str:
    """A folder name for a cell's run: its description in safe characters, then its id."""
    safe = re.sub(r"[^A-Za-z0-9_.=+-]+", "_", description.replace("->", "_to_")).strip("_")
    return f"{safe}_{cell_id}"


class TensorBoardTracker(Tracker):
    """TensorBoard event files: one run per cell, curves as scalars, under <out>/tensorboard."""

    name = "tensorboard"
    description = "TensorBoard event files, one run per cell (curves, results, configuration)"
    option_help = {"log_dir": "folder for the runs (default: <out>/tensorboard)"}

    @classmethod
    def local_paths(cls, out_dir, options) -> list[Path]:
        """``log_dir`` (nothing local for a bucket such as ``s3://...``), else ``<out>/tensorboard``."""
        if not options.get("log_dir"):
            return [Path(out_dir) / "tensorboard"]
        folder = cls.local_path(str(options["log_dir"]))
        return [folder] if folder is not None else []

    def __init__(self, out_dir, suite, **options):
        super().__init__(out_dir, suite, **options)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise UserError(
                "tracker 'tensorboard' needs the tensorboard package: pip install 'tlbench[tensorboard]'"
            ) from exc
        self._writer = SummaryWriter
        self.root = Path(self.options.get("log_dir") or self.out_dir / "tensorboard")

    def log_cell(self, cell, record) -> None:
        run_dir = self.root / run_folder(cell.describe(), cell.id)
        if run_dir.exists():  # a cell sent again (--force) replaces its run
            shutil.rmtree(run_dir)
        writer = self._writer(log_dir=str(run_dir))
        try:
            for metric, step, value in self.curve_points(record):
                writer.add_scalar(f"train/{metric}", value, step)
            last = int(record.steps or 0)
            for key, value in self.record_metrics(record).items():
                writer.add_scalar(f"result/{key}", value, last)
            status = record.status + (f": {record.error.splitlines()[0]}" if record.error else "")
            writer.add_text("status", status, last)
            writer.add_text("config", "```\n" + json.dumps(self.cell_params(cell), indent=1) + "\n```", last)
        finally:
            writer.close()


@hookimpl
def register_trackers(register):
    register(TensorBoardTracker)
