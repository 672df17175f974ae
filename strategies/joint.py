"""Joint training on the union of all experiences seen so far: the usual upper bound.

At experience i the model trains on the training data of experiences 0..i together
(cumulative/"offline" training), which removes the continual-learning constraint.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from cl.errors import ConfigError
from cl.strategy import Batch, Strategy, StrategyConfig, register_strategy
from cl.streams.base import Experience, TensorData


@dataclass
class JointConfig(StrategyConfig):
    """Joint training settings.

    Attributes:
        from_scratch: Re-initialise the model before each experience (true joint training from
            scratch on the union); false continues from the current weights.
    """

    name: str = "joint"
    from_scratch: bool = False


@register_strategy("joint")
class Joint(Strategy[JointConfig]):
    """Trains on the union of experiences 0..i at experience i."""

    config_cls = JointConfig
    modalities = ("vision", "text", "text2text")
    packed_rows = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seen: list[int] = []
        self._data: dict[int, TensorData] = {}
        self._init_state = {k: v.clone() for k, v in self.model.state_dict().items()}
        self._union: TensorData | None = None

    def _experience_data(self, i: int, exp: Experience | None = None) -> TensorData:
        if i not in self._data:
            src = exp if exp is not None else (self.context.past_experience or _missing)(i)
            if not isinstance(src.train, TensorData):
                raise ConfigError("joint training needs in-memory (tensor) experiences")
            self._data[i] = src.train
        return self._data[i]

    def before_experience(self, exp: Experience) -> None:
        if exp.index not in self.seen:
            self.seen.append(exp.index)
        self._experience_data(exp.index, exp)
        # Concatenated once per experience, not once per epoch.
        self._union = TensorData.cat([self._experience_data(i) for i in self.seen])
        if self.config.from_scratch:
            self.model.load_state_dict(self._init_state)

    def train_batches(self, exp: Experience, epoch: int) -> Iterator[Batch]:
        assert self._union is not None, "before_experience builds the union"
        return self.iterate(self._union, epoch=epoch, exp_index=exp.index)

    def steps_per_epoch(self, exp: Experience) -> int:
        assert self._union is not None, "before_experience builds the union"
        return -(-len(self._union) // self.context.train.batch_size)

    def after_experience(self, exp: Experience) -> None:
        self._union = None  # the copy is only needed while training

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "seen": list(self.seen), "init": self._init_state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.seen = list(state["seen"])
        self._init_state = state["init"]

    def extra_state_bytes(self) -> int:
        # The stored data of earlier experiences (re-read on resume, so not in the state) and
        # the state beyond the model (the initial weights kept for from_scratch).
        data = sum(self._experience_data(i).nbytes for i in self.seen)
        return data + super().extra_state_bytes()


def _missing(i: int) -> Experience:
    raise ConfigError(f"joint training cannot recover experience {i} on resume")
