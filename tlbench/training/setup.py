"""A cell's setup, the engine's first phase: seeds, data, model, strategy, precision, teacher, optimizer.

Everything here runs once, before the first step, in a fixed order: the global random stream is
consumed by data splits, model and strategy initialisation in exactly this sequence, so a cell's
numbers depend on its configuration alone.
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch
import torch.utils.deterministic as torch_determinism

from tlbench.data.budgets import Budget
from tlbench.data.domains import Domain
from tlbench.data.files import load_checked
from tlbench.data.splits import stratified_split
from tlbench.data.tasks import TaskSplit, split_task
from tlbench.errors import UserError
from tlbench.models.backbones import Backbone
from tlbench.models.transfer import TransferModel
from tlbench.models.weights import load_backbone
from tlbench.spec.cell import Cell, CellTask
from tlbench.spec.recipe import Recipe
from tlbench.training.augment import Augmenter, Normalizer
from tlbench.training.schedule import ParamSchedule
from tlbench.training.strategy import SetupContext, Strategy
from tlbench.training.stream import stream_steps


@dataclass
class CellData:
    """The decoded domains of a cell, split the way the protocol says.

    ``target`` is what the cell is scored on; ``unlabelled`` what its strategy's target views are
    drawn from, without labels: None under uda (the target itself), the held-back training images
    under finetune. ``task_split`` keeps a finetune cell's positions in its task (for records and
    the tests that hold the split to its promises).
    """

    source_train: Domain | None  # None in a source-free cell: the source is never loaded
    source_holdout: Domain | None
    target: Domain
    num_classes: int
    unlabelled: Domain | None = None
    task_split: TaskSplit | None = None

    @property
    def source_images(self) -> torch.Tensor:
        """The labelled source's uint8 images; none (0 rows, shaped like the target's) in a source-free cell."""
        return self.target.images[:0] if self.source_train is None else self.source_train.images

    @property
    def source_labels(self) -> torch.Tensor:
        return self.target.labels[:0] if self.source_train is None else self.source_train.labels

    @property
    def served_target(self) -> Domain:
        """The images served as unlabelled target views (their labels only ever reach the audit)."""
        return self.target if self.unlabelled is None else self.unlabelled


@dataclass(frozen=True)
class Precision:
    """Number format and memory layout of the cell's tensors."""

    bf16: bool
    channels_last: bool

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        """bf16 autocast when the cell runs in bf16, else nothing."""
        if self.bf16:
            return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


@dataclass
class CellSetup:
    """What the later phases share: built once by :func:`set_up_cell`."""

    cell: Cell
    recipe: Recipe
    device: torch.device
    deterministic: bool
    precision: Precision
    data: CellData
    model: TransferModel
    weights_used: str
    backbone: Backbone
    strategy: Strategy
    teacher: TransferModel | None
    augmenter: Augmenter
    schedule: ParamSchedule

    @property
    def total_steps(self) -> int:
        return int(self.recipe.steps)

    def autocast(self) -> contextlib.AbstractContextManager:
        return self.precision.autocast(self.device)


def set_up_cell(task: CellTask, registry, device: torch.device) -> CellSetup:
    """Seeds, data, model, strategy, teacher and optimizer of one cell, on ``device``, in a fixed order."""
    cell, recipe = task.cell, task.cell.recipe
    configure_device(device)
    deterministic = bool(recipe.deterministic) and device.type == "cpu"
    seed_everything(cell.seed, deterministic, device)

    data = load_cell_data(cell, task, registry)
    if cell.test_time:  # one pass over the target stream: its steps are its batches
        recipe = recipe.model_copy(update={"steps": stream_steps(len(data.target), int(recipe.batch_size))})
    model, weights_used, backbone = build_model(cell.backbone, cell.weights, data.num_classes, recipe, registry)
    strategy = build_strategy(cell, registry)
    precision = choose_precision(recipe, device)
    teacher = None
    if type(strategy).needs_teacher:
        teacher = load_teacher(task, data.num_classes, registry, device, precision.memory_format)
    strategy.setup(
        model,
        SetupContext(
            data.num_classes, model.feature_dim, model.embed_dim, int(recipe.steps), device, cell.seed, teacher
        ),
    )
    model.to(device, memory_format=precision.memory_format)  # type: ignore[call-overload]  # torch stubs lack it
    if recipe.compile:
        # Compile the backbone in place: parameter names (and so checkpoints) stay unchanged,
        # and strategies keep calling the same TransferModel methods. (The CLI points the
        # compiler's kernel cache into tlbench's cache.)
        model.backbone.compile()
    strategy.to(device)
    own_mean = input_mean(recipe, data, backbone)
    normalizer = Normalizer(
        own_mean or backbone.mean, backbone.std, device, backbone.in_chans, from_backbone=own_mean is None
    )
    augmenter = Augmenter(
        recipe.image_size,
        normalizer,
        hflip=recipe.hflip,
        scale=cast("tuple[float, float]", tuple(recipe.crop_scale)),
        random_crop=recipe.train_crop != "none",
        memory_format=precision.memory_format,
    )
    schedule = ParamSchedule(
        strategy.param_groups(model), [model, strategy], model, recipe, device, cell.strategy, cell.test_time
    )
    return CellSetup(
        cell,
        recipe,
        device,
        deterministic,
        precision,
        data,
        model,
        weights_used,
        backbone,
        strategy,
        teacher,
        augmenter,
        schedule,
    )


def input_mean(recipe: Recipe, data: CellData, backbone: Backbone) -> tuple[float, ...] | None:
    """The mean subtracted from the inputs, one value per input channel of the network, in [0, 1];
    None for the backbone's own constants (the default).

    ``recipe.input_mean: domains`` takes the mean pixel of the source's training images and of the
    unlabelled target images the strategy is served (no label is read), as the common
    implementation of Ganin et al.'s MNIST->MNIST-M experiment does (pumpikano/tf-dann's
    ``pixel_mean`` over both training sets).
    """
    if recipe.input_mean != "domains":
        return None
    images = [data.source_images, data.served_target.images]
    # exact, no float copy; images is never empty, so the sum is a tensor, not sum()'s start value 0
    total = cast(torch.Tensor, sum(x.sum(dim=(0, 2, 3), dtype=torch.int64) for x in images)).double()
    count = sum(x.shape[0] * x.shape[2] * x.shape[3] for x in images)
    mean = (total / count / 255.0).tolist()
    return (sum(mean) / 3,) if backbone.in_chans == 1 else tuple(mean)


def configure_device(device: torch.device) -> None:
    """cuDNN autotuning and TF32 matrix units on a GPU (no effect on the CPU)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def seed_everything(seed: int, deterministic: bool, device: torch.device) -> None:
    """Seed every stream; on the CPU, deterministic algorithms (``recipe.deterministic``).

    Deterministic mode also fills every new tensor with NaN by default (a debugging aid that makes a
    read of uninitialised memory visible; torch.utils.deterministic.fill_uninitialized_memory). No
    kernel's result depends on it, and it cost a 224 px dann step on the CPU a sixth of its throughput
    (benchmarks/RESULTS.md, "The NaN fill of deterministic mode"), so it is off: the same numbers, faster.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(deterministic, warn_only=True)
        torch_determinism.fill_uninitialized_memory = False  # type: ignore[attr-defined]  # set by torch at run time


def choose_precision(recipe: Recipe, device: torch.device) -> Precision:
    """bf16 on GPU by default (``precision: auto``); channels_last unless switched off: faster on
    GPUs (tensor cores) and, measured here, on CPUs too (2-4x for EfficientNet's depthwise
    convolutions with oneDNN)."""
    bf16 = recipe.precision == "bf16" or (recipe.precision == "auto" and device.type == "cuda")
    return Precision(bf16=bf16, channels_last=recipe.channels_last != "off")


def load_cell_data(cell: Cell, task: CellTask, registry) -> CellData:
    """Load source and target; when both derive from one base domain, give each a disjoint half of
    every class (:func:`tlbench.data.splits.stratified_split`), the same for every seed."""
    from tlbench.data.cache import load_domain

    dataset = registry.get("dataset", cell.dataset)(
        Path(task.data_root) if task.data_root else None, **cell.dataset_options
    )
    size = cell.recipe.stored_size
    cache = Path(task.cache_dir) if task.cache_dir else None
    if cell.adapts_source_model:
        tgt = load_domain(dataset, cell.target, size, cache_dir=cache, shift_seed=cell.shift_seed, registry=registry)
        return source_free_data(tgt, cell)
    src = load_domain(dataset, cell.source, size, cache_dir=cache, shift_seed=cell.shift_seed, registry=registry)
    if cell.finetune:
        return finetune_data(src, cell)
    tgt = load_domain(dataset, cell.target, size, cache_dir=cache, shift_seed=cell.shift_seed, registry=registry)
    if src.classes != tgt.classes:
        missing = sorted(set(src.classes) ^ set(tgt.classes))
        raise UserError(f"{cell.pair}: source and target classes differ ({', '.join(missing[:5])})")
    if cell.derived_pair:  # one base domain on both sides: each class split between them, fixed seed
        source_half, target_half = stratified_split(src.labels, 0.5, seed=0)
        src, tgt = src.subset(source_half), tgt.subset(target_half)
    holdout = None
    frac = cell.recipe.source_holdout
    if frac > 0:
        g = torch.Generator().manual_seed(0)
        perm = torch.randperm(len(src), generator=g)
        n_hold = int(round(frac * len(src)))
        if n_hold > 0:
            holdout = src.subset(perm[:n_hold], name=f"{src.name} (held out)")
            src = src.subset(perm[n_hold:])
    return CellData(src, holdout, tgt, len(src.classes))


def source_free_data(target: Domain, cell: Cell) -> CellData:
    """A source-free cell's data: the target alone. The source domain is never loaded; the source
    side of every batch is empty (0 images), and what the source taught arrives as the teacher's
    weights. A derived pair keeps the target's half of each class, as under uda."""
    if cell.derived_pair:
        _, target_half = stratified_split(target.labels, 0.5, seed=0)
        target = target.subset(target_half)
    return CellData(None, None, target, len(target.classes))


def finetune_data(domain: Domain, cell: Cell) -> CellData:
    """A finetune cell's task cut by :func:`tlbench.data.tasks.split_task`: the labelled budget trains,
    the held-back training images are served unlabelled (with a 100 % budget there are none, so the
    labelled images themselves are), and the test (or validation) split is scored."""
    parts = split_task(domain, Budget.parse(cell.budget), cell.seed, cell.score_on)
    labelled = domain.subset(parts.labelled, name=f"{domain.name} (labelled {cell.budget})")
    pool = parts.unlabelled if len(parts.unlabelled) else parts.labelled
    unlabelled = domain.subset(pool, name=f"{domain.name} (unlabelled)")
    scored = domain.subset(parts.scored, name=f"{domain.name} ({cell.score_on})")
    return CellData(labelled, None, scored, len(domain.classes), unlabelled=unlabelled, task_split=parts)


def build_model(
    backbone: str, weights: str, num_classes: int, recipe: Recipe, registry
) -> tuple[TransferModel, str, Backbone]:
    """The transfer model on a backbone with the named weights, the weight source used, and what
    the backbone's provider said about it (channels, normalisation, stages)."""
    made, source = load_backbone(backbone, weights, registry=registry)
    model = TransferModel(
        made.network,
        num_classes,
        bottleneck_dim=recipe.bottleneck_dim,
        bottleneck_layers=recipe.bottleneck_layers,
        bottleneck_norm=recipe.bottleneck_norm,
        backbone_lr_scale=recipe.backbone_lr_scale,
        backbone_name=backbone,
        feature_dim=made.feature_dim,
        stages=made.stages,
    )
    return model, source, made


def build_strategy(cell: Cell, registry) -> Strategy:
    """The cell's strategy with its parameters (not yet set up)."""
    strategy_cls = registry.get("strategy", cell.strategy)
    return strategy_cls(strategy_cls.parse_params(cell.params))


def load_teacher(
    task: CellTask, num_classes: int, registry, device: torch.device, memory_format: torch.memory_format
) -> TransferModel:
    """The trained teacher of a cell whose strategy ``needs_teacher`` (kd, adda): frozen, in eval
    mode, from its checked weights file."""
    teacher_cell = task.cell.teacher
    if teacher_cell is None or not task.teacher_model or not Path(task.teacher_model).is_file():
        raise RuntimeError(f"{task.cell.strategy} cell {task.cell.id}: the teacher's trained weights are missing")
    model, _, _ = build_model(teacher_cell.backbone, "random", num_classes, teacher_cell.recipe, registry)
    state = load_checked(Path(task.teacher_model))
    if not isinstance(state, dict):
        raise RuntimeError(
            f"{task.cell.strategy} cell {task.cell.id}: the teacher's weights {task.teacher_model} are damaged "
            f"(checksum mismatch); run the same command again to retrain the teacher"
        )
    model.load_state_dict(state)
    model.to(device, memory_format=memory_format).eval()  # type: ignore[call-overload]  # torch stubs lack it
    for p in model.parameters():
        p.requires_grad_(False)
    return model
