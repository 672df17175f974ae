"""Routing among a bank of per-partition adapters by their frozen-backbone embeddings.

Used by the ``adapters`` strategy (AdapterSwap: Fleshman et al., "AdapterSwap: Continuous
Training of LLMs with Data Removal and Access-Control Guarantees", 2024). Every partition keeps
its own routing entry, fitted on its own frozen-backbone embeddings only, so removing a partition
removes all of its influence on routing: the scores of the other partitions do not change.

Routing entries:

* ``gmm``: a Gaussian mixture per partition, up to ``components`` components per class (hard EM:
  k-means within each class, then a full covariance per component, shrunk towards a scaled
  identity by at least ``shrinkage`` and by the Ledoit-Wolf estimate, which is large in
  few-shot partitions). A query's score is its log-likelihood under the partition's mixture.
* ``prototypes``: k-means centres per class; the score is minus the squared distance to the
  nearest centre.
* ``knn``: a retriever (AdapterSwap's setting): the partition's embeddings themselves; the score
  is minus the squared distance to the nearest one.

Outputs of several partitions are mixed as distributions over their second dimension (classes,
or a language model's vocabulary at every target position: next-token distributions).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

ROUTERS = ("gmm", "prototypes", "knn")


def kmeans(z: Tensor, k: int, *, generator: torch.Generator, iters: int = 25) -> Tensor:
    """Cluster assignments of the rows of ``z`` into ``k`` clusters (Lloyd's algorithm)."""
    k = max(1, min(k, len(z)))
    centres = z[torch.randperm(len(z), generator=generator)[:k].to(z.device)].clone()
    assign = torch.zeros(len(z), dtype=torch.long, device=z.device)
    for _ in range(iters):
        assign = torch.cdist(z, centres).argmin(dim=1)
        for j in range(k):
            members = z[assign == j]
            if len(members):
                centres[j] = members.mean(dim=0)
    return assign


def ledoit_wolf_shrinkage(x: Tensor) -> float:
    """Ledoit-Wolf optimal shrinkage of the covariance of centred rows ``x`` towards
    ``mu * I`` (Ledoit & Wolf, "A well-conditioned estimator for large-dimensional covariance
    matrices", 2004)."""
    n, d = x.shape
    x2 = x**2
    var = x2.sum(dim=0) / n
    mu = var.sum() / d
    beta_ = (x2.T @ x2).sum()
    delta_ = ((x.T @ x) ** 2).sum() / n**2
    beta = (beta_ / n - delta_) / (d * n)
    delta = (delta_ - 2 * mu * var.sum() + d * mu**2) / d
    if delta <= 0:
        return 1.0
    return float(torch.clamp(torch.minimum(beta, delta) / delta, 0.0, 1.0))


@dataclass
class RoutingEntry:
    """One partition's embedding model: component means, Cholesky factors and log-weights."""

    means: Tensor
    chol: Tensor | None
    log_weights: Tensor

    def score(self, z: Tensor) -> Tensor:
        """Log-likelihood (gmm) or minus nearest squared distance (prototypes) of each row."""
        z = z.double()
        if self.chol is None:
            return -(torch.cdist(z, self.means) ** 2).min(dim=1).values
        diff = (z.unsqueeze(0) - self.means.unsqueeze(1)).transpose(1, 2)  # (K, d, n)
        sol = torch.linalg.solve_triangular(self.chol, diff, upper=False)
        log_det = torch.log(torch.diagonal(self.chol, dim1=1, dim2=2)).sum(dim=1)
        ll = -0.5 * (sol**2).sum(dim=1) - log_det.unsqueeze(1) + self.log_weights.unsqueeze(1)
        return torch.logsumexp(ll, dim=0)

    def state(self) -> dict[str, Tensor | None]:
        return {"means": self.means, "chol": self.chol, "log_weights": self.log_weights}

    def nbytes(self) -> int:
        ts = [t for t in (self.means, self.chol, self.log_weights) if t is not None]
        return sum(t.element_size() * t.nelement() for t in ts)


def fit_entry(
    z: Tensor,
    y: Tensor,
    *,
    kind: str = "gmm",
    components: int = 3,
    shrinkage: float = 0.05,
    generator: torch.Generator,
) -> RoutingEntry:
    """Fit one partition's routing entry on its embeddings ``z`` with class labels ``y``."""
    if kind not in ROUTERS:
        raise ValueError(f"unknown router {kind!r}; valid: {', '.join(ROUTERS)}")
    z = z.double()
    if kind == "knn":  # the embeddings themselves, equally weighted
        return RoutingEntry(
            means=z, chol=None, log_weights=torch.full((len(z),), -math.log(len(z)))
        )
    means, chols, counts = [], [], []
    d = z.shape[1]
    for c in torch.unique(y).tolist():
        zc = z[y == c]
        # A full covariance needs about d samples: few-shot classes get a single component.
        k = components if kind == "prototypes" else min(components, max(1, len(zc) // d))
        assign = kmeans(zc, k, generator=generator)
        for j in torch.unique(assign).tolist():
            members = zc[assign == j]
            mu = members.mean(dim=0)
            means.append(mu)
            counts.append(len(members))
            if kind == "gmm":
                centred = members - mu
                cov = centred.T @ centred / len(members)
                lam = max(shrinkage, ledoit_wolf_shrinkage(centred)) if len(members) > 1 else 1.0
                # Shrinkage keeps the covariance well conditioned when a component is small.
                target = (cov.trace() / d).clamp_min(1e-6) * torch.eye(d, dtype=cov.dtype)
                chols.append(torch.linalg.cholesky((1 - lam) * cov + lam * target))
    n = torch.tensor(counts, dtype=torch.float64)
    return RoutingEntry(
        means=torch.stack(means),
        chol=torch.stack(chols) if chols else None,
        log_weights=torch.log(n / n.sum()),
    )


class PartitionRouter:
    """Ranks partitions for a query by their routing entries, among those a caller may use."""

    def __init__(self) -> None:
        self.entries: dict[str, RoutingEntry] = {}

    def add(self, name: str, entry: RoutingEntry) -> None:
        self.entries[name] = entry

    def remove(self, name: str) -> None:
        self.entries.pop(name, None)

    def scores(self, z: Tensor, names: Sequence[str]) -> Tensor:
        """``(n, len(names))`` scores; each column depends on that partition's entry only."""
        cols = [self.entries[nm].score(z.to("cpu")) for nm in names]
        return torch.stack(cols, dim=1).to(z.device)

    def route(
        self, z: Tensor, names: Sequence[str], k: int, temperature: float = 1.0
    ) -> tuple[Tensor, Tensor]:
        """Top-``k`` partitions of each row (indices into ``names``) and their mixture weights.

        Weights are the softmax of the top-``k`` scores divided by ``temperature`` (for ``gmm``
        scores, the posterior over the chosen partitions with equal priors).
        """
        s = self.scores(z, names)
        top = s.topk(min(k, len(names)), dim=1)
        return top.indices, torch.softmax(top.values / temperature, dim=1)

    @torch.no_grad()
    def topk_accuracy(
        self, data: Sequence[tuple[Tensor, str]], ks: Sequence[int] = (1, 3)
    ) -> dict[int, float]:
        """Fraction of queries (embeddings, owning partition) whose owner is in the top-k."""
        names = list(self.entries)
        hits, total = dict.fromkeys(ks, 0), 0
        for z, owner in data:
            order = self.scores(z, names).argsort(dim=1, descending=True)
            own = names.index(owner)
            for k in ks:
                hits[k] += int((order[:, :k] == own).any(dim=1).sum())
            total += len(z)
        return {k: h / max(total, 1) for k, h in hits.items()}

    def state_dict(self) -> dict[str, Any]:
        return {nm: e.state() for nm, e in self.entries.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.entries = {nm: RoutingEntry(**s) for nm, s in state.items()}

    def nbytes(self) -> int:
        return sum(e.nbytes() for e in self.entries.values())


def route_and_mix(
    x: Tensor,
    z: Tensor,
    names: Sequence[str],
    router: PartitionRouter,
    logits: Callable[[str, Tensor], Tensor],
    *,
    top_k: int = 1,
    temperature: float = 1.0,
) -> Tensor:
    """Outputs of each row of ``x`` from its top-``k`` partitions among ``names``.

    Top-1 returns the chosen adapter's own logits; with ``k > 1`` the chosen adapters'
    predictions form the output mixture ``log sum_k w_k softmax(z_k)`` over the outputs' second
    dimension (no weight merging).

    Args:
        x: Inputs.
        z: Their frozen-backbone embeddings (what the router scores).
        names: The partitions a row may be routed to (only these are ever evaluated).
        router: The routing entries.
        logits: ``logits(name, rows)``: the outputs of partition ``name`` on ``rows``.
        top_k: Partitions mixed per row.
        temperature: Temperature of the mixture weights.
    """
    idx, w = router.route(z, names, top_k, temperature)
    k = idx.shape[1]
    parts: Tensor | None = None
    for j, name in enumerate(names):
        for slot in range(k):
            rows = idx[:, slot] == j
            if rows.any():
                out = logits(name, x[rows])
                if parts is None:
                    parts = out.new_full((k, len(x), *out.shape[1:]), float("-inf"))
                parts[slot, rows] = out if k == 1 else torch.log_softmax(out, dim=1)
    assert parts is not None
    if k == 1:
        return parts[0]
    logw = torch.log(w.T.to(parts.dtype)).view(k, len(x), *[1] * (parts.dim() - 2))
    return torch.logsumexp(parts + logw, dim=0)


def predict_routed(
    x: Tensor,
    task_ids: Tensor | None,
    names: Sequence[str],
    *,
    task_of: Mapping[int, str],
    router: PartitionRouter,
    features: Callable[[Tensor], Tensor],
    logits: Callable[[str, Tensor], Tensor],
    top_k: int = 1,
    temperature: float = 1.0,
) -> Tensor:
    """Outputs of the partitions ``names`` only: rows whose task id has a partition among them
    go to it (the oracle); the others are routed among ``names`` (:func:`route_and_mix`).

    Args:
        x: Inputs.
        task_ids: Their task ids, or None (route every row).
        names: The partitions that may be used.
        task_of: Task id -> its partition, among ``names``.
        router: The routing entries.
        features: Frozen-backbone embeddings of inputs (what the router scores).
        logits: ``logits(name, rows)``: the outputs of partition ``name`` on ``rows``.
        top_k: Partitions mixed per routed row.
        temperature: Temperature of the mixture weights.
    """
    out: Tensor | None = None
    parts: list[tuple[Tensor, Tensor]] = []
    rest = torch.ones(len(x), dtype=torch.bool, device=x.device)
    for t in [] if task_ids is None else torch.unique(task_ids).tolist():
        if t in task_of:
            rows = task_ids == t
            parts.append((rows, logits(task_of[t], x[rows])))
            rest &= ~rows
    if rest.any():
        xr = x[rest]
        mixed = route_and_mix(
            xr, features(xr), names, router, logits, top_k=top_k, temperature=temperature
        )
        parts.append((rest, mixed))
    for rows, part in parts:
        if out is None:
            out = part.new_empty((len(x), *part.shape[1:]))
        out[rows] = part
    assert out is not None
    return out


def route_rows(
    z: Tensor | None,
    task_ids: Tensor | None,
    names: Sequence[str],
    *,
    task_of: Mapping[int, str],
    router: PartitionRouter,
    top_k: int = 1,
    temperature: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Partitions (indices into ``names``, ``[n, k]``) and mixture weights of every row, as
    :func:`predict_routed` chooses them: a row whose task id has a partition among ``names``
    gets that one alone (weight 1 in every slot's sum); the others are routed by ``z``.

    Args:
        z: The rows' frozen-backbone embeddings (None: every row has an oracle partition).
        task_ids: Their task ids, or None.
        names: The partitions that may be used.
        task_of: Task id -> its partition, among ``names``.
        router: The routing entries.
        top_k: Partitions mixed per routed row.
        temperature: Temperature of the mixture weights.
    """
    n = len(task_ids) if z is None else len(z)  # type: ignore[arg-type]
    k = min(top_k, len(names))
    idx = torch.zeros(n, k, dtype=torch.long)
    w = torch.zeros(n, k)
    rest = torch.ones(n, dtype=torch.bool)
    if task_ids is not None:
        t = task_ids.cpu()
        for tid in torch.unique(t).tolist():
            if tid in task_of:
                rows = t == tid
                idx[rows] = names.index(task_of[tid])
                w[rows, 0] = 1.0
                rest &= ~rows
    if rest.any():
        assert z is not None, "rows without an oracle partition need embeddings"
        ri, rw = router.route(z[rest.to(z.device)], names, k, temperature)
        idx[rest], w[rest] = ri.cpu(), rw.cpu().float()
    return idx, w
