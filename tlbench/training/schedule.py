"""What trains, from when, at which rate: the strategy's parameter groups turned into an optimizer.

A group joins the optimizer at ``ceil(start × steps)``; until then its parameters are frozen (and
its BatchNorm layers keep their running statistics). Every group's learning rate follows the
recipe's decay ``lr × scale × (1 + γ·step/steps)^(-decay)`` (Ganin et al. 2016's annealing, the
schedule TLlib's scripts use).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, cast

import torch
from torch import nn

from tlbench.errors import UserError
from tlbench.models.transfer import TransferModel, set_batchnorm_eval_where_frozen
from tlbench.spec.recipe import Recipe
from tlbench.training.strategy import ParamGroup


class ParamSchedule:
    """The optimizer and the steps at which each parameter group starts training."""

    def __init__(
        self,
        groups: list[ParamGroup],
        modules: list[nn.Module],
        model: nn.Module,
        recipe: Recipe,
        device: torch.device,
        strategy_name: str,
        allow_untrained: bool = False,
    ):
        """``allow_untrained``: a strategy may declare no group at all (a test-time method that only
        normalises, BN-adapt); its optimizer then holds one empty group at rate 0."""
        check_groups(groups, strategy_name)
        #: the names the strategy declared: an update may name a group recipe.trainable emptied
        self._group_names = [g.name for g in groups]
        self._declared = frozenset(self._group_names)
        if recipe.trainable != "all":
            groups = restrict_to_trainable(groups, cast(TransferModel, model), recipe)
        self._trained = frozenset(g.name for g in groups)  # the declared groups that still hold parameters
        self.groups, self.model, self.recipe = groups, model, recipe
        self.strategy_name = strategy_name
        self.total_steps = int(recipe.steps)
        for module in modules:
            for p in module.parameters():
                p.requires_grad_(False)
        self.start_step = {id(g): int(math.ceil(g.start * self.total_steps)) for g in groups}
        active = [g for g in groups if self.start_step[id(g)] == 0]
        self._pending = sorted((g for g in groups if self.start_step[id(g)] > 0), key=lambda g: self.start_step[id(g)])
        if not active and (groups or not allow_untrained):
            raise UserError(f"strategy {strategy_name!r} trains nothing at step 0")
        for g in active:
            for p in g.params:
                p.requires_grad_(True)
        torch_groups = [torch_group(g, recipe) for g in active] or [{"params": [], "name": "nothing", "base_lr": 0.0}]
        self.optimizer = make_optimizer(torch_groups, recipe, device)
        for module in modules:
            module.train()
        set_batchnorm_eval_where_frozen(model)

    def trainable_params(self) -> int:
        """Parameters of every group, started or not (what the strategy trains in all)."""
        return sum(p.numel() for g in self.groups for p in g.params)

    def before_step(self, step: int) -> None:
        """Let the groups due at ``step`` join, and set every group's learning rate for it."""
        while self._pending and self.start_step[id(self._pending[0])] <= step:
            group = self._pending.pop(0)
            for p in group.params:
                p.requires_grad_(True)
            self.optimizer.add_param_group(torch_group(group, self.recipe))
            self.model.train()
            set_batchnorm_eval_where_frozen(self.model)
        factor = (1.0 + self.recipe.lr_gamma * step / self.total_steps) ** (-self.recipe.lr_decay)
        for pg in self.optimizer.param_groups:
            pg["lr"] = pg["base_lr"] * factor

    def step(self, groups: tuple[str, ...] | None = None) -> None:
        """Step the optimizer over the parameter groups named (None: all that have joined).

        The gradients of every other group are dropped first, so those parameters keep their values
        and their optimizer state (momentum, weight decay) waits too: as if each update had its own
        optimizer over its groups, which is how MCD's and ADDA's reference code trains.
        """
        if groups is not None:
            self._check_declared(groups)
            for pg in self.optimizer.param_groups:
                if pg["name"] not in groups:
                    for p in pg["params"]:
                        p.grad = None
        self.optimizer.step()

    def trains_any(self, groups: tuple[str, ...] | None) -> bool:
        """Whether an update over ``groups`` (None: all) can move anything: False when
        ``recipe.trainable`` emptied every group it names (MCD's generator on a frozen backbone)."""
        if groups is None:
            return True
        self._check_declared(groups)
        return not self._trained.isdisjoint(groups)

    def _check_declared(self, groups: tuple[str, ...]) -> None:
        if self._declared.issuperset(groups):
            return
        unknown = sorted(set(groups) - self._declared)
        if unknown:
            raise ValueError(
                f"strategy {self.strategy_name!r}: an update names group(s) {', '.join(map(repr, unknown))} "
                f"that param_groups does not declare; declared: {', '.join(map(repr, self._group_names))}"
            )


def restrict_to_trainable(groups: list[ParamGroup], model: TransferModel, recipe: Recipe) -> list[ParamGroup]:
    """The strategy's groups less the backbone parameters ``recipe.trainable`` freezes.

    ``all`` changes nothing; ``head`` takes every backbone parameter out (the engine then serves the
    frozen backbone's cached features); ``topK`` keeps only the backbone's K output-most stages
    (``model.backbone_stages()``). A group left empty is dropped; every other group keeps its rate
    and start, so a strategy's own schedule holds on the part that still trains.
    """
    keep = recipe.top_stages
    if keep is None:
        return groups
    stages = model.backbone_stages()
    if keep >= len(stages):
        raise UserError(
            f"recipe.trainable: {recipe.trainable} trains every stage of a backbone of {len(stages)}; "
            f"use trainable: all, or top1 .. top{len(stages) - 1}"
        )
    frozen = {id(p) for p in model.backbone.parameters()}
    for stage in stages[len(stages) - keep :] if keep else []:
        frozen -= {id(p) for p in stage}
    out = []
    for group in groups:
        params = [p for p in group.params if id(p) not in frozen]
        if params:
            out.append(dataclasses.replace(group, params=params))
    return out


def make_optimizer(groups: list[dict], recipe: Recipe, device: torch.device) -> torch.optim.Optimizer:
    """SGD (momentum, optional Nesterov) or AdamW over torch parameter groups; fused on a GPU.

    SGD elsewhere runs its multi-tensor (``foreach``) form: the same arithmetic, element by element,
    as torch's per-tensor loop (bit-identical, tested), without a Python loop over the parameters,
    which cost a head-only step on cached features a quarter of its time."""
    fused: dict[str, Any] = {"fused": True} if device.type == "cuda" else {}
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=recipe.lr, weight_decay=recipe.weight_decay, **fused)
    return torch.optim.SGD(
        groups,
        lr=recipe.lr,
        momentum=recipe.momentum,
        nesterov=recipe.nesterov,
        weight_decay=recipe.weight_decay,
        **(fused or {"foreach": True}),
    )


def torch_group(group: ParamGroup, recipe: Recipe) -> dict:
    """A torch optimizer's parameter group for one :class:`ParamGroup` (``base_lr`` before decay)."""
    g = {
        "params": group.params,
        "lr": recipe.lr * group.lr_scale,
        "base_lr": recipe.lr * group.lr_scale,
        "name": group.name,
    }
    if group.weight_decay is not None:
        g["weight_decay"] = group.weight_decay
    return g


def check_groups(groups: list[ParamGroup], name: str) -> None:
    """No parameter in two groups; every start within 0..1."""
    seen: set[int] = set()
    for grp in groups:
        for p in grp.params:
            if id(p) in seen:
                raise ValueError(f"strategy {name!r}: a parameter is in two groups (second: {grp.name!r})")
            seen.add(id(p))
        if not 0 <= grp.start <= 1:
            raise ValueError(f"strategy {name!r}: group {grp.name!r} start {grp.start} is outside 0..1")
