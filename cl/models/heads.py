"""Classification heads that always return logits over the global label space."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class SingleHead(nn.Module):
    """One linear layer over all classes (class_il and domain_il)."""

    def __init__(self, in_features: int, n_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, n_classes)

    def forward(self, h: Tensor, task_ids: Tensor | None = None) -> Tensor:
        return self.linear(h)


class MultiHead(nn.Module):
    """One linear layer per task over that task's classes.

    Logits of classes outside a sample's task are ``-inf``, so cross-entropy and argmax see
    only the task's classes. Without task ids every head is applied, which is only defined when
    tasks have disjoint classes (split streams).
    """

    def __init__(self, in_features: int, n_classes: int, task_classes: list[list[int]]) -> None:
        super().__init__()
        self.n_classes = n_classes
        self.heads = nn.ModuleList(nn.Linear(in_features, len(c)) for c in task_classes)
        for t, c in enumerate(task_classes):
            self.register_buffer(
                f"classes_{t}", torch.tensor(c, dtype=torch.long), persistent=False
            )
        flat = [c for cs in task_classes for c in cs]
        self.disjoint = len(flat) == len(set(flat))

    def classes(self, t: int) -> Tensor:
        return getattr(self, f"classes_{t}")

    def forward(self, h: Tensor, task_ids: Tensor | None = None) -> Tensor:
        out = h.new_full((h.shape[0], self.n_classes), float("-inf"))
        if task_ids is None:
            if not self.disjoint:
                raise ValueError("a multi-head model over overlapping tasks needs task ids")
            for t, head in enumerate(self.heads):
                out[:, self.classes(t)] = head(h).to(out.dtype)
            return out
        for t in torch.unique(task_ids).tolist():
            rows = (task_ids == t).nonzero(as_tuple=True)[0]
            logits = self.heads[t](h[rows]).to(out.dtype)
            out[rows.unsqueeze(1), self.classes(t).unsqueeze(0)] = logits
        return out
