"""RanPAC: random projections and pre-trained models for continual learning (McDonnell et al.,
NeurIPS 2023, arXiv:2307.02251; reference code github.com/RanPAC/RanPAC).

Frozen features ``f`` (``D``) go through a fixed random projection ``W`` (``D x M``, Gaussian)
and a ReLU: ``h = relu(f W)``. Over every sample seen so far the strategy keeps the Gram matrix
``G = sum h h^T`` (``M x M``) and ``Q = sum h y^T`` (``M x C``, one-hot labels), and after each
experience solves the ridge regression ``W_o = (G + lambda I)^-1 Q``; logits are ``h W_o``.
Statistics and the solve are float64, so results are exact sums and do not depend on batch
sizes. ``lambda``: a fixed ``ridge`` value, or (``ridge: null``, the paper's procedure) the
value in ``10^-8 .. 10^8`` with the least mean squared error on the last 20% of the current
experience's samples when fitted on its first 80% (in the stream's order).

Not included: the paper's optional first-session adaptation of the backbone (its "Phase 1",
PETL on the first task); this is RanPAC on the untouched backbone (the "RP without Phase 1"
rows of the paper's ablation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from cl.frozen_features import FEATURE_DTYPES, FrozenFeatureStrategy
from cl.strategy import StrategyConfig, register_strategy
from cl.testing import TINY_VIT_SETUP
from cl.validation import one_of, positive

RIDGE_GRID = tuple(10.0**e for e in range(-8, 9))


@dataclass
class RanPACConfig(StrategyConfig):
    """RanPAC settings (defaults: the paper's, ``M = 10000``).

    Attributes:
        projection_dim: ``M``, width of the random projection (0: no projection, ridge
            regression on the features themselves, the paper's ablation).
        ridge: Fixed ``lambda`` (null: chosen per experience as in the paper).
        feature_dtype: ``float64`` (exact, batch-size invariant) or ``float32`` features.
    """

    name: str = "ranpac"
    projection_dim: int = 10000
    ridge: float | None = None
    feature_dtype: str = "float64"

    def validate(self) -> None:
        positive("strategy", self, "ridge")
        one_of("strategy", self, "feature_dtype", FEATURE_DTYPES)
        if self.projection_dim < 0:
            from cl.errors import ConfigError

            raise ConfigError(f"strategy.projection_dim must be >= 0, got {self.projection_dim}")


def select_ridge(h: Tensor, y1: Tensor) -> float:
    """The paper's ``lambda``: least validation MSE on the last 20% when fit on the first 80%."""
    n = int(h.shape[0] * 0.8)
    if n == 0 or n == h.shape[0]:
        return 1.0
    g = h[:n].T @ h[:n]
    q = h[:n].T @ y1[:n]
    eye = torch.eye(g.shape[0], dtype=g.dtype, device=g.device)
    losses = [
        float(F.mse_loss(h[n:] @ torch.linalg.solve(g + r * eye, q), y1[n:])) for r in RIDGE_GRID
    ]
    return RIDGE_GRID[min(range(len(losses)), key=losses.__getitem__)]


@register_strategy("ranpac")
class RanPAC(FrozenFeatureStrategy[RanPACConfig]):
    """Ridge regression on randomly projected frozen features; no gradient training."""

    config_cls = RanPACConfig
    test_setup = (*TINY_VIT_SETUP, "strategy.projection_dim=64")
    shard_reduced = ("gram", "q")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        c = self.config
        d = int(self.model.feature_dim)  # type: ignore[arg-type]
        m = c.projection_dim or d
        f64 = {"dtype": torch.float64, "device": self.device}
        # The projection is drawn from the run seed, so a resumed run redraws the same one.
        gen = self.generator(7919)
        self.w_rand = (
            torch.randn(d, m, generator=gen, dtype=torch.float64).to(self.device)
            if c.projection_dim
            else torch.zeros(0, **f64)
        )
        self.gram = torch.zeros(m, m, **f64)
        self.q = torch.zeros(m, self.n_classes, **f64)
        self.w_out = torch.zeros(m, self.n_classes, **f64)
        self.lam = torch.zeros((), **f64)

    def project(self, feats: Tensor) -> Tensor:
        """``h = relu(f W)`` (the features themselves with ``projection_dim: 0``)."""
        return F.relu(feats @ self.w_rand) if self.config.projection_dim else feats

    def accumulate(self, feats: Tensor, y: Tensor) -> None:
        h = self.project(feats)
        self.gram += h.T @ h
        self.q += h.T @ F.one_hot(y, self.n_classes).double()

    def fit(self, feats: Tensor, y: Tensor) -> None:
        c = self.config
        h = self.project(feats)
        lam = (
            c.ridge
            if c.ridge is not None
            else select_ridge(h, F.one_hot(y, self.n_classes).double())
        )
        eye = torch.eye(self.gram.shape[0], dtype=torch.float64, device=self.device)
        self.w_out = torch.linalg.solve(self.gram + lam * eye, self.q)
        self.lam.fill_(lam)

    def scores(self, feats: Tensor) -> Tensor:
        return self.project(feats) @ self.w_out

    def state_dict(self) -> dict[str, Any]:
        own = {k: getattr(self, k).clone() for k in ("w_rand", "gram", "q", "w_out", "lam")}
        return {**super().state_dict(), **own}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        for k in ("w_rand", "gram", "q", "w_out", "lam"):
            setattr(self, k, state[k].to(self.device).clone())
