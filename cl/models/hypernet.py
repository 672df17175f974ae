"""Hypernetworks that generate every weight of a target network from a conditioning embedding.

Used by the ``hypernet`` strategy (von Oswald et al., "Continual learning with hypernetworks",
ICLR 2020). :class:`TargetSpec` records the names and shapes of the target's parameters and
turns a flat weight vector back into a ``{name: tensor}`` dict for
:func:`torch.func.functional_call`; :class:`HyperNetwork` maps embeddings to such vectors, either
all at once (full) or chunk by chunk with learned chunk embeddings (chunked, the compressive
variant of the paper).

Training a full hypernetwork touches its output layer (millions of weights) several times per
step. Its linear layers therefore accumulate their weight gradient in place into a kept tensor
(allocating and page-faulting tens of megabytes per step costs more than the arithmetic on a
CPU), and evaluate at given look-ahead values ``theta + dtheta`` without building them as a
differentiable sum: the gradient flows to ``theta`` unchanged, as for ``theta + detach(dtheta)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from cl.lookahead import Scratch

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": F.relu,
    "elu": F.elu,
    "tanh": torch.tanh,
}


def normalized_entropy(
    logits: Tensor, *, temperature: float = 1.0, normalize: bool = True
) -> Tensor:
    """Predictive entropy of ``softmax(logits / temperature)`` per row, in nats.

    With ``normalize``, divided by ``log(k)`` for ``k`` classes (the entropy of the uniform
    prediction), so it lies in [0, 1] whatever the class count: networks of tasks with
    different numbers of classes compare fairly. One class: 0.
    """
    z = logits.float() / temperature
    ent = -(F.softmax(z, -1) * F.log_softmax(z, -1)).sum(-1)
    k = logits.shape[-1]
    if not normalize:
        return ent
    return ent / math.log(k) if k > 1 else torch.zeros_like(ent)


class _Linear(torch.autograd.Function):
    """``F.linear(x, w_at, b_at)`` whose gradients go to ``weight`` and ``bias``.

    ``w_at``/``b_at`` are the values to evaluate at (the parameters themselves, or their
    detached look-ahead values); the weight's gradient ``g^T x`` is accumulated in place into
    ``weight.grad``, in a tensor kept in ``store`` across steps when the gradient is unset.
    """

    @staticmethod
    def forward(
        x: Tensor, weight: Tensor, bias: Tensor, w_at: Tensor, b_at: Tensor, store: Scratch
    ) -> Tensor:
        return F.linear(x, w_at, b_at)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        x, weight, _, w_at, _, store = inputs
        ctx.save_for_backward(x, w_at)
        ctx.weight, ctx.store = weight, store

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        x, w_at = ctx.saved_tensors
        weight, store = ctx.weight, ctx.store
        if weight.grad is None:  # set to None by zero_grad: reuse the kept tensor
            weight.grad = torch.mm(g.t(), x, out=store.like(weight, weight, "grad"))
        else:
            weight.grad.addmm_(g.t(), x)
        grad_x = g @ w_at if ctx.needs_input_grad[0] else None
        grad_b = g.sum(0) if ctx.needs_input_grad[2] else None
        return grad_x, None, grad_b, None, None, None


def linear(
    layer: nn.Linear,
    x: Tensor,
    ahead: Mapping[str, Tensor] | None = None,
    prefix: str = "",
    store: Scratch | None = None,
) -> Tensor:
    """``layer(x)`` at its parameters or at their look-ahead values ``ahead[prefix + name]``
    (detached; the gradient reaches the parameters as if they had been added to them).

    While training (grad enabled, leaf fp32 parameters, no autocast), ``layer.weight``'s
    gradient is accumulated in place, in a tensor kept in ``store`` (see :class:`_Linear`).
    """
    w: Tensor = layer.weight
    b: Tensor = layer.bias
    w_at = ahead.get(prefix + "weight", w) if ahead else w
    b_at = ahead.get(prefix + "bias", b) if ahead else b
    trains = torch.is_grad_enabled() and w.requires_grad and w.is_leaf and b.is_leaf
    if store is not None and trains and not torch.is_autocast_enabled(x.device.type):
        lead = x.shape[:-1]
        out = _Linear.apply(x.reshape(-1, x.shape[-1]), w, b, w_at.detach(), b_at.detach(), store)
        return out.reshape(*lead, out.shape[-1])
    if w_at is not w:
        w = w + (w_at - w).detach()
    if b_at is not b:
        b = b + (b_at - b).detach()
    return F.linear(x, w, b)


@dataclass
class RegStep:
    """One training step's regularised old tasks: their stacked embeddings, their stored
    targets, and the outputs generated for them (at ``theta`` or ``theta + dtheta``)."""

    emb: Tensor
    target: Tensor
    pred: Tensor | None = None


@dataclass(frozen=True)
class TargetSpec:
    """Names and shapes of the generated target parameters, in flat-vector order.

    Attributes:
        names: Parameter names (as ``functional_call`` expects them).
        shapes: Their shapes.
    """

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @property
    def sizes(self) -> list[int]:
        return [math.prod(s) for s in self.shapes]

    @property
    def numel(self) -> int:
        return sum(self.sizes)

    def unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        """Split one flat weight vector into named tensors of the target's shapes."""
        parts = torch.split(flat, self.sizes)
        return {n: p.view(s) for n, p, s in zip(self.names, parts, self.shapes, strict=True)}

    def init_scale_offset(self) -> tuple[Tensor, Tensor]:
        """Per-element scale and offset that give generated weights a standard init's size.

        The raw hypernetwork output has roughly unit variance; multiplying it by the He std of
        each weight tensor (``sqrt(2 / fan_in)``), the ``1/sqrt(fan_in)`` of the layer for its
        bias, and shifting 1-D normalisation weights to 1, makes the initial target network
        trainable whatever its layer sizes (the role of hyperfan init in later work).
        """
        fan_in: dict[str, int] = {}
        for n, s in zip(self.names, self.shapes, strict=True):
            if len(s) >= 2:
                fan_in[n.rsplit(".", 1)[0]] = math.prod(s[1:])
        scales, offsets = [], []
        for n, s in zip(self.names, self.shapes, strict=True):
            size = math.prod(s)
            prefix, leaf = n.rsplit(".", 1) if "." in n else ("", n)
            offset = 0.0
            if len(s) >= 2:
                scale = math.sqrt(2.0 / math.prod(s[1:]))
            elif prefix in fan_in:  # bias of a linear/conv layer
                scale = 1.0 / math.sqrt(fan_in[prefix])
            else:  # normalisation layer: weight around 1, bias around 0
                scale, offset = 0.1, 1.0 if leaf == "weight" else 0.0
            scales.append(torch.full((size,), scale))
            offsets.append(torch.full((size,), offset))
        return torch.cat(scales), torch.cat(offsets)


class HyperNetwork(nn.Module):
    """An MLP ``h(e) -> theta_target`` (full) or ``h([e, c_i]) -> chunk_i`` (chunked).

    Args:
        n_out: Number of generated target weights.
        emb_dim: Size of the conditioning (task) embedding.
        hidden_sizes: Widths of the hidden layers.
        chunk_size: Outputs per chunk; ``None`` generates all weights in one output layer.
        chunk_emb_dim: Size of the learned chunk embeddings (chunked only).
        activation: ``relu``, ``elu`` or ``tanh``.
        scale: Fixed per-output multiplier (see :meth:`TargetSpec.init_scale_offset`).
        offset: Fixed per-output shift.

    While training, the weight gradients of the linear layers are written into
    ``weight.grad`` directly (kept tensors, see :func:`linear`), not through autograd's
    accumulation: gradient hooks on those weights do not fire, and ``torch.autograd.grad``
    with respect to them is not supported (``backward()`` is).
    """

    scale: Tensor
    offset: Tensor

    def __init__(
        self,
        *,
        n_out: int,
        emb_dim: int,
        hidden_sizes: Sequence[int],
        chunk_size: int | None = None,
        chunk_emb_dim: int = 8,
        activation: str = "relu",
        scale: Tensor | None = None,
        offset: Tensor | None = None,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; valid: {', '.join(ACTIVATIONS)}")
        self.n_out = n_out
        self.chunk_size = chunk_size
        self.act: Callable[[Tensor], Tensor] = ACTIVATIONS[activation]
        in_dim = emb_dim
        if chunk_size is not None:
            n_chunks = -(-n_out // chunk_size)
            self.chunk_emb = nn.Parameter(torch.randn(n_chunks, chunk_emb_dim))
            in_dim += chunk_emb_dim
        self.hidden = nn.ModuleList()
        for h in hidden_sizes:
            layer = nn.Linear(in_dim, h)
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            nn.init.zeros_(layer.bias)
            self.hidden.append(layer)
            in_dim = h
        self.out = nn.Linear(in_dim, chunk_size or n_out)
        # Unit-variance raw outputs: the fixed scale then sets each target tensor's size.
        nn.init.normal_(self.out.weight, std=1.0 / math.sqrt(in_dim))
        nn.init.zeros_(self.out.bias)
        self.register_buffer("scale", scale if scale is not None else torch.ones(n_out))
        self.register_buffer("offset", offset if offset is not None else torch.zeros(n_out))
        # Kept across steps: the weight gradients, and the look-ahead's work tensors.
        self.workspace = Scratch()

    def release_workspace(self) -> None:
        """Free the kept work tensors (they are allocated again when next needed)."""
        self.workspace.clear()

    def forward(self, emb: Tensor, ahead: Mapping[str, Tensor] | None = None) -> Tensor:
        """Generated weights: ``(n_out,)`` for one embedding, ``(B, n_out)`` for ``(B, d)``.

        Args:
            emb: Conditioning embedding(s).
            ahead: Values to evaluate the parameters at, by name (e.g. ``theta + dtheta`` of a
                look-ahead; missing names: the parameter itself). Gradients flow to the
                parameters as for ``theta + detach(ahead - theta)``.
        """
        single = emb.dim() == 1
        e = emb.unsqueeze(0) if single else emb
        if self.chunk_size is not None:
            b, n_chunks = e.shape[0], self.chunk_emb.shape[0]
            chunk_emb: Tensor = self.chunk_emb
            if ahead and "chunk_emb" in ahead:
                chunk_emb = chunk_emb + (ahead["chunk_emb"] - chunk_emb).detach()
            h = torch.cat(
                [
                    e.unsqueeze(1).expand(b, n_chunks, e.shape[1]),
                    chunk_emb.unsqueeze(0).expand(b, n_chunks, chunk_emb.shape[1]),
                ],
                dim=2,
            )
        else:
            h = e
        for i, layer in enumerate(self.hidden):
            assert isinstance(layer, nn.Linear)
            h = self.act(linear(layer, h, ahead, f"hidden.{i}.", self.workspace))
        out = linear(self.out, h, ahead, "out.", self.workspace)
        out = out.reshape(e.shape[0], -1)[:, : self.n_out]
        out = out * self.scale + self.offset
        return out[0] if single else out
