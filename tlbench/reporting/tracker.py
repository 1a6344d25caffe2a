"""The tracker contract: send each finished cell to an experiment tracker (TensorBoard, MLflow, ...).

Trackers run in the driver process only, fed by the runner as records arrive from the workers, so a
Ray or Slurm worker needs no tracker credentials or network. A tracker sees each cell once, when it
finishes in this run: cells a resumed run skips were sent by the run that finished them. A tracker
that fails (a server down, a full disk) costs a warning naming it, never a cell or the run's exit
code: see :class:`tlbench.matrix.tracking.TrackerFeed`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import unquote

from tlbench.errors import UserError
from tlbench.plugins.registry import Plugin
from tlbench.reporting.stats import finite_number

if TYPE_CHECKING:
    from tlbench.spec.cell import Cell
    from tlbench.spec.record import CellRecord


#: a URI's scheme (two characters at least: ``C:`` is a drive letter)
_URI_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+")


def _file_uri_path(rest: str, *, keeps_slash: bool) -> Path | None:
    """The path of a ``file:`` URI (``keeps_slash``: ``file:///abs``) or an SQLite one (``sqlite:///rel``,
    ``sqlite:////abs``) after its scheme; None for another host or an in-memory database."""
    if rest.startswith("//"):
        authority, slash, path = rest[2:].partition("/")
        if authority not in ("", "localhost"):
            return None
        rest = slash + path if keeps_slash else path
    rest = rest.split("?", 1)[0]
    return Path(unquote(rest)).absolute() if rest and rest != ":memory:" else None


class Tracker(Plugin):
    """Base class of tracker plugins. ``option_help`` lists the options a suite may give it.

    ``out_dir`` is the run's output folder: a tracker that stores locally by default stores there,
    never elsewhere. ``suite`` is the resolved suite (``suite.json``'s content).
    """

    plugin_kind: ClassVar[str] = "tracker"
    name: ClassVar[str] = ""
    #: a one-line description for ``tlbench list trackers``
    description: ClassVar[str] = ""
    option_help: ClassVar[dict[str, str]] = {}

    def __init__(self, out_dir: Path, suite: dict[str, Any], **options: Any):
        unknown = sorted(set(options) - set(self.option_help))
        if unknown:
            raise UserError(
                f"tracker {self.name!r}: unknown option(s) {', '.join(unknown)}; "
                f"valid: {', '.join(self.option_help) or 'none'}"
            )
        self.out_dir, self.suite, self.options = Path(out_dir), suite, options

    @classmethod
    def local_paths(cls, out_dir: Path, options: dict[str, Any]) -> list[Path]:
        """The local files and folders this tracker would write with these options, known before it is
        made: tlbench refuses a run whose tracker would write inside the data root, as it refuses
        ``--out`` there. Default: ``out_dir`` alone. A tracker with a location option (a folder, a
        ``file:`` or ``sqlite:`` URI) returns where it points; :meth:`local_path` reads such a URI."""
        return [Path(out_dir)]

    @staticmethod
    def local_path(location: str) -> Path | None:
        """The local path a location names: a plain path, ``file:`` or a database URI on a file
        (``sqlite:///abs/ml.db``); None for a server (``http://``, ``postgresql://host/db``...).
        Relative paths are taken from the current folder, as the libraries that open them do."""
        scheme, sep, rest = str(location).partition(":")
        if not sep or not _URI_SCHEME.fullmatch(scheme):
            return Path(location).absolute()  # a plain path
        if scheme == "file" or scheme.startswith("sqlite"):
            return _file_uri_path(rest, keeps_slash=scheme == "file")
        return None

    def log_cell(self, cell: Cell, record: CellRecord) -> None:
        """One finished cell: its configuration (``cell.config()``), its record and ``record.curves``
        (``{"steps": [...], "series": {name: [...]}}``, or None for a cell that did not train).
        A cell sent again (``--force``) replaces what the tracker had for it."""
        raise NotImplementedError

    def log_reports(self, files: list[Path]) -> None:
        """The leaderboard files of this run, once they are written (optional)."""

    def close(self) -> None:
        """After the last cell and the reports; also after an error or Ctrl-C."""

    # -- helpers for subclasses -----------------------------------------------------------------
    @staticmethod
    def cell_params(cell: Cell) -> dict[str, str]:
        """A cell's configuration as flat ``key.sub: value`` strings (a tracker's run parameters)."""
        out: dict[str, str] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, dict):
                for k, v in sorted(value.items()):
                    walk(f"{prefix}.{k}" if prefix else str(k), v)
            else:
                out[prefix] = "" if value is None else str(value)

        walk("", cell.config())
        return out

    @staticmethod
    def record_metrics(record: CellRecord) -> dict[str, float]:
        """A record's numbers (accuracies, costs, the strategy's metric means) for a run's summary."""
        names = (
            "target_acc",
            "source_acc",
            "train_img_per_s",
            "eval_img_per_s",
            "peak_mem_mb",
            "wall_s",
            "trainable_params",
            "total_params",
            "steps",
        )
        out = {n: float(getattr(record, n)) for n in names if finite_number(getattr(record, n))}
        out.update({f"extra.{k}": float(v) for k, v in sorted(record.extra.items()) if finite_number(v)})
        return out

    @staticmethod
    def curve_points(record: CellRecord) -> list[tuple[str, int, float]]:
        """``(metric, step, value)`` for every point of the record's curves, in step order per metric."""
        curves = record.curves or {}
        steps = curves.get("steps") or []
        return [
            (name, int(step), float(value))
            for name, values in sorted((curves.get("series") or {}).items())
            for step, value in zip(steps, values)
            if value is not None
        ]
