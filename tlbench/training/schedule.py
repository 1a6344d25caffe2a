"""What trains, from when, at which rate: the strategy's parameter groups turned into an optimizer.

A group joins the optimizer at ``ceil(start × steps)``; until then its parameters are frozen (and
its BatchNorm layers keep their running statistics). Every group's learning rate follows the
recipe's decay ``lr × scale × (1 + γ·step/steps)^(-decay)`` (Ganin et al. 2016's annealing, the
schedule TLlib's scripts use).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from tlbench.errors import UserError
from tlbench.models.transfer import set_batchnorm_eval_where_frozen
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
    ):
        check_groups(groups, strategy_name)
        self.groups, self.model, self.recipe = groups, model, recipe
        self.strategy_name = strategy_name
        self._group_names = [g.name for g in groups]
        self.total_steps = int(recipe.steps)
        for module in modules:
            for p in module.parameters():
                p.requires_grad_(False)
        self.start_step = {id(g): int(math.ceil(g.start * self.total_steps)) for g in groups}
        active = [g for g in groups if self.start_step[id(g)] == 0]
        self._pending = sorted((g for g in groups if self.start_step[id(g)] > 0), key=lambda g: self.start_step[id(g)])
        if not active:
            raise UserError(f"strategy {strategy_name!r} trains nothing at step 0")
        for g in active:
            for p in g.params:
                p.requires_grad_(True)
        self.optimizer = make_optimizer([torch_group(g, recipe) for g in active], recipe, device)
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
            unknown = sorted(set(groups) - set(self._group_names))
            if unknown:
                raise ValueError(
                    f"strategy {self.strategy_name!r}: an update names group(s) {', '.join(map(repr, unknown))} "
                    f"that param_groups does not declare; declared: {', '.join(map(repr, self._group_names))}"
                )
            for pg in self.optimizer.param_groups:
                if pg["name"] not in groups:
                    for p in pg["params"]:
                        p.grad = None
        self.optimizer.step()


def make_optimizer(groups: list[dict], recipe: Recipe, device: torch.device) -> torch.optim.Optimizer:
    """SGD (momentum, optional Nesterov) or AdamW over torch parameter groups; fused on a GPU."""
    fused: dict[str, Any] = {"fused": True} if device.type == "cuda" else {}
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=recipe.lr, weight_decay=recipe.weight_decay, **fused)
    return torch.optim.SGD(
        groups,
        lr=recipe.lr,
        momentum=recipe.momentum,
        nesterov=recipe.nesterov,
        weight_decay=recipe.weight_decay,
        **fused,
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
