"""Cell records and the results directory.

Layout of an output directory (DomainBed-style, one folder per cell named by its id)::

    <out>/cells/<cell_id>/record.json    the cell's record; its presence marks the cell done
    <out>/cells/<cell_id>/curves.json    its training curves (metrics and learning rates at logging points)
    <out>/cells/<cell_id>/evaluations.npz  its checkpoint evaluations, what validators score (tlbench.matrix.evaluations)
    <out>/cells/<cell_id>/running.json   while the cell runs: who runs it, how many runs died on it before
    <out>/cells/<cell_id>/model.pt       trained weights, only for cells another cell needs (kd teachers)
    <out>/results.csv                    every cell once, exactly RESULT_COLUMNS
    <out>/results.jsonl                  every record, strategy extras included
    <out>/suite.json                     the resolved suite (for reports: name, references)

Every file is written to a temporary name and renamed, so a kill at any moment leaves either
the old file or the new one, never half of one.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import socket
import warnings
from collections.abc import Iterable
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from tlbench.data.files import atomic_write_bytes, atomic_write_text
from tlbench.matrix.evaluations import CheckpointEvaluations

RESULT_COLUMNS = (
    "suite",
    "dataset",
    "backbone",
    "strategy",
    "source",
    "target",
    "seed",
    "status",
    "error",
    "target_acc",
    "source_acc",
    "train_img_per_s",
    "eval_img_per_s",
    "peak_mem_mb",
    "trainable_params",
    "total_params",
    "steps",
    "wall_s",
    "device",
    "torch_version",
    "tlbench_version",
    "cell_id",
    "started_at",
    "protocol",
    "task",
    "budget",
    "train_images",
    "test_images",
)
STATUSES = ("ok", "failed", "diverged")
#: statuses a rerun keeps: a failed cell is run again, a diverged one is a result (``--force`` reruns it)
DONE_STATUSES = ("ok", "diverged")


@dataclass
class CellRecord:
    """One cell's outcome: the results schema plus strategy-specific ``extra`` metrics."""

    suite: str
    dataset: str
    backbone: str
    strategy: str
    source: str
    target: str
    seed: int
    status: str
    error: str = ""
    target_acc: float | None = None
    source_acc: float | None = None
    train_img_per_s: float | None = None
    eval_img_per_s: float | None = None
    peak_mem_mb: float | None = None
    trainable_params: int | None = None
    total_params: int | None = None
    steps: int | None = None
    wall_s: float | None = None
    device: str = ""
    torch_version: str = ""
    tlbench_version: str = ""
    cell_id: str = ""
    started_at: str = ""
    #: uda, or finetune: then ``task`` and ``budget`` (``10%``, ``5-shot``) name its leaderboard column
    protocol: str = "uda"
    task: str = ""
    budget: str = ""
    #: images of the training split (finetune: labelled and held back) and of the scored split
    train_images: int | None = None
    test_images: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: the training curves (``tlbench.training.curves.Curves.to_dict()``): they travel with the record
    #: from the worker to the driver, which writes them to ``curves.json`` beside ``record.json``
    curves: dict[str, Any] | None = field(default=None, repr=False, compare=False)
    #: the checkpoint evaluations: like the curves, they travel with the record to the driver, which
    #: writes them to ``evaluations.npz``; records read back from disk leave them there (they are large)
    evaluations: CheckpointEvaluations | None = field(default=None, repr=False, compare=False)

    @property
    def column(self) -> str:
        """Its leaderboard column: ``source->target``, or ``task budget`` under finetune (as ``Cell.pair``)."""
        return column_label(self.protocol, self.source, self.target, self.budget)

    @property
    def scored(self) -> bool:
        """Whether the cell has a result to average and rank: status ok and a finite target accuracy."""
        acc = self.target_acc
        return (
            self.status == "ok" and isinstance(acc, (int, float)) and not isinstance(acc, bool) and math.isfinite(acc)
        )

    def row(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in RESULT_COLUMNS}

    def to_json(self) -> str:
        """The record as ``record.json`` and ``results.jsonl`` hold it (curves have their own file)."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _OWN_FILES}
        return json.dumps(_finite(d), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CellRecord:
        """The record a JSON object describes; a ``ValueError`` naming the first field of the wrong shape."""
        if not isinstance(d, dict):
            raise ValueError(f"expected a JSON object, got {type(d).__name__}")
        names = {f.name: f for f in fields(cls) if f.name not in _OWN_FILES or f.name == "curves"}
        for name, f in names.items():
            if name not in d:
                if f.default is MISSING and f.default_factory is MISSING:
                    raise ValueError(f"field {name!r} is missing")
                continue
            kinds = _FIELD_TYPES[f.type]
            value = d[name]
            if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
                raise ValueError(f"field {name!r} is {type(value).__name__}, expected {f.type}")
        if d["status"] not in STATUSES:
            raise ValueError(f"status {d['status']!r} is not one of {', '.join(STATUSES)}")
        return cls(**{k: v for k, v in d.items() if k in names})


def column_label(protocol: str, source: str, target: str, budget: str) -> str:
    """A cell's leaderboard column: ``source->target`` (uda), ``task budget`` (finetune: source is the task)."""
    return f"{source} {budget}" if protocol == "finetune" else f"{source}->{target}"


#: record fields kept in files of their own beside record.json, never in it
_OWN_FILES = ("curves", "evaluations")

#: the JSON types each annotation of CellRecord accepts (ints are valid floats; null only where optional)
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float | None": (int, float, type(None)),
    "int | None": (int, type(None)),
    "dict[str, Any]": (dict,),
    "dict[str, Any] | None": (dict, type(None)),
}


def _finite(obj: Any) -> Any:
    """JSON has no NaN/inf: write them as null so every reader can parse the file."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


class ResultsDir:
    """Reads and writes one output directory."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._warned: set[Path] = set()

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

    def write_running(self, cell_id: str, deaths: int) -> None:
        """Mark a cell as running (by this process), with how many runs have died on it before."""
        mark = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "deaths": deaths,
            "since": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        atomic_write_text(self.running_path(cell_id), json.dumps(mark, sort_keys=True) + "\n")

    def read_deaths(self, cell_id: str) -> int:
        """How many runs have died while this cell ran (0 without a readable ``running.json``)."""
        try:
            deaths = json.loads(self.running_path(cell_id).read_text()).get("deaths", 0)
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
        if record.evaluations is not None:
            atomic_write_bytes(self.evaluations_path(record.cell_id), record.evaluations.to_bytes())
        if record.curves is not None:
            atomic_write_text(self.curves_path(record.cell_id), json.dumps(_finite(record.curves)) + "\n")
        atomic_write_text(self.record_path(record.cell_id), record.to_json() + "\n")

    def read_curves(self, cell_id: str) -> dict[str, Any] | None:
        """A cell's curves as written, or None when it has none (or they cannot be read)."""
        try:
            curves = json.loads(self.curves_path(cell_id).read_text())
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
            return CellRecord.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:  # not JSON, the wrong shape, a folder: not a result
            if path not in self._warned:
                self._warned.add(path)
                warnings.warn(
                    f"record {path} is not a valid cell record ({_reason(exc)}); its cell is run again", stacklevel=3
                )
            return None

    def write_tables(self) -> None:
        """Rewrite results.csv and results.jsonl from the records (each cell exactly once)."""
        import csv
        import io

        records = self.records()
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(RESULT_COLUMNS), lineterminator="\n")
        writer.writeheader()
        for r in records:
            writer.writerow({k: ("" if v is None else v) for k, v in r.row().items()})
        atomic_write_text(self.root / "results.csv", buf.getvalue())
        atomic_write_text(self.root / "results.jsonl", "".join(r.to_json() + "\n" for r in records))

    def write_suite(self, resolved: dict[str, Any]) -> None:
        atomic_write_text(self.root / "suite.json", json.dumps(resolved, indent=2, sort_keys=True) + "\n")

    def read_suite(self) -> dict[str, Any]:
        """The resolved suite a run wrote; {} (with a warning) when absent, unreadable or not a JSON object."""
        path = self.root / "suite.json"
        if not path.exists():
            return {}
        try:
            suite = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(suite, dict):
                raise ValueError(f"expected a JSON object, got {type(suite).__name__}")
            return suite
        except (OSError, ValueError) as exc:
            warnings.warn(f"{path} is not a suite description ({_reason(exc)}); reporting without it", stacklevel=2)
            return {}


def _reason(exc: Exception) -> str:
    """An exception as a short clause: JSON errors and OS errors say what, without a traceback."""
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def load_records(dirs: Iterable[Path], *, curves: bool = False) -> list[CellRecord]:
    """Records of several results directories merged; the same cell id counts once (newest wins)."""
    by_id: dict[str, CellRecord] = {}
    for d in dirs:
        for r in ResultsDir(d).records(curves=curves):
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
