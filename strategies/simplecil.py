"""SimpleCIL: class prototypes on a frozen pretrained backbone (Zhou et al., "Revisiting
Class-Incremental Learning with Pre-Trained Models: Generalizability and Adaptivity are All You
Need", arXiv:2303.07338, 2023; the ``simplecil`` learner of LAMDA-PILOT).

The backbone is never trained. After each experience, every class seen in it gets the mean of
its samples' features as prototype; the classifier is the cosine similarity between a sample's
feature and each prototype (the paper's cosine classifier with prototypes as weights), or the
negative Euclidean distance (nearest class mean). Class sums and counts are kept in float64,
so the prototypes do not depend on batch sizes and a class met again in a later experience
averages all its samples.
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

METRICS = ("cosine", "euclidean")


@dataclass
class SimpleCILConfig(StrategyConfig):
    """SimpleCIL settings.

    Attributes:
        metric: ``cosine`` (the paper's) or ``euclidean`` (nearest class mean).
        scale: Multiplies the cosine logits (argmax is unchanged; only the reported loss).
        feature_dtype: ``float64`` (exact, batch-size invariant) or ``float32`` features.
    """

    name: str = "simplecil"
    metric: str = "cosine"
    scale: float = 16.0
    feature_dtype: str = "float64"

    def validate(self) -> None:
        one_of("strategy", self, "metric", METRICS)
        one_of("strategy", self, "feature_dtype", FEATURE_DTYPES)
        positive("strategy", self, "scale")


@register_strategy("simplecil")
class SimpleCIL(FrozenFeatureStrategy[SimpleCILConfig]):
    """Prototype classifier on frozen features; the backbone and its head stay untouched."""

    config_cls = SimpleCILConfig
    test_setup = TINY_VIT_SETUP
    shard_reduced = ("sums", "counts")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        d = int(getattr(self.model, "feature_dim", 0)) or self._probe_dim()
        self.sums = torch.zeros(self.n_classes, d, dtype=torch.float64, device=self.device)
        self.counts = torch.zeros(self.n_classes, dtype=torch.float64, device=self.device)

    def _probe_dim(self) -> int:
        shape = self.context.stream.input_shape
        assert shape is not None
        return int(self.features(torch.zeros(1, *shape, device=self.device)).shape[1])

    def accumulate(self, feats: Tensor, y: Tensor) -> None:
        self.sums.index_add_(0, y, feats)
        self.counts += torch.bincount(y, minlength=self.n_classes).double()

    def fit(self, feats: Tensor, y: Tensor) -> None:
        """Prototypes are the running means: nothing to solve."""

    def prototypes(self) -> Tensor:
        """``[n_classes, D]`` class means (zeros for classes not seen yet)."""
        return self.sums / self.counts.clamp_min(1.0).unsqueeze(1)

    def scores(self, feats: Tensor) -> Tensor:
        protos = self.prototypes()
        if self.config.metric == "cosine":
            return self.config.scale * F.normalize(feats, dim=1) @ F.normalize(protos, dim=1).T
        # -||f - p||^2 per pair, computed per sample (no batched expansion tricks).
        return -((feats.unsqueeze(1) - protos.unsqueeze(0)) ** 2).sum(dim=2)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "sums": self.sums.clone(), "counts": self.counts.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.sums.copy_(state["sums"])
        self.counts.copy_(state["counts"])
