"""Suites: the YAML file that names a matrix, validated in full before any work starts.

A suite is data, never code: it is read with ``yaml.safe_load`` and plugins are chosen by their
registered names only. Every problem is a one-line :class:`UserError` naming the file, the key
path and, for names, the closest valid ones. Reading a file, ``--set`` and command-line narrowing:
:mod:`tlbench.spec.loading`; the recipe: :mod:`tlbench.spec.recipe`.
"""

from __future__ import annotations

import unicodedata
from typing import Annotated, Any, Literal, cast

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from tlbench.data.budgets import Budget
from tlbench.errors import UserError
from tlbench.spec.base import MAX_SEED, StrictModel
from tlbench.spec.recipe import RECIPE_SEQUENCE_KEYS, Recipe
from tlbench.spec.sweep import split_sweep, sweep_points

#: the longest row label a suite may give (a label is a leaderboard row and a column of every report)
MAX_LABEL_CHARS = 200


def check_label(v: str | None) -> str | None:
    """A row label every report can show on one line: no control character (NUL, newline, tab, a line
    or paragraph separator), at most :data:`MAX_LABEL_CHARS` characters."""
    if v is None:
        return v
    bad = next((c for c in v if unicodedata.category(c) in ("Cc", "Zl", "Zp")), None)
    if bad is not None:
        raise ValueError(
            f"the label contains the control character U+{ord(bad):04X}; a label is a row of every report "
            "and must be printable text on one line"
        )
    if len(v) > MAX_LABEL_CHARS:
        raise ValueError(f"the label is {len(v)} characters long; at most {MAX_LABEL_CHARS} are allowed")
    return v


class BackboneEntry(StrictModel):
    # default= by keyword: mypy reads a positional Field default as no default
    name: str
    weights: str = Field(default="auto", description="auto | random | a weight source name | a path to a weights file")
    pairs: list[str] | None = Field(
        default=None,
        description="the suite's pairs this backbone runs (default: all); "
        "e.g. each digit pair on the network its paper used",
    )
    label: str | None = Field(
        default=None,
        description="row name in leaderboards (default: name); backbones that share "
        "a label and run different pairs form one row",
    )
    recipe: dict[str, Any] = Field(
        default_factory=dict,
        description="recipe keys this backbone's cells set "
        "otherwise than the suite's recipe (e.g. the input normalisation its paper used)",
    )

    _label = field_validator("label")(check_label)


class StrategyEntry(StrictModel):
    name: str
    params: dict[str, Any] = Field(default_factory=dict)
    label: str | None = Field(default=None, description="row name when one strategy appears twice with other params")
    recipe: dict[str, Any] = Field(
        default_factory=dict,
        description="recipe keys this strategy's cells set otherwise than the suite's recipe "
        "(e.g. the optimiser its reference implementation trains with)",
    )

    _label = field_validator("label")(check_label)


class Reference(StrictModel):
    """Published numbers, shown as separate rows, never mixed with measured ones."""

    backbone: str
    strategy: str
    source: str = Field(description="citation")
    weights: str | None = Field(
        None,
        description="the pretrained weights the published numbers assume, as timm "
        "names them (e.g. resnet50.tv_in1k: torchvision's ImageNet ResNet-50)",
    )
    acc: dict[str, float]
    avg: float | None = None


class LauncherEntry(StrictModel):
    name: str = "local"
    options: dict[str, Any] = Field(default_factory=dict)


class TrackerEntry(StrictModel):
    name: str
    options: dict[str, Any] = Field(default_factory=dict)


#: the protocols a suite may name, in words (the leaderboard's header says them)
PROTOCOLS: dict[str, str] = {
    "uda": "unsupervised domain adaptation: labelled source images and unlabelled target images, accuracy on "
    "all target images",
    "finetune": "fine-tuning on a labelled task: the pretrained backbone is the source; a label budget of the "
    "task's training split trains, the held-back training images are unlabelled, accuracy on the "
    "task's test split",
    "source_free": "source-free domain adaptation: a source model trained once on the labelled source (the "
    "source_only row), then adapted with unlabelled target images alone, accuracy on all target images",
    "test_time": "test-time adaptation: a source model trained once on the labelled source (the source_only "
    "row) meets the target as a stream of batches in a fixed order, each predicted when it arrives and "
    "then adapted on; accuracy of those online predictions over all target images",
}


class Suite(StrictModel):
    name: str = Field(
        pattern=r"^[A-Za-z0-9_.\-]+$", description="one plain path segment: the default output folder is results/<name>"
    )
    description: str = ""
    dataset: str
    dataset_options: dict[str, Any] = Field(default_factory=dict)
    data_root: str | None = None
    shift_seed: int = 0
    protocol: Literal["uda", "finetune", "source_free", "test_time"] = Field(
        "uda",
        description="uda: domain pairs (pairs:); finetune: labelled tasks (tasks:) under label budgets (budgets:); "
        "source_free: domain pairs, each adapted from a source model without the source data; "
        "test_time: domain pairs, a source model adapting on the target's stream of test batches",
    )
    pairs: list[str] | Literal["all"] | None = Field(None, description="protocol uda: SOURCE->TARGET pairs, or all")
    tasks: list[str] | Literal["all"] | None = Field(
        None, description="protocol finetune: the domains trained and tested on their own split, or all"
    )
    budgets: list[str] = Field(
        default_factory=lambda: ["100%"],
        min_length=1,
        description="protocol finetune: label budgets, a share ('10%') or per class ('5-shot')",
    )
    score_on: Literal["test", "validation"] = Field(
        "test",
        description="protocol finetune: test (the task's test split) or validation (a fixed stratified "
        "share of the training split, for choosing a recipe without test labels)",
    )
    backbones: list[BackboneEntry]
    strategies: list[StrategyEntry]
    seeds: list[Annotated[int, Field(ge=0, le=MAX_SEED)]] = Field(default_factory=lambda: [0], min_length=1)
    recipe: Recipe = Field(default_factory=Recipe)  # type: ignore[arg-type]  # mypy: positional Field defaults
    launcher: LauncherEntry = Field(default_factory=LauncherEntry)
    reports: list[str] | None = Field(None, description="report formats; default: every registered reporter")
    trackers: list[TrackerEntry] = Field(
        default_factory=list, description="experiment trackers fed with every finished cell; default none"
    )
    reference: list[Reference] = Field(default_factory=list)
    selection: str = Field(
        "last",
        description="how the main table picks a (parameters, checkpoint) per strategy, "
        "pair and seed: last (the default parameters, the last checkpoint) or a validator's "
        "name (tlbench list validators)",
    )
    recipe_sweep: dict[str, list[Any]] = Field(
        default_factory=dict,
        description="filled from lists in recipe: (recipe: {lr: [0.003, 0.01]}); write the lists there",
    )

    @model_validator(mode="before")
    @classmethod
    def _lists_in_recipe(cls, data: Any) -> Any:
        """A list in ``recipe:`` is a sweep: the recipe keeps the first value, ``recipe_sweep`` all of them."""
        if isinstance(data, dict) and isinstance(data.get("recipe"), dict):
            try:
                fixed, axes = split_sweep(data["recipe"], RECIPE_SEQUENCE_KEYS, where="recipe")
            except UserError as exc:
                raise ValueError(str(exc)) from None
            if axes:
                data = {**data, "recipe": fixed, "recipe_sweep": {**axes, **(data.get("recipe_sweep") or {})}}
        return data

    @model_validator(mode="after")
    def _every_recipe_valid(self) -> Suite:
        self.recipe_points()  # each combination of a recipe sweep is a valid recipe, found now
        for entry in self.backbones:
            if entry.recipe:
                self.recipe_points(entry)
        for strategy in self.strategies:
            if strategy.recipe:
                for entry in self.backbones:
                    self.recipe_points(entry, strategy)
        return self

    def recipe_points(
        self, backbone: BackboneEntry | None = None, strategy: StrategyEntry | None = None
    ) -> list[tuple[dict[str, Any], Recipe]]:
        """Every recipe of the suite's sweep with the values that make it (``[({}, recipe)]`` without one),
        with ``backbone``'s and ``strategy``'s own recipe keys (``backbones[].recipe``,
        ``strategies[].recipe``) over the suite's, the strategy's over the backbone's."""
        unknown = sorted(set(self.recipe_sweep) - set(Recipe.model_fields))
        if unknown:
            raise ValueError(f"recipe: unknown key(s) {', '.join(unknown)}; valid: {', '.join(Recipe.model_fields)}")
        if "trainable" in self.recipe_sweep:
            raise ValueError(
                "recipe.trainable is an axis of leaderboard rows, not a sweep (a sweep's points share one row): "
                "list the strategy once per value, e.g. strategies: [{name: dann, recipe: {trainable: head}}, dann]"
            )
        overrides, where = _entry_overrides(backbone, strategy)
        unknown = sorted(set(overrides) - set(Recipe.model_fields))
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(Recipe.model_fields)}")
        swept = sorted(set(overrides) & set(self.recipe_sweep))
        if swept:
            raise ValueError(
                f"{where}: {', '.join(swept)} is swept in the suite's recipe; sweep it there or set it here, not both"
            )
        if not self.recipe_sweep and not overrides:
            return [({}, self.recipe)]
        base = {**self.recipe.model_dump(), **overrides}
        out = []
        for values in sweep_points(self.recipe_sweep) if self.recipe_sweep else [{}]:
            try:
                out.append((values, Recipe.model_validate({**base, **values})))
            except ValidationError as exc:
                err = exc.errors()[0]
                key = ".".join(str(p) for p in err["loc"])
                point = f" in the sweep point {values}" if values else ""
                raise ValueError(f"{where}.{key}{point}: {err['msg']}") from None
        return out

    @field_validator("backbones", "trackers", mode="before")
    @classmethod
    def _named_entries(cls, v: Any) -> Any:
        """A plain string is the entry of that name (``- resnet50``, ``- tensorboard``)."""
        v = _as_list(v)
        if not isinstance(v, list):
            return v  # not a list: let validation name the key and the type expected
        return [{"name": x} if isinstance(x, str) else x for x in v]

    @field_validator("strategies", mode="before")
    @classmethod
    def _strategies(cls, v: Any) -> Any:
        v = _as_list(v)
        if not isinstance(v, list):
            return v  # not a list: let validation name the key and the type expected
        out = []
        for x in v:
            if isinstance(x, str):
                x = {"name": x}
            elif isinstance(x, dict) and len(x) == 1 and "name" not in x:
                ((name, params),) = x.items()  # the short form  - dann: {trade_off: 1.0}
                x = {"name": name, "params": params or {}}
            out.append(x)
        return out

    @field_validator("name")
    @classmethod
    def _one_segment(cls, v: str) -> str:
        if v in (".", ".."):
            raise ValueError(
                f"{v!r} is not a name: the output folder is results/<name>, so a name must be "
                "one plain path segment such as office31"
            )
        return v

    @field_validator("launcher", mode="before")
    @classmethod
    def _launcher(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v

    @field_validator("seeds", "strategies")
    @classmethod
    def _unique(cls, v: list) -> list:
        # a strategy's row is its label, and the part of the backbone it trains (dann, dann (head))
        keys = [_row_key(x) for x in v]
        dupes = sorted({str(k) for k in keys if keys.count(k) > 1})
        if dupes:
            raise ValueError(f"listed twice: {', '.join(dupes)}")
        return v

    @field_validator("backbones")
    @classmethod
    def _backbones_once_a_pair(cls, v: list[BackboneEntry]) -> list[BackboneEntry]:
        """A network may be listed more than once only with other pairs each time (its recipe for one
        pair, e.g. TLlib's learning rate for USPS->MNIST, may differ from the other's); backbones may
        share a label too: one row over different pairs."""
        names = [b.name for b in v]
        for name in sorted({n for n in names if names.count(n) > 1}):
            entries = [b for b in v if b.name == name]
            if any(b.pairs is None for b in entries):
                raise ValueError(
                    f"listed twice: {name} (list a network more than once only with its own pairs in each entry)"
                )
            written = [p for b in entries for p in b.pairs or []]
            both = sorted({p for p in written if written.count(p) > 1})
            if both:
                raise ValueError(f"{name}: pair(s) {', '.join(both)} in two of its entries; give each pair to one")
        return v

    @field_validator("pairs", "tasks")
    @classmethod
    def _pairs(cls, v: Any, info: ValidationInfo) -> Any:
        if isinstance(v, list) and not v:
            # a field validator's info always names its field ("pairs" or "tasks")
            raise ValueError(f"at least one {cast(str, info.field_name)[:-1]} is needed, or 'all'")
        return v

    @field_validator("budgets", mode="before")
    @classmethod
    def _budgets(cls, v: Any) -> Any:
        """Budgets in their canonical text (``10%``, ``5-shot``), each once."""
        v = _as_list(v)
        if not isinstance(v, list):
            return v
        try:
            out = [str(Budget.parse(str(b))) for b in v]
        except UserError as exc:
            raise ValueError(str(exc)) from None
        dupes = sorted({b for b in out if out.count(b) > 1})
        if dupes:
            raise ValueError(f"listed twice: {', '.join(dupes)}")
        return out

    @model_validator(mode="after")
    def _protocol_keys(self) -> Suite:
        """Each protocol names its own matrix axis: tasks and budgets for finetune, pairs for the others."""
        if self.protocol != "finetune":
            given = [k for k in ("tasks", "budgets", "score_on") if k in self.model_fields_set]
            if given:
                raise _suite_error(
                    f"{given[0]}: applies to protocol finetune only; set protocol: finetune, or "
                    "remove it and name pairs"
                )
            if self.pairs is None:
                raise _suite_error(
                    "pairs: required key is missing (protocol uda trains on pairs such as A->W; "
                    "for a labelled task set protocol: finetune and name tasks)"
                )
        else:
            if self.tasks is None:
                raise _suite_error(
                    "tasks: required key is missing (protocol finetune trains on labelled tasks "
                    "such as [amazon, webcam], or all)"
                )
            if self.pairs is not None:
                raise _suite_error(
                    "pairs: protocol finetune names tasks, not pairs; move the domains to tasks (or set protocol: uda)"
                )
            with_pairs = next((b.name for b in self.backbones if b.pairs is not None), None)
            if with_pairs:
                raise _suite_error(
                    f"backbones.{with_pairs}.pairs: protocol finetune runs every backbone on every "
                    "task; remove pairs (narrow the run with --tasks)"
                )
        return self


def _suite_error(message: str) -> PydanticCustomError:
    """A suite-level error that names its own key (validation shows it without a location prefix)."""
    return PydanticCustomError("suite_key", message)


def _row_key(entry: Any) -> Any:
    """The leaderboard row a strategy entry (or a seed, itself) makes, for the listed-twice check."""
    if not isinstance(entry, StrategyEntry):
        return entry
    name = entry.label or entry.name
    tier = dict(entry.recipe).get("trainable", "all")
    return name if tier == "all" else f"{name} ({tier})"


def _as_list(v: Any) -> Any:
    if isinstance(v, str):
        return [s.strip() for s in v.split(",") if s.strip()]
    return v


def _entry_overrides(backbone: BackboneEntry | None, strategy: StrategyEntry | None) -> tuple[dict[str, Any], str]:
    """The recipe keys a backbone entry and a strategy entry set, the strategy's over the backbone's
    (a method's reference recipe, e.g. MDD's learning rate, holds on every network it runs), and
    where to point an error."""
    own_b = dict(backbone.recipe) if backbone is not None else {}
    own_s = dict(strategy.recipe) if strategy is not None else {}
    where = (
        f"strategies.{strategy.label or strategy.name}.recipe"
        if strategy is not None and own_s
        else (f"backbones.{backbone.name}.recipe" if backbone is not None and own_b else "recipe")
    )
    return {**own_b, **own_s}, where
