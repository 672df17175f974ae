"""Evaluation after each experience: one row of the accuracy matrices.

Two views:

* task-agnostic: the strategy predicts without task ids; in class_il the argmax is taken
  among the classes seen so far (all classes before any training), in domain_il and task_il
  among all classes;
* task-aware (when the stream has task ids): the strategy gets the task ids and logits are
  masked to the classes of the sample's task.

The primary matrix is task-aware for task_il streams and for strategies that need task ids
at test time (run on class_il/domain_il only with ``allow_task_oracle=true``), task-agnostic
otherwise; :func:`protocol` names it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from cl import distributed
from cl.metrics import evaluation_protocol
from cl.optim import class_mask
from cl.strategy import Strategy
from cl.streams.base import Experience, Stream, TensorData


def _shard(data: object, info: distributed.DistInfo) -> object:
    """This rank's slice of a test set (all of it in a single-process run)."""
    if not info.enabled:
        return data
    rows = distributed.shard_rows(len(data), info)  # type: ignore[arg-type]
    if isinstance(data, TensorData):
        return TensorData(data.x[rows], data.y[rows], data.t[rows])
    return torch.utils.data.Subset(data, range(len(data))[rows])  # type: ignore[arg-type]


def _batches(data: object, bs: int, device: torch.device) -> list[tuple[Tensor, Tensor, Tensor]]:
    if isinstance(data, TensorData):
        return [
            (data.x[s : s + bs], data.y[s : s + bs], data.t[s : s + bs])
            for s in range(0, len(data), bs)
        ]
    loader: torch.utils.data.DataLoader[Any] = torch.utils.data.DataLoader(
        data,  # type: ignore[arg-type]
        batch_size=bs,
        shuffle=False,
    )
    return [(x.to(device), y.to(device), t.to(device)) for x, y, t in loader]


def accuracy(
    strategy: Strategy[Any],
    exp: Experience,
    *,
    n_classes: int,
    batch_size: int,
    task_aware: bool,
    allowed_classes: Sequence[int] | None,
) -> float:
    """Accuracy of ``strategy`` on ``exp.test``.

    Args:
        task_aware: Give task ids to the strategy and mask logits to the task's classes.
        allowed_classes: Task-agnostic only: restrict the argmax to these classes (None: all).
    """
    hook = getattr(exp.test, "evaluate", None)
    if hook is not None:  # the data scores itself (text-to-text tasks: cl.evaluate_lm)
        return float(hook(strategy, batch_size=batch_size, task_aware=task_aware))
    with distributed.inference(strategy.model):
        device = strategy.device
        total = 0
        if task_aware:
            mask = class_mask(n_classes, exp.classes, device)
        elif allowed_classes is not None:
            mask = class_mask(n_classes, allowed_classes, device)
        else:
            mask = None
        correct_t = torch.zeros((), dtype=torch.long, device=device)
        info = strategy.context.dist
        for x, y, t in _batches(_shard(exp.test, info), batch_size, device):
            with strategy.autocast(evaluation=True):
                logits = strategy.predict(strategy.eval_input(x), t if task_aware else None)
            logits = logits.float()
            if mask is not None:
                logits = logits.masked_fill(~mask, float("-inf"))
            correct_t += (logits.argmax(dim=1) == y).sum()
            total += len(y)
        correct = int(correct_t)
        if info.enabled:  # each rank scored its slice: sum the counts
            correct, total = (int(v) for v in distributed.sum_over_ranks((correct, total), device))
        return correct / max(total, 1)


def evaluate_row(
    strategy: Strategy[Any],
    stream: Stream,
    *,
    trained_upto: int,
    batch_size: int,
) -> tuple[list[float] | None, list[float] | None]:
    """Accuracy on every experience after training on experience ``trained_upto`` (-1: untrained).

    Returns:
        (task-agnostic row or None, task-aware row or None). The task-agnostic row is None when
        the strategy needs task ids at test time; the task-aware one when the stream has none.
    """
    strategy.model.eval()
    seen: list[int] | None = None
    if stream.scenario == "class_il" and trained_upto >= 0:
        seen = sorted({c for e in stream.experiences[: trained_upto + 1] for c in e.classes})
    agnostic = None
    # task_il is defined by task ids at test time (a multi-head model over tasks that share
    # classes cannot even predict without them), so it has no task-agnostic matrix.
    if not strategy.requires_task_ids(strategy.config) and stream.scenario != "task_il":
        agnostic = [
            accuracy(
                strategy,
                e,
                n_classes=stream.n_classes,
                batch_size=batch_size,
                task_aware=False,
                allowed_classes=seen,
            )
            for e in stream.experiences
        ]
    aware = None
    if stream.has_task_ids:
        aware = [
            accuracy(
                strategy,
                e,
                n_classes=stream.n_classes,
                batch_size=batch_size,
                task_aware=True,
                allowed_classes=None,
            )
            for e in stream.experiences
        ]
    return agnostic, aware


def protocol(strategy: Strategy[Any], scenario: str) -> str:
    """``task_aware`` or ``task_agnostic``: the protocol of the run's primary matrix."""
    return evaluation_protocol(
        scenario, task_ids_at_test=strategy.requires_task_ids(strategy.config)
    )


def primary(scenario: str, agnostic: list[float] | None, aware: list[float] | None) -> list[float]:
    """The row of the scenario's primary matrix."""
    if scenario == "task_il" or agnostic is None:
        if aware is None:
            raise ValueError("no task-aware row for a task_il stream")
        return aware
    return agnostic
