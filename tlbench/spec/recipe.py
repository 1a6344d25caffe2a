"""The training recipe: how every cell trains, one typed object from the suite to the engine.

A cell carries its :class:`Recipe` whole; only the cell id is computed from a reduced form of it
(:meth:`Recipe.id_config`), in which keys added after cells were first recorded enter only when they
differ from their default, so the cells of existing suites keep their ids.
"""

from __future__ import annotations

import json
import typing
import warnings
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from tlbench.spec.base import StrictModel


class Recipe(StrictModel):
    """How every cell trains. Defaults follow the standard Office-31 domain-adaptation protocol."""

    #: frozen: a cell's recipe never changes once planned (its id hashes it)
    model_config = ConfigDict(**{**StrictModel.model_config, "frozen": True})

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
    trainable: str = Field(
        "all",
        pattern=r"^(all|head|top[1-9][0-9]?)$",
        description="what of the backbone trains: all (the strategy's own groups), head (a frozen "
        "backbone: its features computed once and cached, the steps train the head and the strategy's "
        "modules from them) or topK (only the backbone's K output-most stages train, e.g. top2); a "
        "leaderboard row of its own ('dann (head)'), refused for a strategy that does not accept "
        "features; see docs/recipe.md",
    )
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

    def __getitem__(self, key: str) -> Any:
        """``recipe["steps"]``, as when a cell's recipe was a dict: deprecated, read ``recipe.steps``."""
        warnings.warn(
            f"cell.recipe[{key!r}] is deprecated since the recipe became a typed Recipe; read cell.recipe.{key}",
            DeprecationWarning,
            stacklevel=2,
        )
        if key not in type(self).model_fields:
            raise KeyError(key)
        return self.stored_size if key == "resize_size" else getattr(self, key)

    @property
    def top_stages(self) -> int | None:
        """K of ``trainable: topK``; 0 for ``head``; None for ``all`` (no restriction)."""
        if self.trainable == "all":
            return None
        return 0 if self.trainable == "head" else int(self.trainable[3:])

    def id_config(self) -> dict[str, Any]:
        """The recipe as it enters a cell's id: keys added after a release enter only when they differ
        from their default (so the cells of existing suites keep their ids), and the stored size resolved."""
        recipe = self.model_dump(mode="json")
        for key, default in RECIPE_KEYS_ADDED_LATER.items():
            if recipe.get(key) == default:
                del recipe[key]
        recipe["resize_size"] = self.stored_size
        return recipe


#: recipe keys added after cells were first recorded, with their defaults (see Recipe.id_config)
RECIPE_KEYS_ADDED_LATER: dict[str, Any] = {
    "train_crop": "random_resized",
    "eval_points": 1,
    "eval_points_images": 1000,
    "input_mean": "backbone",
    "bottleneck_layers": 1,
    "bottleneck_norm": "batch",
    "trainable": "all",
}

#: recipe keys whose value is a sequence: a sweep of one is a list of lists (tlbench.spec.sweep)
RECIPE_SEQUENCE_KEYS = frozenset(
    k for k, f in Recipe.model_fields.items() if getattr(f.annotation, "__origin__", None) in (tuple, list)
)


def recipe_keys_markdown() -> str:
    """The table of every recipe key (type, default, meaning) that docs/recipe.md shows, from the model."""

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
