"""Optimiser machinery of the training loop: learning-rate schedules, keeping one optimiser
across experiences (and checkpointing it), and the class-IL training logit mask.

The :class:`~cl.strategy.Strategy` loop calls these; strategies do not need them directly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from cl.errors import ConfigError

LR_SCHEDULES = ("constant", "cosine", "step")
LOGIT_MASKS = ("none", "seen", "current")

# A masked logit: finite (a loss() override that does arithmetic on logits stays finite), yet
# exp(MASKED_LOGIT - max) is exactly 0 in float32, so the softmax is that of the kept classes.
MASKED_LOGIT = -1e9


@dataclass(frozen=True)
class LrFactor:
    """Multiplier of the base learning rate after ``t`` optimiser steps of one experience.

    Linear warm-up over the first ``warmup_steps`` steps (from ``lr / (warmup_steps + 1)`` up
    to ``lr``), then ``constant``, ``cosine`` (half a cosine from ``lr`` to 0 at the last step
    of the experience) or ``step`` (times ``gamma`` every ``step_size`` epochs, counted from
    the start of the experience; an epoch is ``steps_per_epoch`` steps).
    """

    schedule: str
    steps_per_epoch: int
    epochs: int
    warmup_steps: int
    step_size: int
    gamma: float

    @property
    def constant(self) -> bool:
        return self.schedule == "constant" and self.warmup_steps == 0

    def __call__(self, t: int) -> float:
        w = self.warmup_steps
        per_epoch = max(self.steps_per_epoch, 1)
        warm = (t + 1) / (w + 1) if t < w else 1.0
        if self.schedule == "cosine":
            span = max(per_epoch * self.epochs - w, 1)
            p = min(max(t - w, 0) / span, 1.0)
            return warm * 0.5 * (1.0 + math.cos(math.pi * p))
        if self.schedule == "step":
            return warm * self.gamma ** (t // per_epoch // self.step_size)
        return warm


def lr_scheduler(
    optimizer: torch.optim.Optimizer, factor: LrFactor
) -> torch.optim.lr_scheduler.LambdaLR | None:
    """A per-experience schedule (restarts from each group's initial lr), or None if constant."""
    if factor.constant:
        return None
    for g in optimizer.param_groups:  # restart: the lr each group was built with
        g.setdefault("initial_lr", g["lr"])
        g["lr"] = g["initial_lr"]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def update_param_groups(optimizer: torch.optim.Optimizer, params: Sequence[nn.Parameter]) -> None:
    """Make ``optimizer`` update exactly ``params``, keeping the state of those it had.

    Parameters no longer trained are dropped with their state; new ones go into a new group
    with the optimiser's defaults.
    """
    keep = {id(p) for p in params}
    for g in optimizer.param_groups:
        for p in g["params"]:
            if id(p) not in keep:
                optimizer.state.pop(p, None)
        g["params"] = [p for p in g["params"] if id(p) in keep]
    optimizer.param_groups = [g for g in optimizer.param_groups if g["params"]]
    present = {id(p) for g in optimizer.param_groups for p in g["params"]}
    new = [p for p in params if id(p) not in present]
    if new:
        optimizer.add_param_group({"params": new})


def named_parameters(roots: Iterable[tuple[str, Any]]) -> dict[str, nn.Parameter]:
    """Every parameter reachable from ``roots`` under a stable name.

    Roots are visited in order; modules, parameters and dicts/lists/tuples of them (two levels
    deep) are followed. A parameter reachable twice keeps the first name.
    """
    out: dict[str, nn.Parameter] = {}
    seen: set[int] = set()

    def add(name: str, p: nn.Parameter) -> None:
        if id(p) not in seen:
            seen.add(id(p))
            out[name] = p

    def visit(prefix: str, obj: Any, depth: int) -> None:
        if isinstance(obj, nn.Parameter):
            add(prefix, obj)
        elif isinstance(obj, nn.Module):
            for n, p in obj.named_parameters(prefix=prefix, remove_duplicate=False):
                add(n, p)
        elif depth < 2 and isinstance(obj, dict):
            for k, v in obj.items():
                visit(f"{prefix}.{k}", v, depth + 1)
        elif depth < 2 and isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                visit(f"{prefix}.{i}", v, depth + 1)

    for prefix, obj in roots:
        visit(prefix, obj, 0)
    return out


def optimizer_state(
    optimizer: torch.optim.Optimizer, named: dict[str, nn.Parameter]
) -> dict[str, Any]:
    """The optimiser's state with parameters referred to by name (for a checkpoint).

    Raises:
        ConfigError: A parameter the optimiser updates has no name.
    """
    name_of = {id(p): n for n, p in named.items()}
    order = [p for g in optimizer.param_groups for p in g["params"]]
    if any(id(p) not in name_of for p in order):
        raise ConfigError(
            "train.reset_optimizer=false cannot checkpoint the optimiser: a trained parameter "
            "is not reachable from the model or the strategy's attributes"
        )
    names = [name_of[id(p)] for p in order]
    sd = optimizer.state_dict()
    groups = [
        {**{k: v for k, v in g.items() if k != "params"}, "params": [names[j] for j in g["params"]]}
        for g in sd["param_groups"]
    ]
    return {"param_groups": groups, "state": {names[j]: s for j, s in sd["state"].items()}}


def restore_optimizer(
    saved: dict[str, Any],
    named: dict[str, nn.Parameter],
    build: Callable[[list[nn.Parameter]], torch.optim.Optimizer],
) -> torch.optim.Optimizer:
    """Rebuild an optimiser saved by :func:`optimizer_state` over the parameters now so named.

    Args:
        saved: What :func:`optimizer_state` returned.
        named: :func:`named_parameters` of the restored strategy.
        build: Builds an optimiser over a list of parameters (the strategy's).

    Raises:
        ConfigError: A saved parameter name no longer exists.
    """
    groups = saved["param_groups"]
    for g in groups:
        missing = [n for n in g["params"] if n not in named]
        if missing:
            raise ConfigError(f"cannot resume the optimiser: no parameter {missing[0]!r}")
    optimizer = build([named[n] for n in groups[0]["params"]])
    for g in groups[1:]:
        optimizer.add_param_group({"params": [named[n] for n in g["params"]]})
    index = {n: i for i, n in enumerate(n for g in groups for n in g["params"])}
    optimizer.load_state_dict(
        {
            "state": {index[n]: s for n, s in saved["state"].items()},
            "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in groups],
        }
    )
    return optimizer


def class_mask(n_classes: int, classes: Iterable[int], device: torch.device) -> Tensor:
    """Boolean mask over the label space with ``classes`` set."""
    mask = torch.zeros(n_classes, dtype=torch.bool, device=device)
    idx = torch.as_tensor(sorted(set(classes)), dtype=torch.long, device=device)
    mask[idx] = True
    return mask


def mask_logits(logits: Tensor, mask: Tensor, y: Tensor) -> Tensor:
    """``logits`` with classes outside ``mask`` (and not among the labels ``y``) masked."""
    keep = mask.clone()
    keep[y] = True
    return logits.masked_fill(~keep, MASKED_LOGIT)


def keep_classes(logits: Tensor, classes: Tensor) -> Tensor:
    """``logits`` with every class outside ``classes`` at -inf (the prompt methods' training on
    the current task's classes: ``mask_old_logits``)."""
    keep = torch.zeros(logits.shape[1], dtype=torch.bool, device=logits.device)
    keep[classes] = True
    return logits.masked_fill(~keep, float("-inf"))
