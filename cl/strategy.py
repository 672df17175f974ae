"""The strategy base class (it owns the training loop), its config and the registry.

A strategy subclasses :class:`Strategy` with its own config dataclass and overrides a few hooks
that return values; the loop, optimiser, AMP, gradient clipping and progress are here.
"""

from __future__ import annotations

import contextlib
from abc import ABC
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

import torch
from omegaconf import MISSING
from torch import Tensor, nn
from torch.nn import functional as F

from cl.budget import count_parameters
from cl.errors import ConfigError, NonFiniteLossError
from cl.registry import Registry
from cl.streams.base import Experience, StreamInfo, TensorData
from cl.validation import fraction, non_negative, positive


@dataclass
class StrategyConfig:
    """Base of every strategy's config dataclass.

    Attributes:
        name: Registered strategy name.
    """

    name: str = MISSING


@dataclass
class TrainConfig:
    """Settings of the training loop (``train.`` on the command line).

    Attributes:
        epochs: Passes over each experience.
        batch_size: Training minibatch size.
        lr: Learning rate.
        optimizer: ``sgd``, ``adam`` or ``adamw``.
        momentum: SGD momentum.
        weight_decay: Weight decay.
        eval_batch_size: Batch size of evaluation.
        grad_clip: Max gradient norm (null: no clipping).
        amp: bf16 autocast on CUDA (ignored on CPU).
        compile: ``torch.compile`` the model's forward.
    """

    epochs: int = 5
    batch_size: int = 32
    lr: float = 0.05
    optimizer: str = "sgd"
    momentum: float = 0.0
    weight_decay: float = 0.0
    eval_batch_size: int = 1024
    grad_clip: float | None = None
    amp: bool = True
    compile: bool = False

    def validate(self) -> None:
        if self.epochs <= 0:
            raise ConfigError(f"train.epochs must be a positive integer, got {self.epochs}")
        if self.batch_size <= 0:
            raise ConfigError(f"train.batch_size must be a positive integer, got {self.batch_size}")
        if self.eval_batch_size <= 0:
            raise ConfigError(
                f"train.eval_batch_size must be a positive integer, got {self.eval_batch_size}"
            )
        if self.lr <= 0:
            raise ConfigError(f"train.lr must be positive, got {self.lr}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(
                f"unknown train.optimizer {self.optimizer!r}; valid: {', '.join(OPTIMIZERS)}"
            )
        fraction("train", self, "momentum", high_open=True)
        non_negative("train", self, "weight_decay")
        positive("train", self, "grad_clip")


OPTIMIZERS = ("sgd", "adam", "adamw")


@dataclass(kw_only=True)
class RunContext:
    """What a strategy may know about the run besides its own config.

    Attributes:
        device: Torch device of model and data.
        seed: Run seed.
        stream: Stream metadata (no data).
        train: Training-loop settings.
        past_experiences: Callable giving experience ``i`` for ``i`` already trained on
            (used by strategies such as joint training to rebuild state on resume).
    """

    device: torch.device
    seed: int
    stream: StreamInfo
    train: TrainConfig
    past_experience: Callable[[int], Experience] | None = None

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return torch.bfloat16 if self.train.amp and self.device.type == "cuda" else None


@dataclass
class Batch:
    """A training minibatch; ``task_ids`` is None when the stream has no task ids."""

    x: Tensor
    y: Tensor
    task_ids: Tensor | None


@dataclass
class ExperienceStats:
    """What the loop measured while training one experience."""

    index: int
    steps: int
    samples: int
    final_loss: float
    trainable_params: int = 0


C = TypeVar("C", bound=StrategyConfig)


class Strategy(ABC, Generic[C]):
    """Base class of all strategies; owns the training loop.

    Subclasses set ``config_cls`` and the class attributes below, and override hooks:
    :meth:`before_experience`, :meth:`trainable_parameters`, :meth:`forward`,
    :meth:`extra_loss`, :meth:`train_batches`, :meth:`after_experience`, :meth:`predict`,
    :meth:`state_dict` / :meth:`load_state_dict` and :meth:`extra_state_bytes`.
    """

    name: ClassVar[str] = ""
    config_cls: ClassVar[type[StrategyConfig]] = StrategyConfig
    needs_task_id_at_test: ClassVar[bool] = False
    scenarios: ClassVar[tuple[str, ...]] = ("class_il", "task_il", "domain_il")
    modalities: ClassVar[tuple[str, ...]] = ("vision", "text")

    def __init__(self, *, config: C, model: nn.Module, context: RunContext) -> None:
        self.config = config
        self.model = model
        self.context = context
        self.device = context.device
        self.optimizer: torch.optim.Optimizer | None = None
        self._forward_fn: Callable[..., Tensor] = model
        if context.train.compile:
            self._forward_fn = torch.compile(model)

    # ----------------------------------------------------------------- checks
    @classmethod
    def check_stream(cls, info: StreamInfo) -> None:
        """Raise :class:`ConfigError` when this strategy cannot run on the stream."""
        if info.scenario not in cls.scenarios:
            raise ConfigError(
                f"strategy {cls.name!r} supports scenarios {', '.join(cls.scenarios)}; "
                f"stream {info.name!r} is {info.scenario}"
            )
        if info.modality not in cls.modalities:
            raise ConfigError(
                f"strategy {cls.name!r} supports {', '.join(cls.modalities)} streams; "
                f"stream {info.name!r} is {info.modality}"
            )
        if cls.needs_task_id_at_test and not info.has_task_ids:
            raise ConfigError(
                f"strategy {cls.name!r} needs task ids at test time, but stream {info.name!r} "
                "has none (set stream.task_labels=true or choose a task_il stream)"
            )

    # ------------------------------------------------------------------ hooks
    def before_experience(self, exp: Experience) -> None:
        """Called before the optimiser is built for ``exp``: add parameters here."""

    def trainable_parameters(self) -> Iterable[nn.Parameter]:
        """Parameters the optimiser updates (default: the model's with ``requires_grad``)."""
        return (p for p in self.model.parameters() if p.requires_grad)

    def forward(self, x: Tensor, task_ids: Tensor | None) -> Tensor:
        """Training forward pass: logits over the global label space."""
        return self._forward_fn(x, task_ids)

    def loss(self, logits: Tensor, batch: Batch) -> Tensor:
        """The task loss (cross-entropy over the logits)."""
        return F.cross_entropy(logits.float(), batch.y)

    def extra_loss(self, batch: Batch, logits: Tensor) -> Tensor | None:
        """A regulariser added to the task loss (EWC penalty, distillation, ...)."""
        return None

    def train_batches(self, exp: Experience, epoch: int) -> Iterator[Batch]:
        """Minibatches of one epoch; replay mixes its buffer in here."""
        return self.iterate(exp.train, epoch=epoch, exp_index=exp.index)

    def after_experience(self, exp: Experience) -> None:
        """Called after training on ``exp`` (store a Fisher, a teacher, a buffer, ...)."""

    def predict(self, x: Tensor, task_ids: Tensor | None) -> Tensor:
        """Evaluation forward pass (called under ``inference_mode`` in eval mode)."""
        return self._forward_fn(x, task_ids)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: the model and any strategy state."""
        return {"model": self.model.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])

    def extra_state_bytes(self) -> int:
        """Bytes of state kept beyond the model (buffers, Fishers, teachers) for the ledger."""
        return 0

    # ------------------------------------------------------------- utilities
    def generator(self, *parts: int) -> torch.Generator:
        """A CPU generator seeded from the run seed and ``parts`` (reproducible on resume)."""
        seed = self.context.seed
        for p in parts:
            seed = (seed * 1_000_003 + p + 1) % (2**63 - 1)
        return torch.Generator().manual_seed(seed)

    def iterate(
        self,
        data: TensorData | Any,
        *,
        epoch: int,
        exp_index: int,
        batch_size: int | None = None,
        shuffle: bool = True,
    ) -> Iterator[Batch]:
        """Shuffled minibatches of ``data`` (index slices of device tensors, or a DataLoader)."""
        bs = batch_size or self.context.train.batch_size
        with_t = self.context.stream.has_task_ids
        if isinstance(data, TensorData):
            n = len(data)
            if shuffle:
                order = torch.randperm(n, generator=self.generator(exp_index, epoch))
                order = order.to(data.x.device)
            else:
                order = torch.arange(n, device=data.x.device)
            for start in range(0, n, bs):
                idx = order[start : start + bs]
                yield Batch(data.x[idx], data.y[idx], data.t[idx] if with_t else None)
        else:
            loader = torch.utils.data.DataLoader(
                data,
                batch_size=bs,
                shuffle=shuffle,
                generator=self.generator(exp_index, epoch),
                pin_memory=self.device.type == "cuda",
            )
            for x, y, t in loader:
                yield Batch(
                    x.to(self.device, non_blocking=True),
                    y.to(self.device, non_blocking=True),
                    t.to(self.device, non_blocking=True) if with_t else None,
                )

    def build_optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        tc = self.context.train
        fused = self.device.type == "cuda" or None
        if not params:
            raise ConfigError(f"strategy {self.name!r} has no trainable parameters")
        if tc.optimizer == "sgd":
            return torch.optim.SGD(
                params, lr=tc.lr, momentum=tc.momentum, weight_decay=tc.weight_decay
            )
        if tc.optimizer == "adam":
            return torch.optim.Adam(params, lr=tc.lr, weight_decay=tc.weight_decay, fused=fused)
        return torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay, fused=fused)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        dtype = self.context.amp_dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    # ------------------------------------------------------------------- loop
    def train_experience(
        self, exp: Experience, *, on_step: Callable[[int, int, Tensor], None] | None = None
    ) -> ExperienceStats:
        """Train on one experience: the loop every strategy shares.

        Args:
            exp: The experience.
            on_step: Called after each step with (step, batch size, loss tensor) for progress
                bars and loggers (reading the loss syncs the device: do it sparingly).

        Raises:
            NonFiniteLossError: The loss became NaN or infinite.
        """
        tc = self.context.train
        self.before_experience(exp)
        params = list({id(p): p for p in self.trainable_parameters()}.values())
        self.optimizer = self.build_optimizer(params)
        self.model.train()
        steps = samples = 0
        loss_sum = torch.zeros((), device=self.device)
        n_last = 0
        for epoch in range(tc.epochs):
            loss_sum.zero_()
            n_last = 0
            for batch in self.train_batches(exp, epoch):
                self.optimizer.zero_grad(set_to_none=True)
                with self.autocast():
                    logits = self.forward(batch.x, batch.task_ids)
                    loss = self.loss(logits, batch)
                    extra = self.extra_loss(batch, logits)
                    if extra is not None:
                        loss = loss + extra
                loss.backward()
                if tc.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
                self.optimizer.step()
                loss_sum += loss.detach()
                steps += 1
                n_last += 1
                samples += len(batch.y)
                if on_step is not None:
                    on_step(steps, len(batch.y), loss.detach())
            # One host sync per epoch: a NaN anywhere in the epoch makes the sum non-finite.
            if not torch.isfinite(loss_sum):
                raise NonFiniteLossError(
                    f"loss became non-finite while training experience {exp.index} "
                    f"(epoch {epoch}); try a smaller train.lr or train.grad_clip"
                )
        self.after_experience(exp)
        return ExperienceStats(
            index=exp.index,
            steps=steps,
            samples=samples,
            final_loss=float(loss_sum) / max(n_last, 1),
            trainable_params=count_parameters(params),
        )


# ---------------------------------------------------------------- registry
STRATEGIES: Registry[type[Strategy[Any]]] = Registry("strategy", "strategies")

S = TypeVar("S", bound=type[Strategy[Any]])


def register_strategy(name: str) -> Callable[[S], S]:
    """Class decorator: ``@register_strategy("ewc")`` (the class carries its ``config_cls``)."""

    def deco(cls: S) -> S:
        STRATEGIES.register(name, cls.config_cls)(cls)
        cls.name = name
        return cls

    return deco


def load_builtin_strategies() -> None:
    """Import every module of the ``strategies`` package (each registers itself)."""
    import importlib
    import pkgutil

    import strategies

    for mod in pkgutil.iter_modules(strategies.__path__):
        if not mod.name.startswith("_"):
            importlib.import_module(f"strategies.{mod.name}")


def list_strategies() -> list[str]:
    load_builtin_strategies()
    return STRATEGIES.names()


def get_strategy(name: str) -> type[Strategy[Any]]:
    load_builtin_strategies()
    return STRATEGIES.get(name).builder
