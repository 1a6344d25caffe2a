"""The suite summary: what reports need to know about the suite a results folder came from (``suite.json``).

The driver writes it from the run's :class:`tlbench.spec.plan.Plan`; reporting reads it back as this
typed object. A folder may be reported on long after its run, by another tlbench version, merged with
others, or with a damaged ``suite.json``: reading is tolerant (a field of the wrong type counts as
unknown, and the leaderboard falls back on what the records say), except for published reference rows,
which are shown as numbers and so must be whole.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from tlbench.errors import UserError
from tlbench.spec.suite import Reference

if TYPE_CHECKING:
    from tlbench.spec.suite import Suite


@dataclass
class SuiteSummary:
    """The suite behind a results folder; every field may be unknown (a folder without ``suite.json``)."""

    name: str = ""
    description: str = ""
    dataset: str = ""
    #: uda or finetune; "" when unknown (a merged report then names the records' protocols)
    protocol: str = ""
    #: the leaderboard's columns in the suite's order: pairs, or ``task budget`` under finetune
    columns: list[str] | None = None
    backbones: list[str] | None = None
    strategies: list[str] | None = None  # row labels
    seeds: list[int] | None = None
    #: how many (backbone, pair) runs a strategy and seed have (backbones may run only some pairs)
    backbone_pair_runs: int | None = None
    recipe: dict[str, Any] = field(default_factory=dict)
    recipe_sweep: dict[str, Any] = field(default_factory=dict)
    #: the main table's selection rule: last or a validator's name; "" when unknown
    selection: str = ""
    references: list[Reference] = field(default_factory=list)
    #: finetune only: the tasks, the label budgets and the split scored
    tasks: list[str] | None = None
    budgets: list[str] | None = None
    score_on: str | None = None

    @classmethod
    def of(cls, suite: Suite, columns: list[str], tasks: list[str], references: list[dict[str, Any]]) -> SuiteSummary:
        """The summary of a validated suite whose columns, tasks and references are already canonical."""
        finetune = suite.protocol == "finetune"
        return cls(
            name=suite.name,
            description=suite.description,
            dataset=suite.dataset,
            protocol=suite.protocol,
            columns=columns,
            backbones=[b.name for b in suite.backbones],
            strategies=[s.label or s.name for s in suite.strategies],
            seeds=list(suite.seeds),
            backbone_pair_runs=sum(len(b.pairs) if b.pairs is not None else len(columns) for b in suite.backbones),
            recipe=json.loads(suite.recipe.model_dump_json()),
            recipe_sweep=dict(suite.recipe_sweep),
            selection=suite.selection,
            references=[Reference.model_validate(r) for r in references],
            tasks=tasks if finetune else None,
            budgets=list(suite.budgets) if finetune else None,
            score_on=suite.score_on if finetune else None,
        )

    def expected_cells(self) -> int | None:
        """How many cells the suite's matrix has (None where the summary cannot say)."""
        if not (self.backbones and self.strategies and self.seeds) or self.columns is None:
            return None
        runs = self.backbone_pair_runs or len(self.backbones) * len(self.columns)
        return runs * len(self.strategies) * len(self.seeds)

    def to_dict(self) -> dict[str, Any]:
        """The summary as ``suite.json`` holds it (the keys tlbench has always written)."""
        out: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "dataset": self.dataset,
            "protocol": self.protocol,
            "pairs": self.columns,
            "backbones": self.backbones,
            "backbone_pair_runs": self.backbone_pair_runs,
            "strategies": self.strategies,
            "seeds": self.seeds,
            "recipe": self.recipe,
            "recipe_sweep": self.recipe_sweep,
            "selection": self.selection,
            "reference": [r.model_dump() for r in self.references],
        }
        if self.protocol == "finetune":
            out.update({"tasks": self.tasks, "budgets": self.budgets, "score_on": self.score_on})
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SuiteSummary:
        """The summary a ``suite.json`` object describes; a field of the wrong type is unknown. A reference
        row that is not whole is a :class:`UserError` (reports would show it as published numbers)."""
        finetune = data.get("protocol") == "finetune"
        return cls(
            name=_text(data.get("name")),
            description=_text(data.get("description")),
            dataset=_text(data.get("dataset")),
            protocol=_text(data.get("protocol")),
            columns=_texts(data.get("pairs")),
            backbones=_texts(data.get("backbones")),
            strategies=_texts(data.get("strategies")),
            seeds=_ints(data.get("seeds")),
            backbone_pair_runs=_int(data.get("backbone_pair_runs")),
            recipe=_mapping(data.get("recipe")),
            recipe_sweep=_mapping(data.get("recipe_sweep")),
            selection=_text(data.get("selection")),
            references=_references(data.get("reference")),
            tasks=_texts(data.get("tasks")) if finetune else None,
            budgets=_texts(data.get("budgets")) if finetune else None,
            score_on=_text(data.get("score_on")) or None if finetune else None,
        )


def merge_summaries(summaries: list[SuiteSummary]) -> SuiteSummary:
    """Several folders reported as one: the first known summary, with the reference rows of all (each once)."""
    known = [s for s in summaries if s.name]
    merged = dataclasses.replace(known[0]) if known else SuiteSummary()
    references: list[Reference] = []
    for s in summaries:
        references.extend(r for r in s.references if r not in references)
    merged.references = references
    return merged


def _text(value: Any) -> str:
    return str(value) if isinstance(value, (str, int, float)) and not isinstance(value, bool) else ""


def _texts(value: Any) -> list[str] | None:
    return [str(v) for v in value] if isinstance(value, list) else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _ints(value: Any) -> list[int] | None:
    if not isinstance(value, list) or not all(_int(v) is not None for v in value):
        return None
    return list(value)


def _mapping(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, dict) else {}


def _references(value: Any) -> list[Reference]:
    out = []
    for i, ref in enumerate(value if isinstance(value, list) else []):
        try:
            if not isinstance(ref, dict) or not isinstance(ref.get("acc"), dict):
                raise ValueError
            out.append(Reference.model_validate(ref))
        except (ValueError, ValidationError):
            raise UserError(
                f"suite reference[{i}]: expected a mapping with backbone, strategy, source, "
                f"acc {{pair: accuracy}} and optional avg; got {ref!r}"
            ) from None
    return out
