"""The results directory: one folder per cell named by its id, and the tables of every record.

Layout of an output directory (DomainBed-style)::

    <out>/cells/<cell_id>/record.json      the cell's record; its presence marks the cell done
    <out>/cells/<cell_id>/curves.json      its training curves (metrics and learning rates at logging points)
    <out>/cells/<cell_id>/evaluations.npz  its checkpoint evaluations, what validators score
                                           (tlbench.spec.evaluations)
    <out>/cells/<cell_id>/running.json     while the cell runs: who runs it, how many runs died on it before
    <out>/cells/<cell_id>/model.pt         trained weights, only for cells another cell needs (kd teachers)
    <out>/results.csv                      every cell once, exactly RESULT_COLUMNS (text cells made
                                           formula-safe: tlbench.data.files.csv_safe)
    <out>/results.jsonl                    every record, strategy extras included
    <out>/suite.json                       the suite summary (tlbench.spec.summary)

Every file is written to a temporary name and renamed, so a kill at any moment leaves either
the old file or the new one, never half of one.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import os
import socket
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tlbench.data.files import atomic_write_bytes, atomic_write_text, csv_safe, read_regular
from tlbench.spec.evaluations import CheckpointEvaluations
from tlbench.spec.record import DONE_STATUSES, RESULT_COLUMNS, CellRecord, json_finite
from tlbench.spec.summary import SuiteSummary
from tlbench.spec.write_errors import RUN_AGAIN as RUN_AGAIN_TO_RESUME
from tlbench.spec.write_errors import reported_write_errors

#: what a record that does not validate means, said in its warning: to a run, which runs its cell again
RUN_AGAIN = "its cell is run again"

#: the largest record.json or suite.json read (far above any real one): a FIFO in their place would
#: hang the read and a link to /dev/zero fill memory, so only regular files up to this size are read
MAX_JSON_BYTES = 64 * 2**20
#: the largest curves.json read (a long run logged often writes more than a record)
MAX_CURVES_BYTES = 256 * 2**20
#: the largest running.json read (a few numbers)
MAX_RUNNING_BYTES = 2**20


def left_out_of(what: str) -> str:
    """What a record that does not validate means to a reader of results (``tlbench report``, ``curves``)."""
    return f"it is left out of {what} ('tlbench run' with the same suite and --out runs its cell again)"


class ResultsDir:
    """Reads and writes one output directory.

    ``damaged`` ends the warning about a record that does not validate: what the caller does about it
    (a run runs the cell again, the default; a report leaves it out: :func:`left_out_of`)."""

    def __init__(self, root: Path, *, damaged: str = RUN_AGAIN):
        self.root = Path(root)
        self.damaged = damaged
        self._warned: set[Path] = set()
        #: every record of the folder by cell id, once the tables were first written: later writes
        #: update it, so the tables never read every record again after each cell
        self._table: dict[str, CellRecord] | None = None

    def cell_dir(self, cell_id: str) -> Path:
        return self.root / "cells" / cell_id

    def record_path(self, cell_id: str) -> Path:
        return self.cell_dir(cell_id) / "record.json"

    def model_path(self, cell_id: str) -> Path:
        return self.cell_dir(cell_id) / "model.pt"

    def curves_path(self, cell_id: str) -> Path:
        return self.cell_dir(cell_id) / "curves.json"

    def evaluations_path(self, cell_id: str) -> Path:
        return self.cell_dir(cell_id) / "evaluations.npz"

    def running_path(self, cell_id: str) -> Path:
        return self.cell_dir(cell_id) / "running.json"

    def _writing(self):
        """A full disk or a folder that became unwritable while a run writes here: one line naming
        the output folder (:mod:`tlbench.spec.write_errors`), not a traceback."""
        return reported_write_errors(
            f"output folder {self.root}",
            retry=f"{RUN_AGAIN_TO_RESUME} to resume (finished cells are kept)",
            elsewhere=f"make it writable, then {RUN_AGAIN_TO_RESUME} to resume",
        )

    def write_running(self, cell_id: str, deaths: int) -> None:
        """Mark a cell as running (by this process), with how many runs have died on it before."""
        mark = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "deaths": deaths,
            "since": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        with self._writing():
            atomic_write_text(self.running_path(cell_id), json.dumps(mark, sort_keys=True) + "\n")

    def read_deaths(self, cell_id: str) -> int:
        """How many runs have died while this cell ran (0 without a readable ``running.json``)."""
        try:
            deaths = json.loads(read_regular(self.running_path(cell_id), MAX_RUNNING_BYTES)).get("deaths", 0)
        except (OSError, ValueError, AttributeError):
            return 0
        return deaths if isinstance(deaths, int) and not isinstance(deaths, bool) else 0

    def is_done(self, cell_id: str) -> bool:
        """Whether the cell has a result to keep: a valid record that is ok or diverged.

        A failed cell is retried by the next run (its error may have been the machine's: a device
        asked for that is not there, a damaged teacher, memory); diverging is a result.
        """
        record = self.read_record(cell_id)
        return record is not None and record.status in DONE_STATUSES

    def write_record(self, record: CellRecord) -> None:
        """The curves and evaluations first, then the record that marks the cell done."""
        text = record.to_json()
        with self._writing():
            if record.evaluations is not None:
                atomic_write_bytes(self.evaluations_path(record.cell_id), record.evaluations.to_bytes())
            if record.curves is not None:
                atomic_write_text(self.curves_path(record.cell_id), json.dumps(json_finite(record.curves)) + "\n")
            atomic_write_text(self.record_path(record.cell_id), text + "\n")
        if self._table is not None:  # as a reader would see it, without its curves and evaluations
            self._table[record.cell_id] = CellRecord.from_dict(json.loads(text))

    def read_curves(self, cell_id: str) -> dict[str, Any] | None:
        """A cell's curves as written, or None when it has none (or they cannot be read)."""
        try:
            curves = json.loads(read_regular(self.curves_path(cell_id), MAX_CURVES_BYTES))
        except (OSError, ValueError):
            return None
        return curves if isinstance(curves, dict) else None

    def read_evaluations(self, cell_id: str) -> CheckpointEvaluations | None:
        """A cell's checkpoint evaluations, or None when it has none (see :func:`read_evaluations`)."""
        return read_evaluations(self.evaluations_path(cell_id))

    def read_record(self, cell_id: str) -> CellRecord | None:
        """The cell's record; None when there is none or it does not validate (warned about once)."""
        return self._read(self.record_path(cell_id))

    def records(self, *, curves: bool = False) -> list[CellRecord]:
        """Every valid record in the directory, ordered by start time (then id) for stable output; with
        ``curves``, each record's curves attached (for reports and ``tlbench curves``)."""
        found = [self._read(p) for p in sorted((self.root / "cells").glob("*/record.json"))]
        records = [r for r in found if r is not None]
        if curves:
            for r in records:
                r.curves = self.read_curves(r.cell_id)
        return sorted(records, key=lambda r: (r.started_at, r.cell_id))

    def _read(self, path: Path) -> CellRecord | None:
        if not path.exists():
            return None
        try:
            return CellRecord.from_dict(json.loads(read_regular(path, MAX_JSON_BYTES).decode("utf-8")))
        except (OSError, ValueError) as exc:  # not JSON, the wrong shape, a folder, a FIFO: not a result
            if path not in self._warned:
                self._warned.add(path)
                warnings.warn(
                    f"record {path} is not a valid cell record ({_reason(exc)}); {self.damaged}", stacklevel=3
                )
            return None

    def write_tables(self) -> None:
        """Rewrite results.csv and results.jsonl from the records (each cell exactly once).

        The folder's records are read once, at the first call; after that the records this object
        wrote keep the tables current (a run holds the folder's lock, so nothing else writes there)."""
        if self._table is None:
            self._table = {r.cell_id: r for r in self.records()}  # read without their curves
        records = sorted(self._table.values(), key=lambda r: (r.started_at, r.cell_id))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(RESULT_COLUMNS), lineterminator="\n")
        writer.writeheader()
        for r in records:
            writer.writerow({k: ("" if v is None else csv_safe(v)) for k, v in r.row().items()})
        with self._writing():
            atomic_write_text(self.root / "results.csv", buf.getvalue())
            atomic_write_text(self.root / "results.jsonl", "".join(r.to_json() + "\n" for r in records))

    def write_suite(self, summary: SuiteSummary) -> None:
        with self._writing():
            atomic_write_text(self.root / "suite.json", summary.to_json())

    def read_suite(self) -> SuiteSummary:
        """The summary a run wrote; an empty one (with a warning) when absent, unreadable or not a JSON object."""
        path = self.root / "suite.json"
        if not path.exists():
            return SuiteSummary()
        try:
            data = json.loads(read_regular(path, MAX_JSON_BYTES).decode("utf-8"))
            if not isinstance(data, dict):
                raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        except (OSError, ValueError) as exc:
            warnings.warn(f"{path} is not a suite description ({_reason(exc)}); reporting without it", stacklevel=2)
            return SuiteSummary()
        return SuiteSummary.from_dict(data)


def _reason(exc: Exception) -> str:
    """An exception as a short clause: JSON errors and OS errors say what, without a traceback."""
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def load_records(dirs: Iterable[Path], *, curves: bool = False, reader: str = "the report") -> list[CellRecord]:
    """Records of several results directories merged; the same cell id counts once (newest wins). A record
    that does not validate is named in a warning as left out of ``reader`` (nothing is run here)."""
    by_id: dict[str, CellRecord] = {}
    for d in dirs:
        for r in ResultsDir(d, damaged=left_out_of(reader)).records(curves=curves):
            old = by_id.get(r.cell_id)
            if old is None or r.started_at >= old.started_at:
                by_id[r.cell_id] = r
    return sorted(by_id.values(), key=lambda r: (r.started_at, r.cell_id))


def read_evaluations(path: Path) -> CheckpointEvaluations | None:
    """The checkpoint evaluations in ``path``; None when there are none, or (warned) when damaged."""
    if not path.is_file():
        return None
    try:
        return CheckpointEvaluations.from_bytes(path.read_bytes())
    except (OSError, ValueError) as exc:
        warnings.warn(
            f"{path} cannot be read ({_reason(exc)}); that cell is left out of validator "
            "selection: rerun it with --force to store its evaluations again",
            stacklevel=2,
        )
        return None


def evaluation_files(dirs: Iterable[Path]) -> dict[str, Path]:
    """Every stored ``evaluations.npz`` of several results directories by cell id; a cell found in two
    directories is the same configuration (its id is a hash of it), so either file serves: the last wins."""
    found: dict[str, Path] = {}
    for d in dirs:
        for path in sorted((Path(d) / "cells").glob("*/evaluations.npz")):
            found[path.parent.name] = path
    return found
