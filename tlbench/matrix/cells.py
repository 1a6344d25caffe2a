"""Cells: one (backbone, strategy + params, source, target, seed, recipe) of a matrix.

Under protocol ``finetune`` a cell's source and target are both its task, and its label budget
is one more axis; those keys enter the id only for finetune cells, so uda cells keep theirs.

A cell's id is a hash of its resolved configuration, so an output directory knows what is done
whatever order or subset of the matrix a later command asks for. A ``kd`` cell depends on its
teacher's cell, which is an ordinary cell of its own (and reused when the matrix has it).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from tlbench.data.domains import parse_pair
from tlbench.errors import UserError
from tlbench.matrix.results import column_label


@dataclass(frozen=True)
class Cell:
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
    recipe: dict[str, Any]
    shift_seed: int = 0
    teacher: Cell | None = field(default=None, compare=False)
    #: the leaderboard row of its backbone (the suite's ``label``, default the name); not in the id
    backbone_label: str = field(default="", compare=False)
    #: a point of a sweep: ``values`` (the swept keys, recipe keys as ``recipe.<key>``), ``default``
    #: (every swept value is its default) and ``order`` (0: every first value); None outside a sweep
    sweep: dict[str, Any] | None = field(default=None, compare=False)
    protocol: str = "uda"
    budget: str = ""  # finetune: the label budget ('10%', '5-shot')
    score_on: str = "test"  # finetune: the split scored (test, or validation carved from the training split)

    @property
    def finetune(self) -> bool:
        return self.protocol == "finetune"

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
            "recipe": self.recipe,
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
                else {}
            ),
        }

    @property
    def derived_pair(self) -> bool:
        """Source and target derive from one base domain (``digits->digits+invert``): the engine
        splits its images between them, class by class (the split is part of the cell's id)."""
        from tlbench.data.domains import DomainSpec

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


def _test_split_rule() -> str:
    """How a task without an official split is divided (its change would change every finetune result)."""
    from tlbench.data.splits import SPLIT_SEED, TEST_FRACTION, VALIDATION_FRACTION

    return f"official, else stratified test={TEST_FRACTION} seed={SPLIT_SEED}; validation={VALIDATION_FRACTION}"


def backbone_pairs(suite, dataset, pairs: list[tuple[str, str]]) -> dict[str, list[tuple[str, str]]]:
    """The pairs each backbone of the suite runs: those of the run's ``pairs`` that its own ``pairs``
    names (each checked to be a pair of the dataset), or all of them. A run narrowed with ``--pairs``
    simply leaves a backbone out of the pairs it does not run."""
    out: dict[str, list[tuple[str, str]]] = {}
    for b in suite.backbones:
        if b.pairs is None:
            out[b.name] = list(pairs)
            continue
        own = {canonical_pair(text, dataset) for text in b.pairs}
        out[b.name] = [p for p in pairs if p in own]
    return out


@dataclass
class CellTask:
    """Everything a worker needs to train one cell; picklable, so any launcher can ship it."""

    cell: Cell
    out_dir: str
    data_root: str | None
    cache_dir: str | None
    device: str = "auto"
    save_model: bool = False
    teacher_model: str | None = None  # path of the teacher's saved weights, for kd cells
    show_progress: bool = True
    strict_plugins: bool = False
    debug: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def expand_cells(
    suite, registry, domains: list[tuple[str, str]], pairs_of: dict[str, list[tuple[str, str]]] | None = None
) -> list[Cell]:
    """The matrix backbones × strategies × pairs × seeds, plus the teacher cells it depends on.

    ``domains`` are the suite's pairs with domain names already resolved; ``pairs_of`` narrows
    them per backbone (:func:`backbone_pairs`). Teachers come first in the returned list; a
    teacher that is also a cell of the matrix appears once.
    """
    from tlbench.matrix.sweep import strategy_points

    def recipes_of(backbone) -> list[tuple[dict, dict]]:
        return [(values, r.cell_config()) for values, r in suite.recipe_points(backbone)]

    recipes = recipes_of(None)
    cells: dict[str, Cell] = {}
    ordered: list[Cell] = []

    def add(cell: Cell) -> Cell:
        if cell.id not in cells:
            cells[cell.id] = cell
            ordered.append(cell)
        elif cell.sweep and not cells[cell.id].sweep:  # a teacher that is also a point of a sweep
            ordered[ordered.index(cells[cell.id])] = cells[cell.id] = cell
        return cells[cell.id]

    protocol = getattr(suite, "protocol", "uda")
    finetune = {"protocol": protocol, "score_on": suite.score_on} if protocol == "finetune" else {}
    budgets = suite.budgets if finetune else [""]

    def make(
        backbone,
        strategy_name,
        label,
        raw_params,
        src,
        tgt,
        seed,
        teacher=None,
        recipe=recipes[0][1],
        sweep=None,
        budget="",
    ) -> Cell:
        cls = registry.get("strategy", strategy_name)
        check_protocol(cls, protocol, registry, f"{suite.name}: strategies.{label}")
        try:
            params = asdict(cls.parse_params(raw_params))
        except (TypeError, ValueError) as exc:
            raise UserError(f"{suite.name}: strategies.{label}.params: {exc}") from None
        return Cell(
            suite=suite.name,
            dataset=suite.dataset,
            dataset_options=suite.dataset_options,
            backbone=backbone.name,
            weights=backbone.weights,
            strategy=strategy_name,
            label=label,
            params=params,
            source=src,
            target=tgt,
            seed=seed,
            recipe=recipe,
            shift_seed=suite.shift_seed,
            teacher=teacher,
            backbone_label=backbone.label or "",
            sweep=sweep,
            budget=budget,
            **finetune,
        )

    students: list[Cell] = []
    for backbone in suite.backbones:
        for entry in suite.strategies:
            cls = registry.get("strategy", entry.name)
            label = entry.label or entry.name
            points = strategy_points(
                cls, entry.params, recipes_of(backbone), where=f"{suite.name}: strategies.{label}.params"
            )
            for src, tgt in (pairs_of or {}).get(backbone.name, domains):
                for budget in budgets:
                    for seed in suite.seeds:
                        for params, recipe, sweep in points:
                            args = (backbone, entry.name, label, params, src, tgt, seed)
                            teacher = None
                            if getattr(cls, "needs_teacher", False):
                                probe = make(*args, recipe=recipe, budget=budget)
                                teacher = add(_teacher_cell(suite, registry, backbone, probe, make))
                            students.append(make(*args, teacher, recipe=recipe, sweep=sweep, budget=budget))
    for cell in students:
        add(cell)
    return ordered


def _teacher_cell(suite, registry, backbone, student: Cell, make) -> Cell:
    from tlbench.matrix.suite import BackboneEntry

    p = student.params
    t_backbone = p.get("teacher_backbone") or backbone.name
    t_strategy = p.get("teacher_strategy")
    if not t_strategy:
        raise UserError(f"{suite.name}: strategy {student.label!r} needs params.teacher_strategy")
    t_cls = registry.get("strategy", t_strategy)
    check_protocol(
        t_cls,
        getattr(suite, "protocol", "uda"),
        registry,
        f"{suite.name}: strategies.{student.label}.params.teacher_strategy",
    )
    if getattr(t_cls, "needs_teacher", False):
        raise UserError(f"{suite.name}: the teacher of {student.label!r} cannot itself need a teacher ({t_strategy!r})")
    entry = next((b for b in suite.backbones if b.name == t_backbone), None)
    weights = entry.weights if entry else (backbone.weights if t_backbone == backbone.name else "auto")
    label = entry.label if entry else None
    # A teacher named like a matrix row (same backbone, strategy and params) is that row's cell.
    from tlbench.matrix.sweep import param_points

    wanted = asdict(t_cls.parse_params(p.get("teacher_params") or {}))
    row = next(
        (
            s.label or s.name
            for s in suite.strategies
            if s.name == t_strategy
            and any(asdict(t_cls.parse_params(point)) == wanted for point in param_points(t_cls, s.params))
        ),
        t_strategy,
    )
    return make(
        BackboneEntry(name=t_backbone, weights=weights, label=label),
        t_strategy,
        row,
        p.get("teacher_params") or {},
        student.source,
        student.target,
        student.seed,
        recipe=student.recipe,
        budget=student.budget,
    )


def check_protocol(cls, protocol: str, registry, where: str) -> None:
    """A strategy paired with a protocol it does not declare (``Strategy.protocols``) is one line
    naming both, the protocols it supports and the strategies that support this one."""
    supported = tuple(getattr(cls, "protocols", ("uda",)))
    if protocol in supported:
        return
    others = [
        n for n in registry.names("strategy") if protocol in getattr(registry.get("strategy", n), "protocols", ("uda",))
    ]
    raise UserError(
        f"{where}: strategy {cls.name!r} does not support protocol {protocol!r} (it supports "
        f"{', '.join(supported) or 'none'}); strategies that support {protocol}: "
        f"{', '.join(others) or 'none installed'}"
    )


def resolve_tasks(suite, dataset) -> list[tuple[str, str]]:
    """A finetune suite's tasks as (task, task) "pairs" with canonical names: each task is its own
    source (the labelled training split) and target (its test split)."""
    from tlbench.data.domains import DomainSpec

    names = dataset.domains() if suite.tasks == "all" else list(suite.tasks)
    out: list[tuple[str, str]] = []
    for text in names:
        spec = DomainSpec.parse(text)
        task = str(type(spec)(dataset.resolve(spec.base), spec.shifts))
        if (task, task) in out:
            raise UserError(f"tasks: {text!r} names task {task!r} twice")
        out.append((task, task))
    return out


def resolve_pairs(suite, dataset) -> list[tuple[str, str]]:
    """The suite's pairs as (source, target) domain specs with canonical base names (a finetune
    suite's tasks, each as its own pair: :func:`resolve_tasks`)."""
    if getattr(suite, "protocol", "uda") == "finetune":
        return resolve_tasks(suite, dataset)
    if suite.pairs == "all":
        names = dataset.domains()
        for name in names:
            _check_domain_name(dataset, name)
        pairs = [(s, t) for s in names for t in names if s != t]
        if not pairs:
            raise UserError(
                f"pairs: all: dataset {dataset.name!r} has {len(names)} domain(s) "
                f"({', '.join(names) or 'none'}), so there is no pair; add a domain or list pairs "
                "such as 'digits->digits+rotate:3'"
            )
        return pairs
    for name in dataset.domains():
        if any(name in text for text in suite.pairs):
            _check_domain_name(dataset, name)
    return [canonical_pair(text, dataset) for text in suite.pairs]


def _check_domain_name(dataset, name: str) -> None:
    """A domain named like a domain spec (``amazon+invert``) would be read as another domain, shifted."""
    if "+" in name:
        base = name.split("+")[0]
        raise UserError(
            f"dataset {dataset.name!r}: domain {name!r} has '+' in its name, which pairs use for "
            f"shifts ({name!r} reads as domain {base!r} shifted); rename it without '+'"
        )
    for mark in ("->", ","):
        if mark in name:
            raise UserError(
                f"dataset {dataset.name!r}: domain {name!r} has {mark!r} in its name, which separates "
                f"pairs; rename it without {mark!r}"
            )


def canonical_pair(text: str, dataset) -> tuple[str, str]:
    """``'A->W'`` -> ``('amazon', 'webcam')``: aliases resolved, shifts kept as written."""
    from tlbench.data.domains import DomainSpec

    src, tgt = parse_pair(text)
    specs = []
    for d in (src, tgt):
        spec = DomainSpec.parse(d)
        specs.append(str(type(spec)(dataset.resolve(spec.base), spec.shifts)))
    if specs[0] == specs[1]:
        raise UserError(f"pair {text!r}: source and target are the same domain ({specs[0]})")
    return specs[0], specs[1]
