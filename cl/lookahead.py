"""The step an optimiser is about to take, computed without taking it.

Regularisers that look ahead (the hypernetwork output regulariser of von Oswald et al., ICLR
2020, evaluated at ``theta + dtheta``) need ``dtheta``: the change the optimiser would make to
the parameters given the current gradients and its current state (momentum buffers, Adam's
moments and step count, learning rate of the group). :func:`optimizer_delta` computes it for
torch's SGD, Adam and AdamW with every option the loop can set; :func:`sgd_delta` is the plain
``-lr * grad`` step. Both can return ``theta + dtheta`` directly (``add_param``) and write into
the kept tensors of a :class:`Scratch` (no allocation per step: on a CPU, page-faulting a fresh
tensor of tens of megabytes costs more than the arithmetic on it).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from cl.errors import ConfigError

LOOKAHEAD_STEPS = ("optimizer", "sgd")


class Scratch:
    """Work tensors kept from one preview to the next, one per (parameter, role).

    A result written into a scratch tensor is valid until the next call that uses the same
    scratch; :meth:`clear` frees them all.
    """

    def __init__(self) -> None:
        self._kept: dict[tuple[int, str], Tensor] = {}

    def like(self, t: Tensor, key: object, role: str) -> Tensor:
        """An uninitialised tensor shaped like ``t``, kept under ``(id(key), role)``."""
        buf = self._kept.get((id(key), role))
        if buf is None or buf.shape != t.shape or buf.dtype != t.dtype or buf.device != t.device:
            buf = self._kept[(id(key), role)] = torch.empty_like(t)
        return buf

    def clear(self) -> None:
        """Free every kept tensor."""
        self._kept.clear()


def sgd_delta(
    optimizer: torch.optim.Optimizer,
    params: Sequence[nn.Parameter],
    grads: Sequence[Tensor | None],
    *,
    scratch: Scratch | None = None,
    add_param: bool = False,
) -> list[Tensor | None]:
    """The plain gradient step ``-lr * g`` at each parameter's group learning rate (no
    momentum, no weight decay, no optimiser state); ``p - lr * g`` with ``add_param``."""
    lr_of = {id(p): float(g["lr"]) for g in optimizer.param_groups for p in g["params"]}
    work = scratch or Scratch()
    out: list[Tensor | None] = []
    for p, g in zip(params, grads, strict=True):
        if g is None or id(p) not in lr_of:
            out.append(None)
            continue
        buf, lr = work.like(g, p, "delta"), lr_of[id(p)]
        if add_param:
            out.append(torch.add(p.detach(), g, alpha=-lr, out=buf))
        else:
            out.append(torch.mul(g, -lr, out=buf))
    return out


def optimizer_delta(
    optimizer: torch.optim.Optimizer,
    params: Sequence[nn.Parameter],
    grads: Sequence[Tensor | None],
    *,
    scratch: Scratch | None = None,
    add_param: bool = False,
) -> list[Tensor | None]:
    """``p_after - p`` of ``optimizer.step()`` with ``grads`` as the gradients of ``params``.

    Neither the parameters nor the optimiser's state change. Parameters without a gradient
    (None) get None. Supported: ``SGD`` (momentum, dampening, nesterov, weight decay,
    maximize), ``Adam`` and ``AdamW`` (weight decay, amsgrad, maximize).

    Args:
        optimizer: The optimiser whose next step is previewed.
        params: Parameters to preview.
        grads: Their gradients (the ones the step would use).
        scratch: Where to write the results and temporaries (None: fresh tensors).
        add_param: Return ``p_after`` itself (``p + delta``, detached) instead of ``delta``.

    Raises:
        ConfigError: Another optimiser type.
    """
    kind = type(optimizer)
    if kind not in (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW):
        raise ConfigError(
            f"the look-ahead cannot preview a {kind.__name__} step; set strategy.lookahead_step=sgd"
        )
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    work = scratch or Scratch()
    out: list[Tensor | None] = []
    for p, g in zip(params, grads, strict=True):
        group = group_of.get(id(p))
        if g is None or group is None:
            out.append(None)
            continue
        g = -g if group.get("maximize", False) else g
        state = optimizer.state.get(p, {})
        bufs = (work.like(g, p, "delta"), work.like(g, p, "tmp"))
        if kind is torch.optim.SGD:
            out.append(_sgd(p.detach(), g, group, state, bufs, add_param))
        else:
            adamw = kind is torch.optim.AdamW
            out.append(_adam(p.detach(), g, group, state, bufs, add_param, decoupled=adamw))
    return out


def _sgd(
    p: Tensor, g: Tensor, group: dict, state: dict, bufs: tuple[Tensor, Tensor], add_param: bool
) -> Tensor:
    out, tmp = bufs
    lr, wd, mom = float(group["lr"]), group["weight_decay"], group["momentum"]
    d = torch.add(g, p, alpha=wd, out=out) if wd else g
    if mom:
        buf = state.get("momentum_buffer")
        if buf is not None:  # the momentum buffer after this step
            buf = torch.mul(buf, mom, out=tmp).add_(d, alpha=1 - group["dampening"])
        else:
            buf = d
        d = torch.add(d, buf, alpha=mom, out=out) if group["nesterov"] else buf
    return torch.add(p, d, alpha=-lr, out=out) if add_param else torch.mul(d, -lr, out=out)


def _adam(
    p: Tensor,
    g: Tensor,
    group: dict,
    state: dict,
    bufs: tuple[Tensor, Tensor],
    add_param: bool,
    *,
    decoupled: bool,
) -> Tensor:
    # Six passes over kept buffers, no allocation: the hypernetwork's output layer is millions.
    m, v = bufs
    lr, wd, eps = float(group["lr"]), group["weight_decay"], group["eps"]
    beta1, beta2 = group["betas"]
    if wd and not decoupled:
        g = torch.add(g, p, alpha=wd, out=m)
    t = float(state["step"]) + 1 if "step" in state else 1.0
    torch.mul(g, g, out=v)
    if "exp_avg" in state:  # the moments after this step: lerp is one pass
        v.lerp_(state["exp_avg_sq"], beta2)
        torch.lerp(state["exp_avg"], g, 1 - beta1, out=m)
    else:
        v.mul_(1 - beta2)
        torch.mul(g, 1 - beta1, out=m)
    if group.get("amsgrad", False) and "max_exp_avg_sq" in state:
        torch.maximum(state["max_exp_avg_sq"], v, out=v)
    # -lr/c1 * m / (sqrt(v)/sqrt(c2) + eps) = -lr*sqrt(c2)/c1 * m / (sqrt(v) + eps*sqrt(c2))
    c1, c2 = 1 - beta1**t, (1 - beta2**t) ** 0.5
    denom = v.sqrt_().add_(eps * c2)
    if add_param and not (wd and decoupled):  # p + delta in the same pass
        return torch.addcdiv(p, m, denom, value=-lr * c2 / c1, out=m)
    delta = m.div_(denom).mul_(-lr * c2 / c1)
    if wd and decoupled:
        delta.add_(p, alpha=-lr * wd)
    return delta.add_(p) if add_param else delta
