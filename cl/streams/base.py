"""Core data types: :class:`TensorData`, :class:`Experience` and :class:`Stream`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor
from torch.utils.data import Dataset

if TYPE_CHECKING:
    from cl.streams.augment import ImagePipeline

Scenario = Literal["class_il", "task_il", "domain_il"]
SCENARIOS: tuple[str, ...] = ("class_il", "task_il", "domain_il")


@dataclass
class TensorData:
    """In-memory split: inputs ``x``, global class labels ``y`` and per-sample task ids ``t``."""

    x: Tensor
    y: Tensor
    t: Tensor

    def __post_init__(self) -> None:
        if not (len(self.x) == len(self.y) == len(self.t)):
            raise ValueError("x, y and t must have the same length")

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device: torch.device | str) -> TensorData:
        return TensorData(self.x.to(device), self.y.to(device), self.t.to(device))

    def subset(self, idx: Tensor) -> TensorData:
        return TensorData(self.x[idx], self.y[idx], self.t[idx])

    @property
    def nbytes(self) -> int:
        return sum(v.element_size() * v.nelement() for v in (self.x, self.y, self.t))

    @staticmethod
    def cat(parts: list[TensorData]) -> TensorData:
        return TensorData(
            torch.cat([p.x for p in parts]),
            torch.cat([p.y for p in parts]),
            torch.cat([p.t for p in parts]),
        )


# Data too large for memory is a Dataset yielding (x, y, t) triples.
Data = TensorData | Dataset


@dataclass(kw_only=True)
class Experience:
    """One step of a stream.

    Attributes:
        index: Position in the stream (0-based).
        task_id: Task identity of this experience (equal to ``index`` for split and permuted
            streams).
        classes: Global class ids present in this experience.
        train: Training data.
        test: Test data.
    """

    index: int
    task_id: int
    classes: list[int]
    train: Data
    test: Data

    def to(self, device: torch.device | str) -> Experience:
        train = self.train.to(device) if isinstance(self.train, TensorData) else self.train
        test = self.test.to(device) if isinstance(self.test, TensorData) else self.test
        return replace(self, train=train, test=test)


@dataclass(kw_only=True)
class Stream:
    """An ordered list of experiences plus what strategies and the evaluator need to know.

    Attributes:
        name: Stream name as typed on the command line.
        scenario: ``class_il``, ``task_il`` or ``domain_il``.
        n_classes: Size of the global label space.
        experiences: The experiences in training order.
        modality: ``vision`` or ``text``.
        input_shape: Shape of one input (vision), or ``None``.
        has_task_ids: Whether task ids may be given to a strategy at test time.
        extra: Free-form metadata (e.g. tokenizer name for text streams).
        pipeline: Augmentation and evaluation transform of image batches (None: none).
    """

    name: str
    scenario: str
    n_classes: int
    experiences: list[Experience]
    modality: str = "vision"
    input_shape: tuple[int, ...] | None = None
    has_task_ids: bool = True
    extra: dict[str, object] = field(default_factory=dict)
    pipeline: ImagePipeline | None = None

    def __post_init__(self) -> None:
        if self.scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {self.scenario!r}; expected one of {SCENARIOS}")

    def __len__(self) -> int:
        return len(self.experiences)

    def __iter__(self) -> Iterator[Experience]:
        return iter(self.experiences)

    def __getitem__(self, i: int) -> Experience:
        return self.experiences[i]

    @property
    def classes(self) -> list[list[int]]:
        return [list(e.classes) for e in self.experiences]

    @property
    def task_classes(self) -> list[list[int]]:
        """Classes of each task id (a task may span several experiences in principle)."""
        n_tasks = max(e.task_id for e in self.experiences) + 1
        out: list[set[int]] = [set() for _ in range(n_tasks)]
        for e in self.experiences:
            out[e.task_id].update(e.classes)
        return [sorted(s) for s in out]

    def info(self) -> StreamInfo:
        return StreamInfo(
            name=self.name,
            scenario=self.scenario,
            n_classes=self.n_classes,
            n_experiences=len(self.experiences),
            classes=self.classes,
            task_classes=self.task_classes,
            modality=self.modality,
            input_shape=self.input_shape,
            has_task_ids=self.has_task_ids,
            pipeline=self.pipeline,
        )

    def to(self, device: torch.device | str) -> Stream:
        return replace(self, experiences=[e.to(device) for e in self.experiences])


@dataclass(frozen=True, kw_only=True)
class StreamInfo:
    """Stream metadata without data: what models and strategies may know up front
    (``pipeline``: the stream's image augmentation and evaluation transform, or None)."""

    name: str
    scenario: str
    n_classes: int
    n_experiences: int
    classes: list[list[int]]
    task_classes: list[list[int]]
    modality: str
    input_shape: tuple[int, ...] | None
    has_task_ids: bool
    pipeline: ImagePipeline | None = None

    @classmethod
    def of(
        cls,
        name: str,
        task_classes: list[list[int]],
        *,
        scenario: str,
        modality: str,
        input_shape: tuple[int, ...] | None = None,
        has_task_ids: bool = True,
    ) -> StreamInfo:
        """Metadata of experiences with ``task_classes`` (global class ids ``0..n-1``): for
        models and strategies built without a stream (benchmarks, synthetic tests)."""
        return cls(
            name=name,
            scenario=scenario,
            n_classes=1 + max(c for cs in task_classes for c in cs),
            n_experiences=len(task_classes),
            classes=task_classes,
            task_classes=task_classes,
            modality=modality,
            input_shape=input_shape,
            has_task_ids=has_task_ids,
        )
