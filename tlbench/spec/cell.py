"""Cells: one (backbone, strategy + params, source, target, seed, recipe) of a matrix.

Under protocol ``finetune`` a cell's source and target are both its task, and its label budget
is one more axis; those keys enter the id only for finetune cells, so uda cells keep theirs.

A cell's id is a hash of its resolved configuration, so an output directory knows what is done
whatever order or subset of the matrix a later command asks for. A ``kd`` cell depends on its
teacher's cell, which is an ordinary cell of its own (and reused when the matrix has it). How a
suite expands into cells: :mod:`tlbench.spec.expand`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from tlbench.data.domains import DomainSpec
from tlbench.data.splits import SPLIT_SEED, TEST_FRACTION, VALIDATION_FRACTION
from tlbench.spec.recipe import Recipe
from tlbench.spec.sweep import SweepPoint


@dataclass(frozen=True)
class Cell:
    """One cell of a matrix: everything that determines its result, and the row it reports in."""

    suite: str
    dataset: str
    dataset_options: dict[str, Any]
    backbone: str
    weights: str
    strategy: str
    label: str  # row name in leaderboards: the strategy name, or the suite's label for it
    params: dict[str, Any]  # resolved, defaults included
    source: str
    target: str
    seed: int
    recipe: Recipe
    shift_seed: int = 0
    teacher: Cell | None = field(default=None, compare=False)
    #: the leaderboard row of its backbone (the suite's ``label``, default the name); not in the id
    backbone_label: str = field(default="", compare=False)
    #: the point of a sweep this cell is; None outside a sweep
    sweep: SweepPoint | None = field(default=None, compare=False)
    protocol: str = "uda"
    budget: str = ""  # finetune: the label budget ('10%', '5-shot')
    score_on: str = "test"  # finetune: the split scored (test, or validation carved from the training split)

    @property
    def finetune(self) -> bool:
        return self.protocol == "finetune"

    @property
    def adapts_source_model(self) -> bool:
        """Adapted from a trained source model (its teacher cell) with unlabelled target images alone,
        the source domain never loaded: protocols ``source_free`` and ``test_time``."""
        return self.protocol in ("source_free", "test_time")

    @property
    def test_time(self) -> bool:
        """Scored on predictions made online, batch by batch, as the target streams past."""
        return self.protocol == "test_time"

    @property
    def task(self) -> str:
        """A finetune cell's task (its source and target); empty for uda cells."""
        return self.source if self.finetune else ""

    @property
    def row_backbone(self) -> str:
        """The backbone column of this cell's record and leaderboard row."""
        return self.backbone_label or self.backbone

    def config(self) -> dict[str, Any]:
        """What determines the result (the suite's name and the data root's location do not)."""
        return {
            "dataset": self.dataset,
            "dataset_options": self.dataset_options,
            "backbone": self.backbone,
            "weights": self.weights,
            "strategy": self.strategy,
            "params": self.params,
            "source": self.source,
            "target": self.target,
            "seed": self.seed,
            "recipe": self.recipe.id_config(),
            "shift_seed": self.shift_seed,
            "teacher": self.teacher.id if self.teacher else None,
            **({"derived_split": "stratified"} if self.derived_pair else {}),
            **(
                {
                    "protocol": self.protocol,
                    "budget": self.budget,
                    "score_on": self.score_on,
                    "test_split": _test_split_rule(),
                }
                if self.finetune
                else {"protocol": self.protocol}
                if self.adapts_source_model
                else {}
            ),
        }

    @property
    def derived_pair(self) -> bool:
        """Source and target derive from one base domain (``digits->digits+invert``): the engine
        splits its images between them, class by class (the split is part of the cell's id)."""
        return not self.finetune and DomainSpec.parse(self.source).base == DomainSpec.parse(self.target).base

    @property
    def id(self) -> str:
        blob = json.dumps(self.config(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def pair(self) -> str:
        """The leaderboard column: ``source->target``, or ``task budget`` under finetune."""
        return column_label(self.protocol, self.source, self.target, self.budget)

    def describe(self) -> str:
        return f"{self.backbone} {self.label} {self.pair} seed={self.seed}"


def column_label(protocol: str, source: str, target: str, budget: str) -> str:
    """A cell's leaderboard column: ``source->target`` (uda), ``task budget`` (finetune: source is the task)."""
    return f"{source} {budget}" if protocol == "finetune" else f"{source}->{target}"


def _test_split_rule() -> str:
    """How a task without an official split is divided (its change would change every finetune result)."""
    return f"official, else stratified test={TEST_FRACTION} seed={SPLIT_SEED}; validation={VALIDATION_FRACTION}"


@dataclass
class CellTask:
    """Everything a worker needs to train one cell; picklable, so any launcher can ship it."""

    cell: Cell
    out_dir: str
    data_root: str | None
    cache_dir: str | None
    device: str = "auto"
    save_model: bool = False
    #: path of the teacher's saved weights, for cells whose strategy needs_teacher (kd, adda)
    teacher_model: str | None = None
    show_progress: bool = True
    strict_plugins: bool = False
    debug: bool = False
