"""The step an optimiser is about to take, computed without taking it.

Regularisers that look ahead (the hypernetwork output regulariser of von Oswald et al., ICLR
2020, evaluated at ``theta + dtheta``) need ``dtheta``: the change the optimiser would make to
the parameters given the current gradients and its current state (momentum buffers, Adam's
moments and step count, learning rate of the group). :func:`optimizer_delta` computes it for
torch's SGD, Adam and AdamW with every option the loop can set; :func:`sgd_delta` is the plain
``-lr * grad`` step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from cl.errors import ConfigError

LOOKAHEAD_STEPS = ("optimizer", "sgd")


def sgd_delta(
    optimizer: torch.optim.Optimizer,
    params: Sequence[nn.Parameter],
    grads: Sequence[Tensor | None],
) -> list[Tensor | None]:
    """The plain gradient step ``-lr * g`` at each parameter's group learning rate (no
    momentum, no weight decay, no optimiser state)."""
    lr_of = {id(p): float(g["lr"]) for g in optimizer.param_groups for p in g["params"]}
    return [
        None if g is None or id(p) not in lr_of else -lr_of[id(p)] * g
        for p, g in zip(params, grads, strict=True)
    ]


def optimizer_delta(
    optimizer: torch.optim.Optimizer,
    params: Sequence[nn.Parameter],
    grads: Sequence[Tensor | None],
) -> list[Tensor | None]:
    """``p_after - p`` of ``optimizer.step()`` with ``grads`` as the gradients of ``params``.

    Neither the parameters nor the optimiser's state change. Parameters without a gradient
    (None) get None. Supported: ``SGD`` (momentum, dampening, nesterov, weight decay,
    maximize), ``Adam`` and ``AdamW`` (weight decay, amsgrad, maximize).

    Raises:
        ConfigError: Another optimiser type.
    """
    kind = type(optimizer)
    if kind not in (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW):
        raise ConfigError(
            f"the look-ahead cannot preview a {kind.__name__} step; set strategy.lookahead_step=sgd"
        )
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    out: list[Tensor | None] = []
    for p, g in zip(params, grads, strict=True):
        group = group_of.get(id(p))
        if g is None or group is None:
            out.append(None)
            continue
        g = -g if group.get("maximize", False) else g
        state = optimizer.state.get(p, {})
        if kind is torch.optim.SGD:
            out.append(_sgd(p.detach(), g, group, state))
        else:
            out.append(_adam(p.detach(), g, group, state, decoupled=kind is torch.optim.AdamW))
    return out


def _sgd(p: Tensor, g: Tensor, group: dict, state: dict) -> Tensor:
    lr, wd, mom = float(group["lr"]), group["weight_decay"], group["momentum"]
    d = g + wd * p if wd else g
    if mom:
        buf = state.get("momentum_buffer")
        buf = d.clone() if buf is None else mom * buf + (1 - group["dampening"]) * d
        d = d + mom * buf if group["nesterov"] else buf
    return -lr * d


def _adam(p: Tensor, g: Tensor, group: dict, state: dict, *, decoupled: bool) -> Tensor:
    lr, wd, eps = float(group["lr"]), group["weight_decay"], group["eps"]
    beta1, beta2 = group["betas"]
    if wd and not decoupled:
        g = g + wd * p
    t = float(state["step"]) + 1 if "step" in state else 1.0
    m = state.get("exp_avg", torch.zeros_like(p)) * beta1 + (1 - beta1) * g
    v = state.get("exp_avg_sq", torch.zeros_like(p)) * beta2 + (1 - beta2) * g * g
    if group.get("amsgrad", False):
        v = torch.maximum(state.get("max_exp_avg_sq", torch.zeros_like(p)), v)
    denom = v.sqrt() / (1 - beta2**t) ** 0.5 + eps
    delta = -(lr / (1 - beta1**t)) * m / denom
    if wd and decoupled:
        delta = delta - lr * wd * p
    return delta
