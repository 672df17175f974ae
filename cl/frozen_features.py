"""Strategies that fit a closed-form classifier on a frozen backbone's features.

Prototype classifiers (SimpleCIL, Zhou et al. 2023) and ridge regression on random features
(RanPAC, McDonnell et al. 2023) train nothing by gradient. :class:`FrozenFeatureStrategy`
replaces the base loop's optimisation by one pass over each experience, in the stream's order:
it extracts the frozen features of every batch, hands them (in float64) to
:meth:`FrozenFeatureStrategy.accumulate`, and calls :meth:`FrozenFeatureStrategy.fit` at the
end. ``train.epochs`` has no effect (a second pass would add the same statistics again); the
reported loss is the cross-entropy of the fitted classifier on the experience's training
features.

Exactness: a float32 backbone's features of a sample change in the last bits with the batch
it is computed in (matrix kernels block differently), enough to flip near-ties. With
``feature_dtype: float64`` (the default) features come from a float64 copy of the frozen
backbone (the model itself is untouched), and everything after it is float64 too, so the
classifier's predictions do not depend on the evaluation batch size; ``float32`` is faster
(and uses the model as it is) at the price of that guarantee.

Distributed runs (torchrun): each rank extracts the features of its strided share of every
batch and accumulates its statistics from them; the statistics (``shard_reduced``) are summed
over the ranks, and the features are gathered in the stream's order for :meth:`fit`, so every
rank holds the same classifier, the one of a single process up to float64 summation order.
``train.distributed=fsdp`` needs ``feature_dtype: float32`` (a float64 copy of a sharded
backbone would be whole on every rank).
"""

from __future__ import annotations

import copy
from abc import abstractmethod
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from cl import distributed
from cl.errors import ConfigError
from cl.models.prompting import PromptableBackbone
from cl.strategy import ExperienceStats, Strategy, StrategyConfig
from cl.streams.base import Experience

C = TypeVar("C", bound=StrategyConfig)


FEATURE_DTYPES = ("float64", "float32")


class FrozenFeatureStrategy(Strategy[C]):
    """Base of closed-form classifiers on the model's frozen ``backbone`` features.

    Subclasses implement :meth:`accumulate`, :meth:`fit` and :meth:`scores`, and list the
    statistics :meth:`accumulate` adds to in ``shard_reduced`` (tensor attributes, read by
    their name after every pass); their config has
    ``feature_dtype`` (``float64`` or ``float32``).
    """

    own_loop_distributed = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        backbone = getattr(self.model, "backbone", None)
        if not isinstance(backbone, nn.Module):
            raise ConfigError(f"strategy {self.name!r} needs a model with a feature backbone")
        if isinstance(backbone, PromptableBackbone):
            backbone.freeze()  # also keeps a transformer in eval mode
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.n_classes = self.context.stream.n_classes
        fp64 = getattr(self.config, "feature_dtype", "float64") == "float64"
        if self.context.dist.enabled and self.context.train.distributed == "fsdp" and fp64:
            raise ConfigError(
                f"strategy {self.name!r} with train.distributed=fsdp needs "
                "strategy.feature_dtype=float32 (the float64 features come from a whole float64 "
                "copy of the backbone on every rank); or use train.distributed=ddp"
            )
        self._backbone64: nn.Module | None = None

    # --------------------------------------------------------------- subclass API
    @abstractmethod
    def accumulate(self, feats: Tensor, y: Tensor) -> None:
        """Add a batch of float64 features ``[B, D]`` with labels ``[B]`` to the statistics."""

    @abstractmethod
    def fit(self, feats: Tensor, y: Tensor) -> None:
        """Refit the classifier after an experience (``feats``, ``y``: all of its samples)."""

    @abstractmethod
    def scores(self, feats: Tensor) -> Tensor:
        """float64 logits ``[B, n_classes]`` of float64 features."""

    # -------------------------------------------------------------------- loop
    def features(self, x: Tensor) -> Tensor:
        """The frozen backbone's features of ``x``, in float64 (see the module doc)."""
        self.model.eval()
        backbone: Any = self.model.backbone
        if getattr(self.config, "feature_dtype", "float64") == "float64":
            if self._backbone64 is None:  # derived from the frozen model: not state
                self._backbone64 = copy.deepcopy(backbone).double().eval()
            backbone, x = self._backbone64, x.double()
        with torch.no_grad():  # no autocast: the classifier is exact
            return backbone(x).double()

    def trainable_parameters(self) -> Iterable[nn.Parameter]:
        return []

    def train_experience(
        self, exp: Experience, *, on_step: Callable[[int, int, Tensor], None] | None = None
    ) -> ExperienceStats:
        """One ordered pass: accumulate the statistics of ``exp``, then refit the classifier."""
        self.before_experience(exp)
        dist, bs = self.context.dist, self.context.train.batch_size
        n = len(exp.train)  # type: ignore[arg-type]
        feats, labels, rows = [], [], []
        steps = samples = 0
        # Distributed: this experience's statistics start from zero on every rank (only they
        # are summed over the ranks), then join the totals of the earlier experiences.
        totals = {k: getattr(self, k) for k in self.shard_reduced} if dist.enabled else {}
        for k, t in totals.items():
            setattr(self, k, torch.zeros_like(t))
        for batch in self.iterate(exp.train, epoch=0, exp_index=exp.index, shuffle=False):
            n_batch = min(bs, n - steps * bs)  # the global batch (a rank sees its shard)
            shard, share = distributed.shard_batch(batch, dist)
            if share > 0:
                f = self.features(shard.x)
                self.accumulate(f, shard.y)
                feats.append(f)
                labels.append(shard.y)
                rows.append(steps * bs + distributed.shard_rows(n_batch, dist).start)
            steps += 1
            samples += n_batch
            if on_step is not None:
                on_step(steps, n_batch, torch.zeros((), device=self.device))
        if dist.enabled:
            distributed.reduce_shard_state(self, dist)
            for k, t in totals.items():
                setattr(self, k, t.add_(getattr(self, k)))
            f_all, y_all = self._gather(feats, labels, rows, n)
        else:
            f_all, y_all = torch.cat(feats), torch.cat(labels)
        self.fit(f_all, y_all)
        loss = F.cross_entropy(self.scores(f_all), y_all)
        self.after_experience(exp)
        return ExperienceStats(
            index=exp.index, steps=steps, samples=samples, final_loss=float(loss)
        )

    def _gather(
        self, feats: list[Tensor], labels: list[Tensor], starts: list[int], n: int
    ) -> tuple[Tensor, Tensor]:
        """Every rank's features and labels, in the stream's order (one ``all_reduce`` of a
        table where each rank filled its rows: adding zeros is exact)."""
        world = self.context.dist.world_size
        # A rank may hold no sample (an experience smaller than the world): ask the others.
        own = [int(feats[0].shape[1]), 1] if feats else [0, 0]
        total, holders = distributed.sum_over_ranks(own, self.device)
        d = int(total) // int(holders)
        table = torch.zeros(n, d + 1, dtype=torch.float64, device=self.device)
        for f, y, start in zip(feats, labels, starts, strict=True):
            table[start : start + world * len(y) : world, :d] = f
            table[start : start + world * len(y) : world, d] = y.double()
        distributed.sum_tensors([table], self.context.dist)
        return table[:, :d], table[:, d].long()

    def forward(self, x: Tensor, task_ids: Tensor | None) -> Tensor:
        return self.scores(self.features(x))

    def predict(self, x: Tensor, task_ids: Tensor | None) -> Tensor:
        return self.scores(self.features(x))
