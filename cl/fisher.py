"""Fisher information estimators and the quadratic penalty shared by EWC-style regularisers.

Per-layer closed forms for ``nn.Linear`` (per-sample gradients from the layer's inputs and output
gradients, one batched matmul per pass) and a generic ``torch.func`` vmap estimator. See van de
Ven, "On the Computation of the Fisher Information in Continual Learning", ICLR Blogposts 2025.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jacrev, vmap

from cl import distributed
from cl.strategy import Batch
from cl.streams.base import TensorData

ESTIMATORS = ("exact", "sampled", "empirical", "batched")


def log_probs(logits: Tensor, classes: Tensor | None = None) -> Tensor:
    """Log-softmax in fp32, over ``classes`` only (their logits, in that order) when given."""
    if classes is not None:
        logits = logits.index_select(-1, classes)
    return logits.float().log_softmax(-1)


def class_positions(labels: Tensor, classes: Tensor | None) -> Tensor:
    """Global labels as positions in ``classes`` (the columns of :func:`log_probs`)."""
    if classes is None:
        return labels
    pos = torch.full((int(classes.max()) + 1,), -1, dtype=torch.long, device=labels.device)
    pos[classes] = torch.arange(len(classes), device=labels.device)
    out = pos[labels.clamp(max=len(pos) - 1)]
    if bool((out < 0).any()) or bool((labels >= len(pos)).any()):
        raise ValueError("a label is outside the classes the Fisher is computed over")
    return out


def chunks(data: TensorData, size: int, *, task_ids: bool) -> Iterator[Batch]:
    """Consecutive, unshuffled batches of ``size`` samples."""
    for s in range(0, len(data), size):
        t = data.t[s : s + size] if task_ids else None
        yield Batch(data.x[s : s + size], data.y[s : s + size], t)


def estimate_fisher(
    model: nn.Module,
    data: TensorData,
    names: list[str],
    *,
    estimator: str,
    method: str,
    chunk_size: int,
    batch_size: int,
    task_ids: bool,
    classes: Tensor | None = None,
    generator: torch.Generator | None = None,
    dist: distributed.DistInfo = distributed.SINGLE,
) -> dict[str, Tensor]:
    """Diagonal Fisher of the parameters ``names`` on ``data`` (model already in eval mode).

    Args:
        model: Called as ``model(x, task_ids)``.
        data: The samples.
        names: Parameter names to estimate.
        estimator: One of :data:`ESTIMATORS` (see ``EWCConfig.estimator``).
        method: ``auto`` (closed form for Linear layers where it applies) or ``vmap``.
        chunk_size: Samples per pass (bounds memory).
        batch_size: Minibatch size of the ``batched`` estimator.
        task_ids: Give the model the samples' task ids.
        classes: The predictive distribution is the softmax over these classes' logits (None:
            every output); the exact estimator sums over them, labels must lie among them.
        generator: Draws the labels of the ``sampled`` estimator.
        dist: A distributed run's ranks share the passes round-robin and sum their parts (the
            ``sampled`` estimator draws its labels in sequence: every rank does every pass).
    """
    params = dict(model.named_parameters())
    out = {n: torch.zeros_like(params[n], dtype=torch.float32) for n in names}
    if estimator == "batched":
        # Several minibatches per pass: the same minibatches as a loop over batch_size, but
        # Linear layers get every minibatch's mean gradient from one batched matmul.
        per_pass = batch_size * max(1, chunk_size // batch_size)
        n_batches = 0
        for k, b in enumerate(chunks(data, per_pass, task_ids=task_ids)):
            n_batches += -(-len(b.y) // batch_size)  # every rank counts all minibatches
            if k % dist.world_size != dist.rank:
                continue
            y = class_positions(b.y, classes)
            if method == "auto" and linear_batched_fisher(
                model, names, b, batch_size, out, labels=y, classes=classes
            ):
                continue
            for start in range(0, len(b.y), batch_size):
                sl = slice(start, start + batch_size)
                tids = None if b.task_ids is None else b.task_ids[sl]
                logp = log_probs(model(b.x[sl], tids), classes)
                loss = -_mean_log_likelihood(logp, y[sl])
                grads = torch.autograd.grad(loss, [params[n] for n in names], allow_unused=True)
                for n, g in zip(names, grads, strict=True):
                    if g is not None:
                        out[n] += g.float().pow(2)
        distributed.sum_tensors(out.values(), dist)
        return {n: f / max(n_batches, 1) for n, f in out.items()}
    if estimator == "sampled":
        dist = distributed.SINGLE
    for b in distributed.owned(chunks(data, chunk_size, task_ids=task_ids), dist):
        labels = None  # exact: expectation over every class
        if estimator == "empirical":
            labels = class_positions(b.y, classes)
        elif estimator == "sampled":
            with torch.no_grad():
                probs = log_probs(model(b.x, b.task_ids), classes).exp().cpu()
            labels = torch.multinomial(probs, 1, generator=generator).squeeze(1).to(b.y.device)
        done = method == "auto" and linear_fisher(model, names, b, labels, out, classes=classes)
        if not done:
            vmap_fisher(model, names, b, labels, out, classes=classes)
    distributed.sum_tensors(out.values(), dist)
    return {n: f / len(data) for n, f in out.items()}


def _mean_log_likelihood(logp: Tensor, y: Tensor) -> Tensor:
    """Mean log-likelihood of the labels ``y`` under ``logp`` (``[B, C]``, or ``[B, V, L]``
    with token labels ``[B, L]`` of a language model, where ``-100`` marks unlabelled tokens)."""
    if y.dim() == 1:
        return logp.gather(1, y[:, None]).mean()
    valid = y != -100
    ll = logp.gather(1, y.clamp(min=0)[:, None]).squeeze(1)
    return (ll * valid).sum() / valid.sum().clamp(min=1)


class LinearIO(NamedTuple):
    owner: dict[str, tuple[nn.Linear, str]]  # parameter name -> (layer, "weight" | "bias")
    layers: list[nn.Linear]
    inputs: dict[nn.Linear, Tensor]
    outputs: list[Tensor]  # in the order of ``layers``, in the graph of ``logp``
    logp: Tensor


def linear_io(
    model: nn.Module, names: list[str], b: Batch, classes: Tensor | None = None
) -> LinearIO | None:
    """One forward recording each Linear layer's input and output (None: closed form N/A)."""
    owner: dict[str, tuple[nn.Linear, str]] = {}
    for mname, mod in model.named_modules():
        for pname, _ in mod.named_parameters(recurse=False):
            full = f"{mname}.{pname}" if mname else pname
            if full in names:
                if not isinstance(mod, nn.Linear):
                    return None
                owner[full] = (mod, pname)
    seen: dict[nn.Linear, list[tuple[Tensor, Tensor]]] = {}

    def hook(mod: nn.Module, inp: tuple[Tensor, ...], output: Tensor) -> None:
        seen.setdefault(mod, []).append((inp[0].detach(), output))  # type: ignore[arg-type]

    mods = {m for m, _ in owner.values()}
    handles = [m.register_forward_hook(hook) for m in mods]
    try:
        with torch.enable_grad():
            logp = log_probs(model(b.x, b.task_ids), classes)
    finally:
        for h in handles:
            h.remove()
    if any(len(v) != 1 or v[0][0].dim() != 2 for v in seen.values()) or set(seen) != mods:
        return None  # a layer used twice, on sequences, or not at all: use torch.func
    layers = list(seen)
    inputs = {m: seen[m][0][0].float() for m in layers}
    return LinearIO(owner, layers, inputs, [seen[m][0][1] for m in layers], logp)


def linear_fisher(
    model: nn.Module,
    names: list[str],
    b: Batch,
    labels: Tensor | None,
    out: dict[str, Tensor],
    *,
    classes: Tensor | None = None,
) -> bool:
    """Per-sample squared gradients of ``nn.Linear`` layers in closed form; False if N/A.

    For a linear layer on 2-D inputs, sample n's weight gradient is ``delta_n a_n^T``, so the
    sum of its squares over samples is ``(delta^2)^T (a^2)``: one matmul per layer. The
    per-sample output gradients ``delta`` come from one backward of the summed loss (samples
    are independent in eval mode), or one vmapped backward per class for the exact Fisher.
    """
    io = linear_io(model, names, b, classes)
    if io is None:
        return False
    owner, layers, inputs, outputs, logp = io
    if labels is not None:
        deltas = torch.autograd.grad(-logp.gather(1, labels[:, None]).sum(), outputs)
        sq = [d.float().pow(2) for d in deltas]
    else:
        n_cls = logp.shape[1]
        probs = logp.detach().exp()
        eye = torch.eye(n_cls, device=logp.device).unsqueeze(1).expand(n_cls, *logp.shape)
        deltas = torch.autograd.grad(logp, outputs, grad_outputs=eye, is_grads_batched=True)
        # sum_c p_c delta_c^2 for each sample (probs are (N, C), deltas (C, N, out)).
        sq = [torch.einsum("nc,cno->no", probs, d.float().pow(2)) for d in deltas]
    by_mod = dict(zip(layers, sq, strict=True))
    for full, (mod, pname) in owner.items():
        s = by_mod[mod]
        out[full] += s.T @ inputs[mod].pow(2) if pname == "weight" else s.sum(0)
    return True


def linear_batched_fisher(
    model: nn.Module,
    names: list[str],
    b: Batch,
    bs: int,
    out: dict[str, Tensor],
    *,
    labels: Tensor | None = None,
    classes: Tensor | None = None,
) -> bool:
    """Squared minibatch-mean gradients of ``nn.Linear`` layers for the consecutive minibatches
    of ``bs`` samples in ``b`` (the last may be shorter), from one forward and one backward;
    False if the closed form is N/A.

    Minibatch k's weight gradient is ``sum_{n in k} delta_n a_n^T`` with ``delta_n`` the
    gradient of ``loss_n / |k|`` at the layer's output: a batched matmul over minibatches.
    """
    io = linear_io(model, names, b, classes)
    if io is None:
        return False
    owner, layers, inputs, outputs, logp = io
    y = b.y if labels is None else labels
    n = len(b.y)
    full = n - n % bs
    # (first sample, minibatches, minibatch size): the full minibatches, then the remainder.
    runs = [(0, full // bs, bs)] if full else []
    runs += [(full, 1, n - full)] if n > full else []
    weight = torch.cat([logp.new_full((k * size,), 1.0 / size) for _, k, size in runs])
    nll = -(logp.gather(1, y[:, None]).squeeze(1) * weight).sum()
    deltas = dict(zip(layers, torch.autograd.grad(nll, outputs), strict=True))
    for name, (mod, pname) in owner.items():
        d, a = deltas[mod].float(), inputs[mod]
        for start, k, size in runs:
            dk = d[start : start + k * size].reshape(k, size, -1)
            if pname == "weight":
                ak = a[start : start + k * size].reshape(k, size, -1)
                out[name] += torch.bmm(dk.transpose(1, 2), ak).pow(2).sum(0)
            else:
                out[name] += dk.sum(1).pow(2).sum(0)
    return True


def vmap_fisher(
    model: nn.Module,
    names: list[str],
    b: Batch,
    labels: Tensor | None,
    out: dict[str, Tensor],
    *,
    classes: Tensor | None = None,
) -> None:
    """Per-sample squared gradients with ``torch.func`` (functional_call + vmap(grad))."""
    params = {n: p.detach() for n, p in model.named_parameters() if n in names}
    rest = {n: p.detach() for n, p in model.named_parameters() if n not in params}
    rest.update(dict(model.named_buffers()))
    # Task ids enter as a plain tensor per chunk: heads pick rows by value, which vmap cannot
    # trace, so chunks are split by task id.
    groups = [None] if b.task_ids is None else torch.unique(b.task_ids).tolist()
    for t in groups:
        rows = slice(None) if t is None else (b.task_ids == t).nonzero(as_tuple=True)[0]
        tids = None if t is None else torch.full((1,), t, device=b.x.device)

        def logp_one(p: dict[str, Tensor], x: Tensor, tids: Tensor | None = tids) -> Tensor:
            logits = functional_call(model, (p, rest), (x.unsqueeze(0), tids))
            return log_probs(logits, classes)[0]

        x = b.x[rows]
        if labels is not None:
            nll = lambda p, x, y: -logp_one(p, x).gather(0, y.view(1)).sum()  # noqa: E731
            g = vmap(grad(nll), in_dims=(None, 0, 0))(params, x, labels[rows])
            for n in names:
                out[n] += g[n].float().pow(2).sum(0)
        else:
            with torch.no_grad():
                probs = vmap(logp_one, in_dims=(None, 0))(params, x).exp()
            jac = vmap(jacrev(logp_one), in_dims=(None, 0))(params, x)  # (N, C, *shape)
            for n in names:
                j2 = jac[n].float().pow(2).flatten(2)
                out[n] += torch.einsum("nc,ncp->p", probs, j2).view_as(out[n])


def add_penalty_grad(scale: Tensor, shift: Tensor, p: Tensor) -> None:
    """``grad += scale * theta - shift`` = ``ewc_lambda * A (theta - m)``."""
    if p.grad is not None:
        p.grad.addcmul_(scale, p.detach()).sub_(shift)


class ImplicitPenaltyGrad:
    """Post-accumulate-grad hook: ``grad <- (grad + ewc_lambda * A (theta - m)) /
    (1 + lr * ewc_lambda * A)`` with ``lr()`` the rate the coming optimizer step uses (so lr
    schedules and warm-up are followed; the factor is recomputed only when the rate changes).
    ``penalty=False`` keeps the division only: in a distributed run the ranks' gradients are
    summed, so one rank adds the penalty and every rank divides."""

    def __init__(
        self, scale: Tensor, shift: Tensor, lr: Callable[[], float], *, penalty: bool = True
    ) -> None:
        self.scale, self.shift, self.lr, self.penalty = scale, shift, lr, penalty
        self._lr: float | None = None
        self._inv = scale

    def __call__(self, p: Tensor) -> None:
        if p.grad is None:
            return
        lr = float(self.lr())
        if lr != self._lr:
            self._lr, self._inv = lr, 1.0 / (1.0 + lr * self.scale)
        if self.penalty:
            p.grad.addcmul_(self.scale, p.detach()).sub_(self.shift)
        p.grad.mul_(self._inv)


class Quadratic(torch.autograd.Function):
    """``c * sum_i A_i (p_i - m_i)^2`` and its gradient ``2 c A (p - m)`` in a few fused
    multi-tensor ops: the per-step cost of the penalty stays a small fraction of a step."""

    @staticmethod
    def forward(
        ctx: Any, c: float, imp: list[Tensor], anchor: list[Tensor], *params: Tensor
    ) -> Tensor:
        diff = torch._foreach_sub([p.detach().float() for p in params], anchor)
        weighted = torch._foreach_mul(diff, imp)
        ctx.save_for_backward(*weighted)
        ctx.c = c
        dots = [torch.dot(w.flatten(), d.flatten()) for w, d in zip(weighted, diff, strict=True)]
        return c * torch.stack(dots).sum()

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        grads = torch._foreach_mul(list(ctx.saved_tensors), grad_out * (2.0 * ctx.c))
        return (None, None, None, *grads)
