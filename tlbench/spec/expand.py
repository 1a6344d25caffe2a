"""Expanding a suite into cells: backbones × strategies (× their sweeps) × pairs × budgets × seeds,
plus the kd teachers they depend on, with every domain name resolved to its canonical form."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, cast

from tlbench.data.domains import DomainSpec, parse_pair
from tlbench.errors import UserError
from tlbench.spec.cell import Cell
from tlbench.spec.recipe import Recipe
from tlbench.spec.suite import BackboneEntry, Suite
from tlbench.spec.sweep import SweepPoint, param_points, strategy_points

#: a (source, target) pair of canonical domain specs; under finetune, (task, task)
Pair = tuple[str, str]


def backbone_pairs(suite: Suite, dataset: Any, pairs: list[Pair]) -> dict[int, list[Pair]]:
    """The pairs each backbone entry of the suite runs (by its position in ``backbones``): those of
    the run's ``pairs`` that its own ``pairs`` names (each checked to be a pair of the dataset), or
    all of them. A run narrowed with ``--pairs`` simply leaves an entry out of the pairs it does not
    run. Entries of one network never share a pair (told apart once the names are canonical)."""
    out: dict[int, list[Pair]] = {}
    taken: dict[tuple[str, Pair], int] = {}
    for i, b in enumerate(suite.backbones):
        if b.pairs is None:
            out[i] = list(pairs)
            continue
        own = {canonical_pair(text, dataset) for text in b.pairs}
        for pair in own:
            if taken.setdefault((b.name, pair), i) != i:
                raise UserError(f"{suite.name}: backbones: {b.name} runs {pair[0]}->{pair[1]} in two of its entries")
        out[i] = [p for p in pairs if p in own]
    return out


#: protocols whose cells adapt a trained source model (their teacher cell, a uda cell) without source data
SOURCE_MODEL_PROTOCOLS = ("source_free", "test_time")


def expand_cells(
    suite: Suite, registry: Any, domains: list[Pair], pairs_of: dict[int, list[Pair]] | None = None
) -> list[Cell]:
    """The matrix backbones × strategies × pairs × seeds, plus the teacher cells it depends on.

    ``domains`` are the suite's pairs with domain names already resolved; ``pairs_of`` narrows
    them per backbone (:func:`backbone_pairs`). Teachers come first in the returned list; a
    teacher that is also a cell of the matrix appears once.
    """

    recipes = suite.recipe_points()
    cells: dict[str, Cell] = {}
    ordered: list[Cell] = []

    def add(cell: Cell) -> Cell:
        if cell.id not in cells:
            cells[cell.id] = cell
            ordered.append(cell)
        elif cell.sweep and not cells[cell.id].sweep:  # a teacher that is also a point of a sweep
            ordered[ordered.index(cells[cell.id])] = cells[cell.id] = cell
        return cells[cell.id]

    protocol = suite.protocol
    budgets = suite.budgets if protocol == "finetune" else [""]

    def protocol_fields(cell_protocol: str) -> dict[str, Any]:
        if cell_protocol == "finetune":
            return {"protocol": cell_protocol, "score_on": suite.score_on}
        return {"protocol": cell_protocol} if cell_protocol in SOURCE_MODEL_PROTOCOLS else {}

    def make(
        backbone: BackboneEntry,
        strategy_name: str,
        label: str,
        raw_params: dict[str, Any],
        src: str,
        tgt: str,
        seed: int,
        teacher: Cell | None = None,
        recipe: Recipe = recipes[0][1],
        sweep: SweepPoint | None = None,
        budget: str = "",
        cell_protocol: str = protocol,
    ) -> Cell:
        cls = registry.get("strategy", strategy_name)
        check_protocol(cls, cell_protocol, registry, f"{suite.name}: strategies.{label}")
        if cell_protocol in SOURCE_MODEL_PROTOCOLS and not getattr(cls, "needs_teacher", False):
            raise UserError(
                f"{suite.name}: strategies.{label}: strategy {cls.name!r} declares protocol {cell_protocol} but no "
                "source model to adapt (Strategy.needs_teacher); such a method starts from its teacher cell"
            )
        check_trainable(cls, recipe, registry, f"{suite.name}: strategies.{label}")
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
            label=tier_label(label, recipe),
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
            **protocol_fields(cell_protocol),
        )

    students: list[Cell] = []
    for index, backbone in enumerate(suite.backbones):
        for entry in suite.strategies:
            cls = registry.get("strategy", entry.name)
            label = entry.label or entry.name
            points = strategy_points(
                cls,
                entry.params,
                suite.recipe_points(backbone, entry),
                where=f"{suite.name}: strategies.{label}.params",
            )
            for src, tgt in (pairs_of or {}).get(index, domains):
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


def _teacher_cell(suite: Suite, registry: Any, backbone: BackboneEntry, student: Cell, make: Any) -> Cell:
    p = student.params
    t_backbone = p.get("teacher_backbone") or backbone.name
    t_strategy = p.get("teacher_strategy")
    if not t_strategy:
        raise UserError(f"{suite.name}: strategy {student.label!r} needs params.teacher_strategy")
    t_cls = registry.get("strategy", t_strategy)
    # a source-free or test-time cell's teacher is its source model: trained on the labelled source, as under uda
    t_protocol = "uda" if suite.protocol in SOURCE_MODEL_PROTOCOLS else suite.protocol
    check_protocol(
        t_cls,
        t_protocol,
        registry,
        f"{suite.name}: strategies.{student.label}.params.teacher_strategy",
    )
    if getattr(t_cls, "needs_teacher", False):
        raise UserError(f"{suite.name}: the teacher of {student.label!r} cannot itself need a teacher ({t_strategy!r})")
    entry = next((b for b in suite.backbones if b.name == t_backbone), None)
    weights = entry.weights if entry else (backbone.weights if t_backbone == backbone.name else "auto")
    label = entry.label if entry else None
    # A teacher named like a matrix row (same backbone, strategy and params) is that row's cell.
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
        cell_protocol=t_protocol,
    )


def check_protocol(cls: Any, protocol: str, registry: Any, where: str) -> None:
    """A strategy paired with a protocol it does not declare (``Strategy.protocols``) is one line
    naming both, the protocols it supports and the strategies that support this one."""
    supported = tuple(getattr(cls, "protocols", ("uda",)))
    if protocol in supported:
        return
    others = sorted(
        {e.name for e in registry.registrations("strategy") if protocol in getattr(e.obj, "protocols", ("uda",))}
    )
    raise UserError(
        f"{where}: strategy {cls.name!r} does not support protocol {protocol!r} (it supports "
        f"{', '.join(supported) or 'none'}); strategies that support {protocol}: "
        f"{', '.join(others) or 'none installed'}"
    )


def check_trainable(cls: Any, recipe: Recipe, registry: Any, where: str) -> None:
    """``recipe.trainable`` other than ``all`` needs a strategy that reaches the backbone only through
    the model (``accepts_features``), so that freezing the backbone, or all but its top stages, is all
    it takes; a strategy that trains no backbone (``freeze``) has no top stages to train."""
    if recipe.trainable == "all":
        return
    problem = None
    if not getattr(cls, "accepts_features", False):
        problem = "it reaches the backbone other than through the model (it does not declare accepts_features)"
    elif recipe.top_stages and not getattr(cls, "trains_backbone", True):
        problem = "it trains no backbone stage"
    if problem is None:
        return
    able = sorted(
        e.name
        for e in registry.registrations("strategy")
        if getattr(e.obj, "accepts_features", False) and getattr(e.obj, "trains_backbone", True)
    )
    raise UserError(
        f"{where}: strategy {cls.name!r} cannot honour recipe.trainable: {recipe.trainable} ({problem}); "
        f"leave trainable at all for it; strategies that can: {', '.join(able) or 'none installed'}"
    )


def tier_label(label: str, recipe: Recipe) -> str:
    """The leaderboard row of a strategy trained on part of the backbone: ``dann (head)``, ``dann (top2)``."""
    return label if recipe.trainable == "all" else f"{label} ({recipe.trainable})"


def resolve_tasks(suite: Suite, dataset: Any) -> list[Pair]:
    """A finetune suite's tasks as (task, task) "pairs" with canonical names: each task is its own
    source (the labelled training split) and target (its test split)."""
    # a finetune suite always names its tasks (Suite's validation)
    names = dataset.domains() if suite.tasks == "all" else list(cast("list[str]", suite.tasks))
    out: list[Pair] = []
    for text in names:
        spec = DomainSpec.parse(text)
        task = str(type(spec)(dataset.resolve(spec.base), spec.shifts))
        if (task, task) in out:
            raise UserError(f"tasks: {text!r} names task {task!r} twice")
        out.append((task, task))
    return out


def resolve_pairs(suite: Suite, dataset: Any) -> list[Pair]:
    """The suite's pairs as (source, target) domain specs with canonical base names (a finetune
    suite's tasks, each as its own pair: :func:`resolve_tasks`)."""
    if suite.protocol == "finetune":
        return resolve_tasks(suite, dataset)
    assert suite.pairs is not None  # protocol uda requires pairs (Suite validation)
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


def _check_domain_name(dataset: Any, name: str) -> None:
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


def canonical_pair(text: str, dataset: Any) -> Pair:
    """``'A->W'`` -> ``('amazon', 'webcam')``: aliases resolved, shifts kept as written."""
    src, tgt = parse_pair(text)
    specs = []
    for d in (src, tgt):
        spec = DomainSpec.parse(d)
        specs.append(str(type(spec)(dataset.resolve(spec.base), spec.shifts)))
    if specs[0] == specs[1]:
        raise UserError(f"pair {text!r}: source and target are the same domain ({specs[0]})")
    return specs[0], specs[1]
