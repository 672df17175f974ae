"""Experience replay with a fixed-size buffer of past samples mixed into every minibatch.

Rolnick et al., "Experience Replay for Continual Learning", NeurIPS 2019; Chaudhry et al.,
"On Tiny Episodic Memories in Continual Learning", 2019 (reservoir sampling, Vitter 1985,
"Random sampling with a reservoir"); class-balanced buffers as in Prabhu et al., "GDumb",
ECCV 2020.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from cl.errors import ConfigError
from cl.strategy import Batch, Strategy, StrategyConfig, register_strategy
from cl.streams.base import Experience, TensorData
from cl.validation import non_negative, one_of

POLICIES = ("reservoir", "class_balanced", "experience_balanced")


@dataclass
class ReplayConfig(StrategyConfig):
    """Replay settings.

    Attributes:
        buffer_size: Buffer capacity in samples (0: no replay, naive fine-tuning). Sizes are
            comparable across strategies: the ledger records the buffer's bytes.
        policy: ``reservoir``: a uniform sample of everything seen (reservoir sampling);
            ``class_balanced``: equal slots per class seen, each a uniform sample of its
            class; ``experience_balanced``: equal slots per experience (Avalanche's default
            ``ExperienceBalancedBuffer``).
        replay_ratio: Buffer samples added to each minibatch, as a multiple of its current
            samples (1.0: as many replayed as new samples, as Avalanche's ``Replay``; the
            buffer is cycled in a shuffled order).
    """

    name: str = "replay"
    buffer_size: int = 1000
    policy: str = "reservoir"
    replay_ratio: float = 1.0

    def validate(self) -> None:
        non_negative("strategy", self, "buffer_size", "replay_ratio")
        one_of("strategy", self, "policy", POLICIES)


@register_strategy("replay")
class Replay(Strategy[ReplayConfig]):
    """Replay from a buffer filled after each experience and kept on the device."""

    config_cls = ReplayConfig
    modalities = ("vision", "text", "text2text")
    packed_rows = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        c = self.config
        if c.policy not in POLICIES:
            raise ConfigError(f"strategy.policy must be one of {POLICIES}, got {c.policy!r}")
        if c.buffer_size < 0 or c.replay_ratio < 0:
            raise ConfigError("strategy.buffer_size and strategy.replay_ratio must be >= 0")
        if c.policy == "class_balanced" and self.context.stream.modality == "text2text":
            raise ConfigError(
                "strategy.policy=class_balanced needs class labels; text-to-text "
                "streams have none (use reservoir or experience_balanced)"
            )
        self.groups: dict[int, TensorData] = {}  # group (all / class / experience) -> samples
        self.seen: dict[int, int] = {}  # samples of each group offered to the buffer so far
        self._memory: TensorData | None = None

    @property
    def memory(self) -> TensorData | None:
        """All buffered samples as one tensor triple (None when empty)."""
        if self._memory is None and self.groups:
            self._memory = TensorData.cat([self.groups[g] for g in sorted(self.groups)])
        return self._memory

    def train_batches(self, exp: Experience, epoch: int) -> Iterator[Batch]:
        mem = self.memory
        base = self.iterate(exp.train, epoch=epoch, exp_index=exp.index)
        if mem is None or len(mem) == 0 or self.config.replay_ratio == 0:
            yield from base
            return
        gen = self.generator(exp.index, epoch, 1)
        order, pos = torch.randperm(len(mem), generator=gen), 0
        for b in base:
            k = max(1, round(self.config.replay_ratio * len(b.y)))
            parts = []
            while k > 0:  # cycle through shuffled passes over the buffer
                if pos == len(order):
                    order, pos = torch.randperm(len(mem), generator=gen), 0
                take = order[pos : pos + k]
                parts.append(take)
                pos, k = pos + len(take), k - len(take)
            idx = torch.cat(parts).to(mem.x.device)
            t = None if b.task_ids is None else torch.cat([b.task_ids, mem.t[idx]])
            yield Batch(torch.cat([b.x, mem.x[idx]]), torch.cat([b.y, mem.y[idx]]), t)

    def after_experience(self, exp: Experience) -> None:
        if self.config.buffer_size == 0:
            return
        if not isinstance(exp.train, TensorData):
            raise ConfigError("replay needs in-memory (tensor) experiences")
        data = exp.train
        if self.config.policy == "reservoir":
            new = {0: data}
        elif self.config.policy == "experience_balanced":
            new = {exp.index: data}
        else:
            new = {
                int(c): data.subset((data.y == c).nonzero(as_tuple=True)[0])
                for c in data.y.unique()
            }
        keys = sorted(set(self.groups) | set(new))
        base, extra = divmod(self.config.buffer_size, len(keys))
        caps = {g: base + (1 if i < extra else 0) for i, g in enumerate(keys)}
        gen = self.generator(exp.index, 2)
        for g in keys:
            cur = self.groups.get(g)
            if cur is not None and len(cur) > caps[g]:  # a new group took slots: drop at random
                keep = torch.randperm(len(cur), generator=gen)[: caps[g]].sort().values
                cur = cur.subset(keep.to(cur.x.device))
            if g in new:
                cur = _reservoir(cur, self.seen.get(g, 0), new[g], caps[g], gen)
                self.seen[g] = self.seen.get(g, 0) + len(new[g])
            if cur is not None:
                self.groups[g] = cur
        self._memory = None

    def state_dict(self) -> dict[str, Any]:
        groups = {g: (d.x, d.y, d.t) for g, d in self.groups.items()}
        return {**super().state_dict(), "groups": groups, "seen": dict(self.seen)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.groups = {int(g): TensorData(*v).to(self.device) for g, v in state["groups"].items()}
        self.seen = {int(g): int(n) for g, n in state["seen"].items()}
        self._memory = None


def _reservoir(
    cur: TensorData | None, seen: int, new: TensorData, cap: int, gen: torch.Generator
) -> TensorData | None:
    """Offer ``new``'s samples, in a random order, to a reservoir of capacity ``cap``.

    Vectorised algorithm R: the i-th sample offered (1-based, counting ``seen`` earlier ones)
    fills a free slot if any, else replaces slot ``j ~ U{0..i-1}`` when ``j < cap``; when
    several samples hit one slot the last one wins, as in the sequential algorithm.
    """
    n_cur = 0 if cur is None else len(cur)
    order = torch.randperm(len(new), generator=gen)
    free = max(cap - n_cur, 0)
    fill, rest = order[:free], order[free:]
    dev = new.x.device
    out = (
        new.subset(fill.to(dev)) if cur is None else TensorData.cat([cur, new.subset(fill.to(dev))])
    )
    if len(rest) == 0 or cap == 0:
        return out if len(out) else None
    count = seen + len(fill) + torch.arange(1, len(rest) + 1, dtype=torch.float64)
    slot = (torch.rand(len(rest), generator=gen, dtype=torch.float64) * count).long()
    hit = slot < cap
    writer = torch.full((cap,), -1, dtype=torch.long)
    writer.scatter_reduce_(0, slot[hit], torch.arange(len(rest))[hit], reduce="amax")
    slots = (writer >= 0).nonzero(as_tuple=True)[0]
    src = rest[writer[slots]]
    x, y, t = out.x.clone(), out.y.clone(), out.t.clone()
    s, r = slots.to(dev), src.to(dev)
    x[s], y[s], t[s] = new.x[r], new.y[r], new.t[r]
    return TensorData(x, y, t)
