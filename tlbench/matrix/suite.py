"""Suites: the YAML file that names a matrix, validated in full before any work starts.

A suite is data, never code: it is read with ``yaml.safe_load`` and plugins are chosen by their
registered names only. Every problem is a one-line :class:`UserError` naming the file, the key
path and, for names, the closest valid ones.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from tlbench.data.budgets import Budget
from tlbench.errors import UserError
from tlbench.matrix.suite_yaml import read_yaml

#: seeds seed torch, NumPy and Python generators: 64 bits is what all of them take
MAX_SEED = 2**63 - 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """YAML's true/false are booleans: never let them count as the number 1 or 0."""
        field = cls.model_fields.get(info.field_name or "")
        if isinstance(value, bool) and field is not None and _numeric(field.annotation):
            raise ValueError("expected a number, not a boolean")
        return value


def _numeric(annotation: Any) -> bool:
    """Whether a field holds a number (int or float, optionally None), not a flag."""
    args = getattr(annotation, "__args__", None) or (annotation,)
    return any(a in (int, float) for a in args) and bool not in args


class Recipe(_Strict):
    """How every cell trains. Defaults follow the standard Office-31 domain-adaptation protocol."""

    steps: int = Field(1000, ge=1, description="optimizer steps per cell")
    batch_size: int = Field(32, ge=1, description="images per step from each domain (source, and target when used)")
    lr: float = Field(
        0.01, gt=0, le=10, description="learning rate of the head; the backbone gets backbone_lr_scale times it"
    )
    backbone_lr_scale: float = Field(
        0.1,
        ge=0,
        description="the backbone's learning rate as a fraction of lr (1.0 for a network trained from scratch)",
    )
    optimizer: Literal["sgd", "adamw"] = Field("sgd", description="sgd (with momentum) or adamw")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    nesterov: bool = Field(True, description="Nesterov momentum (SGD)")
    weight_decay: float = Field(1e-3, ge=0, description="L2 weight decay of every group (a group may set its own)")
    lr_gamma: float = Field(10.0, ge=0, description="lr * (1 + lr_gamma * p) ** -lr_decay, p = fraction of training")
    lr_decay: float = Field(0.75, ge=0, description="exponent of the learning-rate decay (see lr_gamma)")
    bottleneck_dim: int = Field(256, ge=0, description="units of each bottleneck layer; 0 for no bottleneck")
    bottleneck_layers: int = Field(
        1,
        ge=1,
        le=8,
        description="Linear-norm-ReLU layers of the bottleneck (Ganin et "
        "al.'s MNIST label predictor: 2 of 100 units, no norm)",
    )
    bottleneck_norm: Literal["batch", "none"] = Field(
        "batch",
        description="batch: BatchNorm after each bottleneck Linear (TLlib's ImageClassifier); none: "
        "Linear-ReLU only (Ganin et al.'s label predictor: its statistics are not the source batches')",
    )
    image_size: int = Field(224, ge=8, le=1024, description="training and test crop size")
    resize_size: int | None = Field(None, ge=8, le=2048, description="stored image size; default image_size*256/224")
    crop_scale: tuple[float, float] = Field(
        (0.08, 1.0), description="area range (low, high) of the random resized crop, as fractions of the stored image"
    )
    train_crop: Literal["random_resized", "none"] = Field(
        "random_resized",
        description="random_resized: torchvision's RandomResizedCrop (crop_scale); none: the "
        "test view, no crop (the digit papers' protocol: resize only)",
    )
    hflip: bool = Field(True, description="random horizontal flips of training views")
    source_sampling: Literal["shuffle", "class_balanced"] = Field(
        "shuffle",
        description="shuffle: epochs over the labelled source; class_balanced: each draw picks every "
        "class with equal chance (inverse-frequency weights), for a class-imbalanced source",
    )
    source_holdout: float = Field(0.1, ge=0, lt=1, description="fraction of the source held out for source accuracy")
    eval_batch_size: int = Field(256, ge=1, description="images per forward pass when evaluating")
    timing_warmup_steps: int = Field(5, ge=0, description="steps excluded from the throughput measurement")
    log_every: int = Field(50, ge=1, description="steps between host syncs (loss check, progress)")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto: bf16 autocast on a GPU, fp32 on the CPU"
    )
    channels_last: Literal["auto", "on", "off"] = Field(
        "auto", description="channels-last memory format (auto and on: used; off: not)"
    )
    compile: bool = Field(False, description="torch.compile the backbone")
    deterministic: bool = Field(True, description="deterministic algorithms on the CPU (same seed, same numbers)")
    feature_cache: bool = Field(
        True, description="serve a frozen backbone's features from a cache instead of recomputing them each step"
    )
    eval_points: int = Field(
        1,
        ge=1,
        le=100,
        description="checkpoints evaluated for validators, evenly spaced, "
        "the last step included (1: the last only); see docs/selection.md",
    )
    eval_points_images: int = Field(
        1000,
        ge=0,
        description="target images the checkpoint evaluations read: a "
        "fixed random subset of this many (drawn from a constant seed, never from labels, "
        "the same at every checkpoint); 0: every image. The main table always reads every "
        "target image",
    )
    input_mean: Literal["backbone", "domains"] = Field(
        "backbone",
        description="the mean subtracted from every input: backbone: its provider's constants; "
        "domains: the mean pixel (per channel) of the cell's source training images and unlabelled target "
        "images, a label-free statistic (the usual implementation of Ganin et al.'s MNIST->MNIST-M "
        "experiment); the scale stays the backbone's std",
    )

    @field_validator("channels_last", mode="before")
    @classmethod
    def _on_off(cls, v: Any) -> Any:
        # YAML 1.1 reads an unquoted on/off as true/false: take them as the words the user wrote
        return {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v

    @model_validator(mode="after")
    def _sizes(self) -> Recipe:
        if self.resize_size is not None and self.resize_size < self.image_size:
            raise ValueError(f"resize_size ({self.resize_size}) must be at least image_size ({self.image_size})")
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError("crop_scale must be (low, high) with 0 < low <= high <= 1")
        return self

    @property
    def stored_size(self) -> int:
        return self.resize_size or int(round(self.image_size * 256 / 224))

    def cell_config(self) -> dict[str, Any]:
        """The recipe as it enters every cell (and its id): keys added after a release enter only
        when they differ from their default, so the cells of existing suites keep their ids."""
        recipe = self.model_dump(mode="json")
        for key, default in RECIPE_KEYS_ADDED_LATER.items():
            if recipe.get(key) == default:
                del recipe[key]
        recipe["resize_size"] = self.stored_size
        return recipe


#: recipe keys added after cells were first recorded, with their defaults (see Recipe.cell_config)
RECIPE_KEYS_ADDED_LATER: dict[str, Any] = {
    "train_crop": "random_resized",
    "eval_points": 1,
    "eval_points_images": 1000,
    "input_mean": "backbone",
    "bottleneck_layers": 1,
    "bottleneck_norm": "batch",
}

#: recipe keys whose value is a sequence: a sweep of one is a list of lists (tlbench.matrix.sweep)
RECIPE_SEQUENCE_KEYS = frozenset(
    k for k, f in Recipe.model_fields.items() if getattr(f.annotation, "__origin__", None) in (tuple, list)
)


def recipe_keys_markdown() -> str:
    """The table of every recipe key (type, default, meaning) that docs/recipe.md shows, from the model."""
    import json
    import typing

    def kind(annotation: Any) -> str:
        args = typing.get_args(annotation)
        if typing.get_origin(annotation) is Literal:
            return " / ".join(map(str, args))
        if typing.get_origin(annotation) is tuple:
            return "[" + ", ".join(kind(a) for a in args) + "]"
        if args:  # a union: int | None
            return " or ".join("null" if a is type(None) else kind(a) for a in args)
        return getattr(annotation, "__name__", str(annotation))

    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key, field in Recipe.model_fields.items():
        default = json.dumps(list(field.default) if isinstance(field.default, tuple) else field.default)
        rows.append(f"| `{key}` | {kind(field.annotation)} | `{default}` | {field.description or ''} |")
    return "\n".join(rows) + "\n"


class BackboneEntry(_Strict):
    name: str
    weights: str = Field("auto", description="auto | random | a weight source name | a path to a weights file")
    pairs: list[str] | None = Field(
        None,
        description="the suite's pairs this backbone runs (default: all); "
        "e.g. each digit pair on the network its paper used",
    )
    label: str | None = Field(
        None,
        description="row name in leaderboards (default: name); backbones that share "
        "a label and run different pairs form one row",
    )
    recipe: dict[str, Any] = Field(
        default_factory=dict,
        description="recipe keys this backbone's cells set "
        "otherwise than the suite's recipe (e.g. the input normalisation its paper used)",
    )


class StrategyEntry(_Strict):
    name: str
    params: dict[str, Any] = Field(default_factory=dict)
    label: str | None = Field(None, description="row name when one strategy appears twice with other params")


class Reference(_Strict):
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


class LauncherEntry(_Strict):
    name: str = "local"
    options: dict[str, Any] = Field(default_factory=dict)


class TrackerEntry(_Strict):
    name: str
    options: dict[str, Any] = Field(default_factory=dict)


#: the protocols a suite may name, in words (the leaderboard's header says them)
PROTOCOLS: dict[str, str] = {
    "uda": "unsupervised domain adaptation: labelled source images and unlabelled target images, accuracy on "
    "all target images",
    "finetune": "fine-tuning on a labelled task: the pretrained backbone is the source; a label budget of the "
    "task's training split trains, the held-back training images are unlabelled, accuracy on the "
    "task's test split",
}


class Suite(_Strict):
    name: str = Field(
        pattern=r"^[A-Za-z0-9_.\-]+$", description="one plain path segment: the default output folder is results/<name>"
    )
    description: str = ""
    dataset: str
    dataset_options: dict[str, Any] = Field(default_factory=dict)
    data_root: str | None = None
    shift_seed: int = 0
    protocol: Literal["uda", "finetune"] = Field(
        "uda",
        description="uda: domain pairs (pairs:); finetune: labelled tasks (tasks:) under label budgets (budgets:)",
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
    recipe: Recipe = Field(default_factory=Recipe)
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
        from tlbench.matrix.sweep import split_sweep

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
        return self

    def recipe_points(self, backbone: BackboneEntry | None = None) -> list[tuple[dict[str, Any], Recipe]]:
        """Every recipe of the suite's sweep with the values that make it (``[({}, recipe)]`` without one),
        with ``backbone``'s own recipe keys (``backbones[].recipe``) over the suite's."""
        from tlbench.matrix.sweep import sweep_points

        unknown = sorted(set(self.recipe_sweep) - set(Recipe.model_fields))
        if unknown:
            raise ValueError(f"recipe: unknown key(s) {', '.join(unknown)}; valid: {', '.join(Recipe.model_fields)}")
        overrides = dict(backbone.recipe) if backbone is not None else {}
        where = f"backbones.{backbone.name}.recipe" if overrides else "recipe"
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

    @field_validator("seeds", "backbones", "strategies")
    @classmethod
    def _unique(cls, v: list) -> list:
        # a strategy's row is its label; backbones may share a label (one row over different pairs)
        keys = [
            (None if isinstance(x, BackboneEntry) else getattr(x, "label", None)) or getattr(x, "name", x) for x in v
        ]
        dupes = sorted({str(k) for k in keys if keys.count(k) > 1})
        if dupes:
            raise ValueError(f"listed twice: {', '.join(dupes)}")
        return v

    @field_validator("pairs", "tasks")
    @classmethod
    def _pairs(cls, v: Any, info: ValidationInfo) -> Any:
        if isinstance(v, list) and not v:
            raise ValueError(f"at least one {info.field_name[:-1]} is needed, or 'all'")
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
        """Each protocol names its own matrix axis: pairs for uda, tasks and budgets for finetune."""
        if self.protocol == "uda":
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


def _as_list(v: Any) -> Any:
    if isinstance(v, str):
        return [s.strip() for s in v.split(",") if s.strip()]
    return v


def apply_override(data: dict[str, Any], assignment: str, *, origin: str = "--set") -> None:
    """Apply ``key.path=value`` (value parsed as YAML) to the raw suite mapping."""
    if "=" not in assignment:
        raise UserError(f"{origin} {assignment!r}: expected key.path=value, e.g. recipe.steps=200")
    key, _, raw = assignment.partition("=")
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise UserError(f"{origin} {assignment!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    node = data
    for p in parts[:-1]:
        nxt = node.get(p)
        if nxt is None:
            nxt = node[p] = {}
        if not isinstance(nxt, dict):
            raise UserError(f"{origin} {assignment!r}: {p!r} is not a mapping")
        node = nxt
    node[parts[-1]] = value


def validate(data: dict[str, Any], *, origin: str, overrides: Sequence[str] = ()) -> Suite:
    """The suite model, or a one-line error naming the first problem's key path.

    The error is blamed on the ``--set`` assignment that wrote the offending key, if one did,
    and on ``origin`` (the suite file) otherwise.
    """
    try:
        return Suite.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        origin = _blame(err["loc"], overrides) or origin
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            model = _model_at(err["loc"][:-1])
            valid = ", ".join(model.model_fields) if model else ""
            msg = f"unknown key{'; valid keys here: ' + valid if valid else ''}"
        elif err["type"] == "missing":
            msg = "required key is missing"
        elif "input" in err and not isinstance(err["input"], (dict, list)):
            msg = f"{msg} (got {err['input']!r})"
        more = f" (and {exc.error_count() - 1} more problem(s))" if exc.error_count() > 1 else ""
        if err["type"] == "suite_key":  # a whole-suite rule: the message names its key itself
            raise UserError(f"{origin}: {msg}{more}") from None
        raise UserError(f"{origin}: {loc}: {msg}{more}") from None


def _blame(loc: tuple, overrides: Sequence[str]) -> str | None:
    """``--set KEY=VALUE`` for the last assignment whose key path and ``loc`` overlap, else None."""
    where = [str(p) for p in loc]
    for assignment in reversed(overrides):
        parts = [p for p in assignment.partition("=")[0].strip().split(".") if p]
        n = min(len(parts), len(where))
        if n and parts[:n] == where[:n]:
            return f"--set {assignment}"
    return None


def _model_at(loc: tuple) -> type[BaseModel] | None:
    model: type[BaseModel] | None = Suite
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        ann = field.annotation
        args = getattr(ann, "__args__", ()) or (ann,)
        model = next((a for a in args if isinstance(a, type) and issubclass(a, BaseModel)), None)
    return model


def load_suite(
    path: Path,
    *,
    overrides: list[str] = (),
    backbones: list[str] | None = None,
    strategies: list[str] | None = None,
    pairs: list[str] | None = None,
    seeds: list[int] | None = None,
    data_root: str | None = None,
    tasks: list[str] | None = None,
) -> Suite:
    """Read, narrow and validate a suite. Command-line narrowing never edits the file."""
    data = read_yaml(path)
    data = copy.deepcopy(data)
    for assignment in overrides:
        apply_override(data, assignment)
    suite = validate(data, origin=str(path), overrides=overrides)
    for flag, key, value in (("--pairs", "pairs", pairs), ("--tasks", "tasks", tasks), ("--seeds", "seeds", seeds)):
        if value is not None:  # narrowing is checked like the file: the flag is blamed
            validate({**data, key: value}, origin=f"{flag} {','.join(map(str, value))}")
    if backbones:
        known = {b.name: b for b in suite.backbones}
        suite.backbones = [known.get(n) or BackboneEntry(name=n) for n in backbones]
    if strategies:
        known = {(s.label or s.name): s for s in suite.strategies}
        suite.strategies = [known.get(n) or StrategyEntry(name=n) for n in strategies]
    if pairs is not None:
        suite.pairs = pairs
    if tasks is not None:
        suite.tasks = tasks
    if seeds is not None:
        suite.seeds = seeds
    if data_root:
        suite.data_root = data_root
    elif suite.data_root is None and os.environ.get("TLBENCH_DATA_ROOT"):
        suite.data_root = os.environ["TLBENCH_DATA_ROOT"]
    elif suite.data_root is not None and not Path(suite.data_root).is_absolute():
        suite.data_root = str((Path(path).resolve().parent / suite.data_root).resolve())
    return suite
