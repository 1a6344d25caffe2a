"""The engine: trains and evaluates one cell. The one place that owns the training loop.

Device, precision (bf16 autocast on GPU), memory format (channels_last on GPU), optimizer and
schedule built from the strategy's parameter groups, seeding, timing (warm-up excluded, device
synchronised), peak memory and evaluation all live here, so there is one place to make fast.
Inside the step loop nothing waits on the device except at logging points.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

import tlbench
from tlbench.augment import Augmenter, FixedViews, Normalizer
from tlbench.cells import Cell, CellTask
from tlbench.checked import checked_digest, load_checked, save_checked
from tlbench.data import Domain, DomainSpec
from tlbench.errors import DivergedError
from tlbench.features import FeatureBank, TeacherViewBank, domain_key
from tlbench.measure import PeakMemory, Stopwatch, device_name, select_device
from tlbench.model import TransferModel, count_parameters, set_batchnorm_eval_where_frozen
from tlbench.results import CellRecord
from tlbench.strategy import Batch, ParamGroup, SetupContext, StepContext, Strategy
from tlbench.weights import create_backbone, model_data_config


@dataclass
class CellData:
    """The decoded domains of a cell, split the way the protocol says."""

    source_train: Domain
    source_holdout: Domain | None
    target: Domain
    num_classes: int


def seed_everything(seed: int, deterministic: bool, device: torch.device) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(deterministic, warn_only=True)


def load_cell_data(cell: Cell, task: CellTask, registry) -> CellData:
    """Load source and target; when both derive from one base domain, give each a disjoint half."""
    from tlbench.cache import load_domain

    dataset = registry.get("dataset", cell.dataset)(Path(task.data_root) if task.data_root else None,
                                                     **cell.dataset_options)
    size = cell.recipe["resize_size"]
    cache = Path(task.cache_dir) if task.cache_dir else None
    src = load_domain(dataset, cell.source, size, cache_dir=cache, shift_seed=cell.shift_seed, registry=registry)
    tgt = load_domain(dataset, cell.target, size, cache_dir=cache, shift_seed=cell.shift_seed, registry=registry)
    if src.classes != tgt.classes:
        missing = sorted(set(src.classes) ^ set(tgt.classes))
        raise tlbench.UserError(f"{cell.pair}: source and target classes differ ({', '.join(missing[:5])})")
    if DomainSpec.parse(cell.source).base == DomainSpec.parse(cell.target).base:
        g = torch.Generator().manual_seed(0)
        perm = torch.randperm(len(src), generator=g)
        half = len(perm) // 2
        src, tgt = src.subset(perm[:half]), tgt.subset(perm[half:])
    holdout = None
    frac = cell.recipe["source_holdout"]
    if frac > 0:
        g = torch.Generator().manual_seed(0)
        perm = torch.randperm(len(src), generator=g)
        n_hold = int(round(frac * len(src)))
        if n_hold > 0:
            holdout = src.subset(perm[:n_hold], name=f"{src.name} (held out)")
            src = src.subset(perm[n_hold:])
    return CellData(src, holdout, tgt, len(src.classes))


def build_model(backbone: str, weights: str, num_classes: int, recipe: dict, registry) -> tuple[TransferModel, str]:
    net, source = create_backbone(backbone, weights, registry=registry)
    model = TransferModel(net, num_classes, bottleneck_dim=recipe["bottleneck_dim"],
                          backbone_lr_scale=recipe["backbone_lr_scale"], backbone_name=backbone)
    return model, source


class Sampler:
    """Endless shuffled epochs over a domain's indices, on the training device."""

    def __init__(self, n: int, batch_size: int, g: torch.Generator, device: torch.device):
        self.n, self.bs, self.g, self.device = n, batch_size, g, device
        self._perm = torch.empty(0, dtype=torch.long, device=device)
        self._pos = 0

    def next(self) -> Tensor:
        """The next batch of indices."""
        parts, need = [], self.bs
        while need > 0:
            if self._pos >= len(self._perm):
                self._perm = torch.randperm(self.n, generator=self.g, device=self.g.device).to(self.device)
                self._pos = 0
            take = self._perm[self._pos:self._pos + need]
            self._pos += len(take)
            need -= len(take)
            parts.append(take)
        return parts[0] if len(parts) == 1 else torch.cat(parts)


class ClassBalancedSampler:
    """Indices drawn with replacement, each class equally likely (weights 1 / class count).

    For a class-imbalanced labelled source: the classes' share in training batches then no longer
    follows the source's own label distribution, which the target need not share (PyTorch's
    ``WeightedRandomSampler`` recipe, drawn on the training device).
    """

    def __init__(self, labels: Tensor, batch_size: int, g: torch.Generator):
        counts = torch.bincount(labels)
        self.weights = (1.0 / counts.clamp_min(1).float())[labels]
        self.bs, self.g = batch_size, g

    def next(self) -> Tensor:
        """The next batch of indices."""
        return torch.multinomial(self.weights, self.bs, replacement=True, generator=self.g)


def source_sampler(labels: Tensor, recipe: dict, g: torch.Generator, device: torch.device) -> Sampler | ClassBalancedSampler:
    """The labelled source's sampler the recipe asks for."""
    if recipe["source_sampling"] == "class_balanced":
        return ClassBalancedSampler(labels, int(recipe["batch_size"]), g)
    return Sampler(len(labels), int(recipe["batch_size"]), g, device)


@torch.no_grad()
def evaluate(model: nn.Module, images: Tensor, labels: Tensor, augmenter: Augmenter, batch_size: int,
             device: torch.device, autocast) -> tuple[float, float]:
    """(accuracy in percent, images per second) of ``model`` on uint8 ``images``."""
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=device)
    watch = Stopwatch(device)
    watch.start()
    for i in range(0, len(images), batch_size):
        x = augmenter.test(images[i:i + batch_size].to(device, non_blocking=True))
        with autocast():
            logits = model(x)
        correct += (logits.argmax(1) == labels[i:i + batch_size].to(device)).sum()
    seconds = watch.stop()
    return 100.0 * correct.item() / len(images), len(images) / max(seconds, 1e-9)


class _PseudoLabelAudit:
    """Measures pseudo-labels against the true target labels; never feeds them back."""

    def __init__(self, labels: Tensor):
        self.labels = labels
        self.seen = torch.zeros((), device=labels.device)
        self.kept = torch.zeros((), device=labels.device)
        self.correct = torch.zeros((), device=labels.device)

    def __call__(self, index: Tensor, pseudo: Tensor, mask: Tensor) -> None:
        mask = mask.bool()
        self.seen += index.numel()
        self.kept += mask.sum()
        self.correct += ((pseudo == self.labels[index]) & mask).sum()

    def metrics(self) -> dict[str, float]:
        seen, kept = self.seen.item(), self.kept.item()
        if seen == 0:
            return {}
        out = {"pseudo_label_coverage": 100.0 * kept / seen}
        if kept:
            out["pseudo_label_acc"] = 100.0 * self.correct.item() / kept
        return out


def _make_optimizer(groups: list[dict], recipe: dict, device: torch.device) -> torch.optim.Optimizer:
    fused = {"fused": True} if device.type == "cuda" else {}
    if recipe["optimizer"] == "adamw":
        return torch.optim.AdamW(groups, lr=recipe["lr"], weight_decay=recipe["weight_decay"], **fused)
    return torch.optim.SGD(groups, lr=recipe["lr"], momentum=recipe["momentum"], nesterov=recipe["nesterov"],
                           weight_decay=recipe["weight_decay"], **fused)


def _torch_group(group: ParamGroup, recipe: dict) -> dict:
    g = {"params": group.params, "lr": recipe["lr"] * group.lr_scale, "base_lr": recipe["lr"] * group.lr_scale,
         "name": group.name}
    if group.weight_decay is not None:
        g["weight_decay"] = group.weight_decay
    return g


def train_cell(task: CellTask, registry=None) -> CellRecord:
    """Train and evaluate one cell; raises on failure (``run_cell`` turns that into a record)."""
    from tlbench.registry import get_registry

    registry = registry or get_registry(strict=task.strict_plugins)
    cell, recipe = task.cell, task.cell.recipe
    t_start = time.perf_counter()
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    device = select_device(task.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    memory = PeakMemory(device)
    memory.reset()
    deterministic = bool(recipe["deterministic"]) and device.type == "cpu"
    seed_everything(cell.seed, deterministic, device)

    data = load_cell_data(cell, task, registry)
    model, weights_used = build_model(cell.backbone, cell.weights, data.num_classes, recipe, registry)
    strategy_cls = registry.get("strategy", cell.strategy)
    strategy: Strategy = strategy_cls(strategy_cls.parse_params(cell.params))
    total_steps = int(recipe["steps"])
    strategy.setup(model, SetupContext(data.num_classes, model.feature_dim, model.embed_dim, total_steps,
                                       device, cell.seed))

    use_bf16 = recipe["precision"] == "bf16" or (recipe["precision"] == "auto" and device.type == "cuda")
    # channels_last is faster on GPUs (tensor cores) and, measured here, on CPUs too (2-4x for
    # EfficientNet's depthwise convolutions with oneDNN), so "auto" means on.
    channels_last = recipe["channels_last"] != "off"
    memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def autocast():
        if use_bf16:
            return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    model.to(device, memory_format=memory_format)
    if recipe["compile"]:
        # Compile the backbone in place: parameter names (and so checkpoints) stay unchanged,
        # and strategies keep calling the same TransferModel methods. (The CLI points the
        # compiler's kernel cache into tlbench's cache.)
        model.backbone.compile()
    strategy.to(device)
    teacher = None
    if strategy_cls.needs_teacher:
        teacher = _load_teacher(task, data.num_classes, registry, device, memory_format)

    cfg = model_data_config(model.backbone)
    augmenter = Augmenter(recipe["image_size"], Normalizer(cfg["mean"], cfg["std"], device),
                          hflip=recipe["hflip"], scale=tuple(recipe["crop_scale"]), memory_format=memory_format)

    # -- parameter groups: what trains, from when ------------------------------------------------
    groups = strategy.param_groups(model)
    _check_groups(groups, cell.strategy)
    for p in list(model.parameters()) + list(strategy.parameters()):
        p.requires_grad_(False)
    start_step = {id(g): int(math.ceil(g.start * total_steps)) for g in groups}
    active = [g for g in groups if start_step[id(g)] == 0]
    pending = sorted((g for g in groups if start_step[id(g)] > 0), key=lambda g: start_step[id(g)])
    if not active:
        raise tlbench.UserError(f"strategy {cell.strategy!r} trains nothing at step 0")
    for g in active:
        for p in g.params:
            p.requires_grad_(True)
    optimizer = _make_optimizer([_torch_group(g, recipe) for g in active], recipe, device)
    model.train()
    strategy.train()
    set_batchnorm_eval_where_frozen(model)

    # -- data on the device -----------------------------------------------------------------------
    g = torch.Generator(device=device).manual_seed(cell.seed)
    src_images = data.source_train.images.to(device)
    src_labels = data.source_train.labels.to(device)
    tgt_images = data.target.images.to(device)
    tgt_labels_audit = data.target.labels.to(device)  # for measuring pseudo-labels only
    views = strategy_cls.target_views
    bs = int(recipe["batch_size"])
    src_sampler = source_sampler(src_labels, recipe, g, device)
    tgt_sampler = Sampler(len(tgt_images), bs, g, device) if views else None

    # -- frozen networks' outputs, computed once (see tlbench.features) --------------------------
    frozen = _frozen_outputs(task, data, model, strategy, groups, start_step, teacher, augmenter, weights_used,
                             src_images, tgt_images, autocast)
    feat_src, feat_tgt, feature_steps = frozen.source_features, frozen.target_features, frozen.feature_steps
    src_fixed, tgt_fixed = frozen.source_teacher, frozen.target_teacher

    def view_of(feats: Tensor, idx: Tensor) -> Tensor:
        choice = torch.randint(0, feats.shape[0], (len(idx),), generator=g, device=device)
        return feats[choice, idx]

    def train_view(images: Tensor, idx: Tensor, fixed) -> tuple[Tensor, Tensor | None]:
        """One augmented view of ``images[idx]``; with fixed views, also the teacher's logits on it."""
        if fixed is None:
            return augmenter.weak(images[idx], g), None
        fviews, logits = fixed
        v = torch.randint(0, fviews.count, (len(idx),), generator=g, device=device)
        return augmenter.view(images[idx], fviews.boxes[v, idx], fviews.flips[v, idx]), logits[v, idx]

    audit = _PseudoLabelAudit(tgt_labels_audit)
    ctx = StepContext(step=0, total_steps=total_steps, model=model, device=device,
                      num_classes=data.num_classes, teacher=teacher, score_pseudo_labels=audit)

    # -- the loop ---------------------------------------------------------------------------------
    bad_step = torch.full((), -1, dtype=torch.long, device=device)
    bad_value = torch.zeros((), device=device)
    log_every = int(recipe["log_every"])
    warmup = min(int(recipe["timing_warmup_steps"]), max(0, total_steps - 1))
    images_per_step = bs * (1 + len(views))
    watch = Stopwatch(device)
    train_seconds = 0.0
    bar = _progress(task, total_steps, cell)
    metric_sums: dict[str, Tensor | float] = {}
    for step in range(total_steps):
        if step == warmup:
            watch.start()
        while pending and start_step[id(pending[0])] <= step:
            grp = pending.pop(0)
            for p in grp.params:
                p.requires_grad_(True)
            optimizer.add_param_group(_torch_group(grp, recipe))
            model.train()
            set_batchnorm_eval_where_frozen(model)
        ctx.step = step
        factor = (1.0 + recipe["lr_gamma"] * step / total_steps) ** (-recipe["lr_decay"])
        for pg in optimizer.param_groups:
            pg["lr"] = pg["base_lr"] * factor

        if step == feature_steps and feat_src is not None:
            feat_src = feat_tgt = None  # the backbone trains from here on: free the features
        si = src_sampler.next()
        if feat_src is not None:
            batch = Batch(source=view_of(feat_src, si), source_labels=src_labels[si])
        else:
            x, t = train_view(src_images, si, src_fixed)
            batch = Batch(source=x, source_labels=src_labels[si], source_teacher=t)
        if views:
            ti = tgt_sampler.next()
            batch.target_index = ti
            if feat_tgt is not None:
                batch.target = view_of(feat_tgt, ti)
            else:
                batch.target, batch.target_teacher = train_view(tgt_images, ti, tgt_fixed)
            if "strong" in views:
                batch.target_strong = augmenter.strong(tgt_images[ti], g)
        with autocast():
            out = strategy.training_step(batch, ctx)
        loss = out.loss.float()
        first_bad = (bad_step < 0) & ~torch.isfinite(loss)  # stays on the device: no sync here
        bad_value = torch.where(first_bad, loss.detach(), bad_value)
        bad_step = torch.where(first_bad, step, bad_step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        for k, v in out.metrics.items():
            # a Python number stays on the host: torch.tensor(v, device=cuda) would block on the device
            v = v.detach().float() if isinstance(v, Tensor) else float(v)
            metric_sums[k] = metric_sums.get(k, 0) + v
        if (step + 1) % log_every == 0 or step + 1 == total_steps:
            if bad_step.item() >= 0:  # the only host sync of the loop
                raise DivergedError(int(bad_step.item()), float(bad_value.item()))
            if bar is not None:
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
                bar.update(step + 1 - bar.n)
    train_seconds = watch.stop()
    if bar is not None:
        bar.close()
    measured_steps = total_steps - warmup
    train_img_per_s = measured_steps * images_per_step / max(train_seconds, 1e-9)

    # -- evaluation: the last model, all target images, the held-out source ----------------------
    target_acc, eval_img_per_s = evaluate(model, tgt_images, tgt_labels_audit, augmenter,
                                          recipe["eval_batch_size"], device, autocast)
    source_acc = None
    if data.source_holdout is not None:
        source_acc, _ = evaluate(model, data.source_holdout.images.to(device), data.source_holdout.labels.to(device),
                                 augmenter, recipe["eval_batch_size"], device, autocast)
    if task.save_model:  # a kd teacher: its students load these weights, checked by their digest
        from tlbench.results import ResultsDir

        save_checked(ResultsDir(Path(task.out_dir)).model_path(cell.id),
                      {k: v.detach().cpu() for k, v in model.state_dict().items()})

    extra: dict[str, Any] = {k: float(v / total_steps) for k, v in metric_sums.items()}
    extra.update(audit.metrics())
    extra.update(strategy.extra_metrics())
    import timm

    extra.update({"timm_version": timm.__version__, "weights": weights_used, "deterministic": deterministic, "precision": "bf16" if use_bf16 else "fp32",
                  "channels_last": channels_last, "compiled": bool(recipe["compile"]), "feature_cache": feature_steps > 0,
                  "feature_cache_steps": feature_steps, "teacher_views": frozen.teacher_views, "label": cell.label,
                  "train_images": len(data.source_train), "target_images": len(data.target),
                  "train_seconds": train_seconds})
    return CellRecord(
        suite=cell.suite, dataset=cell.dataset, backbone=cell.backbone, strategy=cell.label, source=cell.source,
        target=cell.target, seed=cell.seed, status="ok", target_acc=target_acc, source_acc=source_acc,
        train_img_per_s=train_img_per_s, eval_img_per_s=eval_img_per_s, peak_mem_mb=memory.peak_mb(),
        trainable_params=sum(p.numel() for g_ in groups for p in g_.params),
        total_params=count_parameters(model) + count_parameters(strategy), steps=total_steps,
        wall_s=time.perf_counter() - t_start, device=device_name(device), torch_version=torch.__version__,
        tlbench_version=tlbench.__version__, cell_id=cell.id, started_at=started, extra=extra)


@dataclass
class _FrozenOutputs:
    """What the engine serves instead of recomputing a frozen network every step."""

    feature_steps: int = 0                  # steps served backbone features (0: images throughout)
    source_features: Tensor | None = None   # views × N × D
    target_features: Tensor | None = None
    teacher_views: int = 0                  # K fixed views with the teacher's logits (0: teacher runs online)
    source_teacher: tuple[FixedViews, Tensor] | None = None  # the views and K × N × C logits
    target_teacher: tuple[FixedViews, Tensor] | None = None


def _frozen_outputs(task: CellTask, data: CellData, model: TransferModel, strategy: Strategy,
                    groups: list[ParamGroup], start_step: dict[int, int], teacher: nn.Module | None,
                    augmenter: Augmenter, weights_used: str, src_images: Tensor, tgt_images: Tensor,
                    autocast) -> _FrozenOutputs:
    """Backbone features for the steps where the backbone is frozen, and a kd teacher's logits on
    fixed views, each computed once per (network, domain, views) and kept in the disk cache.

    Whether each is used follows from the configuration alone (never from the cache's state),
    so a cell's numbers do not depend on what happened to be cached.
    """
    cell, recipe = task.cell, task.cell.recipe
    cache_dir = Path(task.cache_dir) if task.cache_dir else None
    views = type(strategy).target_views
    out = _FrozenOutputs()
    steps = _frozen_backbone_steps(model, groups, start_step, int(recipe["steps"]))
    if (type(strategy).accepts_features and bool(recipe["feature_cache"]) and steps > 0
            and "strong" not in views and teacher is None):
        bank = FeatureBank(model, augmenter, ["center", "flip"] if recipe["hflip"] else ["center"],
                           recipe["eval_batch_size"], cache_dir,
                           key=f"{cell.backbone}|{weights_used}|{cell.weights}|{recipe['image_size']}")
        out.feature_steps = steps
        out.source_features = bank.features(src_images, domain_key(data.source_train), autocast)
        if views:
            out.target_features = bank.features(tgt_images, domain_key(data.target), autocast)
    if teacher is not None and strategy.teacher_views:
        out.teacher_views = strategy.teacher_views
        tbank = TeacherViewBank(teacher, augmenter, out.teacher_views, recipe["eval_batch_size"], cache_dir,
                                key=f"teacher={checked_digest(Path(task.teacher_model))}")
        out.source_teacher = tbank.build(src_images, domain_key(data.source_train), autocast)
        if views:
            out.target_teacher = tbank.build(tgt_images, domain_key(data.target), autocast)
    return out


def _frozen_backbone_steps(model: TransferModel, groups: list[ParamGroup], start_step: dict[int, int],
                           total_steps: int) -> int:
    """How many steps pass, from the first, before any backbone parameter trains."""
    backbone = {id(p) for p in model.backbone.parameters()}
    starts = [start_step[id(g)] for g in groups if any(id(p) in backbone for p in g.params)]
    return min(starts, default=total_steps)


def _check_groups(groups: list[ParamGroup], name: str) -> None:
    seen: set[int] = set()
    for grp in groups:
        for p in grp.params:
            if id(p) in seen:
                raise ValueError(f"strategy {name!r}: a parameter is in two groups (second: {grp.name!r})")
            seen.add(id(p))
        if not 0 <= grp.start <= 1:
            raise ValueError(f"strategy {name!r}: group {grp.name!r} start {grp.start} is outside 0..1")


def _load_teacher(task: CellTask, num_classes: int, registry, device, memory_format) -> TransferModel:
    teacher_cell = task.cell.teacher
    if teacher_cell is None or not task.teacher_model or not Path(task.teacher_model).is_file():
        raise RuntimeError(f"kd cell {task.cell.id}: the teacher's trained weights are missing")
    model, _ = build_model(teacher_cell.backbone, "random", num_classes, teacher_cell.recipe, registry)
    state = load_checked(Path(task.teacher_model))
    if not isinstance(state, dict):
        raise RuntimeError(f"kd cell {task.cell.id}: the teacher's weights {task.teacher_model} are damaged "
                           f"(checksum mismatch); run the same command again to retrain the teacher")
    model.load_state_dict(state)
    model.to(device, memory_format=memory_format).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _progress(task: CellTask, total: int, cell: Cell):
    if not task.show_progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=cell.describe(), unit="step", leave=False, dynamic_ncols=True)


def failed_record(task: CellTask, status: str, error: str, started: str, wall_s: float,
                  device: str = "", steps: int | None = None) -> CellRecord:
    cell = task.cell
    return CellRecord(suite=cell.suite, dataset=cell.dataset, backbone=cell.backbone, strategy=cell.label,
                      source=cell.source, target=cell.target, seed=cell.seed, status=status, error=error,
                      steps=steps, wall_s=wall_s, device=device, torch_version=torch.__version__,
                      tlbench_version=tlbench.__version__, cell_id=cell.id, started_at=started,
                      extra={"label": cell.label})


class _HookError(Exception):
    """A ``before_cell`` hook raised; the cell fails with the hook named."""


def run_cell(task: CellTask) -> CellRecord:
    """Train one cell and always return a record: ok, failed (with the error) or diverged.

    Top-level and picklable, so launchers (processes, Ray, Slurm) can call it in a worker.
    """
    from tlbench.registry import format_traceback, get_registry

    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    registry = get_registry(strict=task.strict_plugins)
    record: CellRecord
    try:
        try:
            registry.hook.before_cell(cell=task.cell)
        except Exception as exc:  # a plugin hook that raises fails the cell, not the run
            raise _HookError(f"before_cell hook raised {type(exc).__name__}: {exc}") from exc
        record = train_cell(task, registry)
    except KeyboardInterrupt:
        raise
    except _HookError as exc:
        message = str(exc) + ("\n" + format_traceback(exc.__cause__) if task.debug else "")
        record = failed_record(task, "failed", message, started, time.perf_counter() - t0)
    except DivergedError as exc:
        record = failed_record(task, "diverged", str(exc), started, time.perf_counter() - t0, steps=exc.step)
    except torch.OutOfMemoryError as exc:
        record = failed_record(task, "failed", f"out of memory: {str(exc).splitlines()[0]}", started,
                               time.perf_counter() - t0)
    except Exception as exc:
        message = f"{type(exc).__name__}: {exc}"
        if task.debug:
            message += "\n" + format_traceback(exc)
        record = failed_record(task, "failed", message, started, time.perf_counter() - t0)
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    try:
        registry.hook.after_cell(cell=task.cell, record=record)
    except Exception as exc:  # a plugin hook that raises fails the cell, not the run
        record = failed_record(task, "failed", f"after_cell hook raised {type(exc).__name__}: {exc}", started,
                               time.perf_counter() - t0)
    return record
