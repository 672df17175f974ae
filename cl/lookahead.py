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
    d = g.add(p, alpha=wd) if wd else g
    if mom:
        buf = state.get("momentum_buffer")
        buf = d if buf is None else buf.mul(mom).add_(d, alpha=1 - group["dampening"])
        d = d.add(buf, alpha=mom) if group["nesterov"] else buf
    return d.mul(-lr)


def _adam(p: Tensor, g: Tensor, group: dict, state: dict, *, decoupled: bool) -> Tensor:
    # Few passes and two temporaries: the hypernetwork's output layer has millions of weights.
    lr, wd, eps = float(group["lr"]), group["weight_decay"], group["eps"]
    beta1, beta2 = group["betas"]
    if wd and not decoupled:
        g = g.add(p, alpha=wd)
    t = float(state["step"]) + 1 if "step" in state else 1.0
    if "exp_avg" in state:  # the moments after this step: lerp is one pass
        m = state["exp_avg"].lerp(g, 1 - beta1)
        v = g.mul(g).lerp_(state["exp_avg_sq"], beta2)
    else:
        m, v = g.mul(1 - beta1), g.mul(g).mul_(1 - beta2)
    if group.get("amsgrad", False) and "max_exp_avg_sq" in state:
        torch.maximum(state["max_exp_avg_sq"], v, out=v)
    # -lr/c1 * m / (sqrt(v)/sqrt(c2) + eps) = -lr*sqrt(c2)/c1 * m / (sqrt(v) + eps*sqrt(c2))
    c1, c2 = 1 - beta1**t, (1 - beta2**t) ** 0.5
    delta = m.div_(v.sqrt_().add_(eps * c2)).mul_(-lr * c2 / c1)
    if wd and decoupled:
        delta.add_(p, alpha=-lr * wd)
    return delta
