"""Cell records: what one cell produced and what it cost, the schema of ``record.json`` and ``results.csv``.

Where records are kept on disk (one folder per cell, the results tables): :mod:`tlbench.spec.store`.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

import tlbench
from tlbench.spec.cell import Cell, column_label
from tlbench.spec.evaluations import CheckpointEvaluations
from tlbench.spec.sweep import SweepPoint

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
    "label",
)
STATUSES = ("ok", "failed", "diverged")
#: statuses a rerun keeps: a failed cell is run again, a diverged one is a result (``--force`` reruns it)
DONE_STATUSES = ("ok", "diverged")


@dataclass
class CellRecord:
    """One cell's outcome: the results schema plus strategy-specific ``extra`` metrics.

    ``backbone`` and ``label`` name its leaderboard row (the suite's labels, else the names);
    ``strategy`` is the strategy's registered name and ``sweep`` the point of a sweep the cell was.
    """

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
    #: the leaderboard row: the suite's label for the strategy entry, else its name (default: ``strategy``)
    label: str = ""
    #: the point of a sweep this cell was; None outside a sweep
    sweep: SweepPoint | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: the training curves (``tlbench.training.curves.Curves.to_dict()``): they travel with the record
    #: from the worker to the driver, which writes them to ``curves.json`` beside ``record.json``
    curves: dict[str, Any] | None = field(default=None, repr=False, compare=False)
    #: the checkpoint evaluations: like the curves, they travel with the record to the driver, which
    #: writes them to ``evaluations.npz``; records read back from disk leave them there (they are large)
    evaluations: CheckpointEvaluations | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        # records written before label and sweep were fields kept them in extra
        extra = self.extra if isinstance(self.extra, dict) else {}
        if not self.label:
            old = extra.get("label")
            self.label = old if isinstance(old, str) and old else self.strategy
        if self.sweep is None and "sweep" in extra:
            self.sweep = SweepPoint.from_dict(extra["sweep"])

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
        d["sweep"] = self.sweep.to_dict() if self.sweep is not None else None
        return json.dumps(json_finite(d), sort_keys=True)

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
            kinds = _FIELD_TYPES[str(f.type)]
            value = d[name]
            if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
                raise ValueError(f"field {name!r} is {type(value).__name__}, expected {f.type}")
        if d["status"] not in STATUSES:
            raise ValueError(f"status {d['status']!r} is not one of {', '.join(STATUSES)}")
        values = {k: v for k, v in d.items() if k in names}
        values["sweep"] = SweepPoint.from_dict(values.get("sweep"))
        return cls(**values)


def failure_record(
    cell: Cell,
    status: str,
    error: str,
    *,
    started_at: str = "",
    wall_s: float | None = None,
    device: str = "",
    steps: int | None = None,
) -> CellRecord:
    """The record of a cell that failed or diverged (``status``), with the error that stopped it: the one
    builder for the engine (a cell that raised) and the driver (a cell that never got to train)."""
    return CellRecord(
        **cell_fields(cell),
        status=status,
        error=error,
        steps=steps,
        wall_s=wall_s,
        device=device,
        torch_version=_torch_version(),
        tlbench_version=tlbench.__version__,
        started_at=started_at or now(),
    )


def cell_fields(cell: Cell) -> dict[str, Any]:
    """The fields a record takes from its cell: what it was, where it reports (row, column), its sweep point."""
    return {
        "suite": cell.suite,
        "dataset": cell.dataset,
        "backbone": cell.row_backbone,
        "strategy": cell.strategy,
        "label": cell.label,
        "sweep": cell.sweep,
        "source": cell.source,
        "target": cell.target,
        "seed": cell.seed,
        "cell_id": cell.id,
        "protocol": cell.protocol,
        "task": cell.task,
        "budget": cell.budget,
    }


def now() -> str:
    """The time a record says its cell started: UTC, to the second."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _torch_version() -> str:
    import torch  # not at the top: the data model is read without torch (reports, --help)

    return torch.__version__


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
    "SweepPoint | None": (dict, type(None)),
}


def json_finite(obj: Any) -> Any:
    """JSON has no NaN/inf: write them as null so every reader can parse the file."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_finite(v) for v in obj]
    return obj
