"""Building blocks of queue-based prompt tuning (Q-tuning) and progressive prompts.

* :class:`ResidualMLP`: the residual reparameterisation ``p + MLP(p)`` of a prompt (Progressive
  Prompts, Razdaibiedina et al., ICLR 2023; reused by Q-tuning, Guo et al., NAACL Findings 2024).
* :class:`PromptQueue`: a queue of at most ``capacity`` prompts (``[L, D]`` each) with PCA-based
  eviction. Every task that used the queue keeps a small coefficient matrix ``A_t``
  (``m_t x n``) such that its prompts are ``A_t @ rows``; eviction replaces the ``C`` rows by the
  ``C - 1`` leading principal directions (scaled by their singular values) and maps every
  ``A_t`` into that basis, so old tasks read the best rank-``C - 1`` approximation of their
  prompts (Eckart-Young) instead of losing them.
* :func:`info_nce`: the InfoNCE lower bound on mutual information, used by Q-tuning's
  memory-retention regulariser.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F


class ResidualMLP(nn.Module):
    """``x + up(relu(down(x)))`` applied token-wise; ``up`` starts at zero (identity at init)."""

    def __init__(self, dim: int, bottleneck: int) -> None:
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        # Zero output layer: training starts from the raw prompt, and the MLP only adds what
        # the gradient asks for (a random residual would shift the prompt's scale at init).
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.up(torch.relu(self.down(x)))


class PromptQueue:
    """At most ``capacity`` prompts of shape ``[length, dim]``, shared by all tasks.

    Attributes:
        rows: ``[n, length, dim]`` stored prompts (original prompts or principal directions).
        coefs: Task id -> ``[m_t, n]`` coefficients; task ``t``'s prompts are ``coefs[t] @ rows``.
        dropped: Singular values discarded by each eviction, in order.
    """

    def __init__(self, *, capacity: int, length: int, dim: int) -> None:
        if capacity < 2:
            raise ValueError("a prompt queue needs capacity >= 2 (one old row plus the new one)")
        self.capacity = capacity
        self.length = length
        self.dim = dim
        self.rows = torch.zeros(0, length, dim)
        self.coefs: dict[int, Tensor] = {}
        self.dropped: list[float] = []

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    @property
    def full(self) -> bool:
        return len(self) >= self.capacity

    def to(self, device: torch.device) -> PromptQueue:
        self.rows = self.rows.to(device)
        self.coefs = {t: c.to(device) for t, c in self.coefs.items()}
        return self

    def push(self, prompt: Tensor, task: int) -> None:
        """Append ``prompt`` and record that ``task`` reads every row (the old ones and it)."""
        if self.full:
            raise RuntimeError(f"queue is full ({self.capacity} prompts): evict first")
        p = prompt.detach().reshape(1, self.length, self.dim).to(self.rows)
        self.rows = torch.cat([self.rows, p])
        n = len(self)
        self.coefs = {t: F.pad(c, (0, 1)) for t, c in self.coefs.items()}
        self.coefs[task] = torch.eye(n, device=self.rows.device, dtype=self.rows.dtype)

    def evict(self) -> float:
        """De-Q by PCA: keep the ``capacity - 1`` leading principal directions of the rows.

        The rows (flattened to ``[C, L * D]``) are factorised ``U S V^T``; the new rows are
        ``S_k V_k^T`` (``k = C - 1``) and each task's coefficients become ``A_t U_k``, so
        ``A_t rows`` is replaced by its projection onto the retained subspace. The error of
        task ``t``'s prompts is at most ``||A_t||_2 * sigma_C`` in Frobenius norm.

        Returns:
            ``sigma_C``, the discarded singular value.
        """
        k = self.capacity - 1
        flat = self.rows.reshape(len(self), -1).double()
        u, s, vh = torch.linalg.svd(flat, full_matrices=False)
        dropped = float(s[k:].norm()) if len(s) > k else 0.0
        new = (s[:k, None] * vh[:k]).to(self.rows.dtype)
        self.rows = new.reshape(k, self.length, self.dim)
        uk = u[:, :k].to(self.rows.dtype)
        self.coefs = {t: c @ uk for t, c in self.coefs.items()}
        self.dropped.append(dropped)
        return dropped

    def task_prompts(self, task: int) -> Tensor:
        """``[m_t * length, dim]`` tokens of ``task``'s prompts (oldest first)."""
        return torch.einsum("mn,nld->mld", self.coefs[task], self.rows).reshape(-1, self.dim)

    def nbytes(self) -> int:
        tensors = [self.rows, *self.coefs.values()]
        return sum(t.numel() * t.element_size() for t in tensors)

    def state_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows.clone(),
            "coefs": {t: c.clone() for t, c in self.coefs.items()},
            "dropped": list(self.dropped),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rows = state["rows"].to(self.rows.device)
        self.coefs = {int(t): c.to(self.rows.device) for t, c in state["coefs"].items()}
        self.dropped = list(state["dropped"])


def info_nce(a: Tensor, b: Tensor, tau: float) -> tuple[Tensor, Tensor]:
    """InfoNCE between paired rows of ``a`` and ``b`` with a cosine critic.

    Row ``i`` of ``a`` and of ``b`` are a positive pair, the other rows of ``b`` negatives
    (van den Oord et al., 2018). ``I(a; b) >= log B - loss`` (Poole et al., ICML 2019).

    Returns:
        (loss, the mutual-information lower bound in nats).
    """
    logits = F.normalize(a.float(), dim=1) @ F.normalize(b.float(), dim=1).T / tau
    target = torch.arange(len(a), device=a.device)
    loss = F.cross_entropy(logits, target)
    return loss, math.log(len(a)) - loss.detach()
