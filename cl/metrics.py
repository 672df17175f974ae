"""Continual-learning metrics as pure functions of the accuracy matrix.

``R[i][j]`` is the accuracy on experience j's test set after training on experience i
(0-based, every j including future ones); ``T`` is the number of experiences. A matrix with
fewer rows than columns is a run in progress (or a partial one): every metric then uses the
rows present and the experiences seen so far.

Every result names its evaluation protocol (:data:`PROTOCOLS`): ``task_aware`` (task ids given
at test time, logits masked to the task's classes) or ``task_agnostic``. A metric that is
undefined under a protocol is ``None`` with a reason (:func:`undefined_metrics`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

Matrix = Sequence[Sequence[float]]


def _arr(r: Matrix) -> np.ndarray:
    a = np.asarray(r, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[0] > a.shape[1]:
        raise ValueError(f"accuracy matrix must be (rows <= T) x T, got shape {a.shape}")
    return a


TASK_AWARE = "task_aware"
TASK_AGNOSTIC = "task_agnostic"
PROTOCOLS = (TASK_AGNOSTIC, TASK_AWARE)

FWT_UNDEFINED_CLASS_IL = (
    "undefined in task-agnostic class_il: the prediction is taken among the classes seen so "
    "far, so R[j-1][j] is 0 by construction (see metrics_task_aware.fwt when the stream has "
    "task ids)"
)


def evaluation_protocol(scenario: str, *, task_ids_at_test: bool) -> str:
    """The protocol of a run's primary matrix.

    Args:
        scenario: ``class_il``, ``task_il`` or ``domain_il``.
        task_ids_at_test: The strategy is given task ids at test time.

    Returns:
        ``task_aware`` for task_il or a strategy given task ids, else ``task_agnostic``.
    """
    return TASK_AWARE if scenario == "task_il" or task_ids_at_test else TASK_AGNOSTIC


def undefined_metrics(scenario: str, evaluation: str) -> dict[str, str]:
    """Metrics undefined under ``evaluation`` on a ``scenario`` stream -> the reason.

    FWT compares R[j-1][j] with the untrained baseline b[j]; in task-agnostic class-IL the
    argmax is taken among the classes seen so far, which never include experience j's classes
    before it is trained, so R[j-1][j] = 0 whatever the strategy.
    """
    if scenario == "class_il" and evaluation == TASK_AGNOSTIC:
        return {"fwt": FWT_UNDEFINED_CLASS_IL}
    return {}


def avg_acc(r: Matrix) -> float:
    """Mean accuracy after the last row i over the experiences seen: mean_{j<=i} R[i][j].

    For a complete matrix (i = T-1) this is mean_j R[T-1][j]; for a run in progress it leaves
    out the experiences not trained yet.
    """
    a = _arr(r)
    return float(a[-1, : a.shape[0]].mean())


def avg_incremental_acc(r: Matrix) -> float:
    """mean_i ( mean_{j<=i} R[i][j] ) over the rows present."""
    a = _arr(r)
    return float(np.mean([a[i, : i + 1].mean() for i in range(a.shape[0])]))


def forgetting(r: Matrix) -> float:
    """Max-based forgetting (Chaudhry et al., "Riemannian Walk for Incremental Learning", 2018).

    mean_{j<T-1} ( max_{j<=l<T-1} R[l][j] - R[T-1][j] ), with T the number of rows; 0 for one
    row. Differs from Avalanche's first-minus-last forgetting.
    """
    a = _arr(r)
    t = a.shape[0]
    if t < 2:
        return 0.0
    return float(np.mean([a[j : t - 1, j].max() - a[t - 1, j] for j in range(t - 1)]))


def bwt(r: Matrix) -> float:
    """Backward transfer (Lopez-Paz & Ranzato, GEM, 2017): mean_{j<T-1} (R[T-1][j] - R[j][j])."""
    a = _arr(r)
    t = a.shape[0]
    if t < 2:
        return 0.0
    return float(np.mean([a[t - 1, j] - a[j, j] for j in range(t - 1)]))


def fwt(r: Matrix, baseline: Sequence[float]) -> float:
    """Forward transfer (Lopez-Paz & Ranzato 2017): mean_{j>=1} (R[j-1][j] - b[j]).

    ``baseline[j]`` is the accuracy of the untrained model on experience j, measured under the
    same protocol as ``r`` (same task ids, same class masking). Uses the rows present (j up to
    the number of rows - 1). Undefined in task-agnostic class-IL (:func:`undefined_metrics`).
    """
    a = _arr(r)
    b = np.asarray(baseline, dtype=np.float64)
    t = a.shape[0]
    if t < 2:
        return 0.0
    return float(np.mean([a[j - 1, j] - b[j] for j in range(1, t)]))


def first_minus_last_forgetting(r: Matrix) -> float:
    """Avalanche-style forgetting: mean_{j<T-1} (R[j][j] - R[T-1][j]) (= -BWT); for comparison."""
    return -bwt(r)


def nll_forgetting(perplexity: Matrix) -> float:
    """Forgetting of a perplexity matrix in nats per token: mean_{j<T-1} (log P[T-1][j] -
    log P[j][j]), the rise of each earlier task's negative log-likelihood from when it was
    learned to the end (lower is better; 0 for one row): :func:`bwt` of ``log P``."""
    return bwt(np.log(_arr(perplexity)))


METRICS = ("avg_acc", "avg_incremental_acc", "forgetting", "bwt", "fwt")


def all_metrics(
    r: Matrix, baseline: Sequence[float], *, undefined: Iterable[str] = ()
) -> dict[str, float | None]:
    """The metrics of ``results.json`` for the rows of ``r`` present so far.

    Args:
        r: The accuracy matrix (rows present so far).
        baseline: Accuracy of the untrained model on each experience, under the same protocol.
        undefined: Metrics to report as ``None`` (see :func:`undefined_metrics`).
    """
    skip = set(undefined)
    out: dict[str, float | None] = {
        "avg_acc": avg_acc(r),
        "avg_incremental_acc": avg_incremental_acc(r),
        "forgetting": forgetting(r),
        "bwt": bwt(r),
        "fwt": None if "fwt" in skip else fwt(r, baseline),
    }
    return out
