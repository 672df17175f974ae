"""Orthogonal LoRA subspaces: the regularisers of O-LoRA and a reproducible LoRA initialisation.

O-LoRA (Wang et al., "Orthogonal Subspace Learning for Language Model Continual Learning",
Findings of EMNLP 2023) keeps one LoRA adapter per task. The rows of an adapter's ``A`` span the
input subspace its update reads; the orthogonality loss pushes the new task's ``A`` away from the
previous tasks' ones, layer by layer:

    L_orth = sum_layers sum_{i < t} sum_{j, k} | (A_i A_t^T)_{jk} |

(the sum of absolute values of the overlaps, as in the reference implementation, where the
previous tasks' ``A`` are concatenated into one matrix: the same sum). ``L2`` is the sum of the
new adapter's parameter norms (``||A_t||_F + ||B_t||_F`` per layer).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn


def lora_layers(module: nn.Module) -> list[Any]:
    """The peft LoRA layers inside ``module`` (those that hold ``lora_A`` / ``lora_B``)."""
    from peft.tuners.lora import LoraLayer

    return [m for m in module.modules() if isinstance(m, LoraLayer)]


def orthogonality_loss(layers: list[Any], previous: list[str], current: str) -> Tensor | None:
    """``sum |A_prev A_cur^T|`` over ``layers`` and the ``previous`` adapters (None if none)."""
    total: Tensor | None = None
    for layer in layers:
        if current not in layer.lora_A:
            continue
        cur = layer.lora_A[current].weight
        for name in previous:
            if name in layer.lora_A:
                term = (layer.lora_A[name].weight @ cur.T).abs().sum()
                total = term if total is None else total + term
    return total


def l2_loss(params: list[nn.Parameter]) -> Tensor:
    """Sum of the Frobenius norms of ``params`` (the new adapter's ``A`` and ``B``)."""
    return torch.stack([p.norm() for p in params]).sum()


@torch.no_grad()
def init_lora_(layers: list[Any], name: str, gen: torch.Generator) -> None:
    """Initialise adapter ``name`` as peft does (``A`` Kaiming-uniform, ``B`` zero) from ``gen``.

    The draw does not touch the global random state, so an adapter added after a resume is
    identical to the one an uninterrupted run adds.
    """
    for layer in layers:
        if name not in layer.lora_A:
            continue
        a = layer.lora_A[name].weight
        bound = 1.0 / math.sqrt(a.shape[1])  # kaiming_uniform_(a=sqrt(5)): 1 / sqrt(fan_in)
        a.copy_(torch.rand(a.shape, generator=gen).mul_(2 * bound).sub_(bound).to(a))
        layer.lora_B[name].weight.zero_()
