"""Continual-learning metrics as pure functions of the accuracy matrix.

``R[i][j]`` is the accuracy on experience j's test set after training on experience i
(0-based, every j including future ones); ``T`` is the number of experiences.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Matrix = Sequence[Sequence[float]]


def _arr(r: Matrix) -> np.ndarray:
    a = np.asarray(r, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[0] > a.shape[1]:
        raise ValueError(f"accuracy matrix must be (rows <= T) x T, got shape {a.shape}")
    return a


def avg_acc(r: Matrix) -> float:
    """Mean accuracy over all experiences after the last row: mean_j R[-1][j]."""
    return float(_arr(r)[-1].mean())


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

    ``baseline[j]`` is the accuracy of the untrained model on experience j. Uses the rows
    present (j up to the number of rows - 1).
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


def all_metrics(r: Matrix, baseline: Sequence[float]) -> dict[str, float]:
    """The metrics of ``results.json`` for the rows of ``r`` present so far."""
    return {
        "avg_acc": avg_acc(r),
        "avg_incremental_acc": avg_incremental_acc(r),
        "forgetting": forgetting(r),
        "bwt": bwt(r),
        "fwt": fwt(r, baseline),
    }
