"""The strategy base class (it owns the training loop), its config and the registry.

A strategy subclasses :class:`Strategy` with its own config dataclass and overrides a few hooks
that return values; the loop, optimiser, AMP, gradient clipping and progress are here.
"""

from __future__ import annotations

import contextlib
from abc import ABC
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Generic, TypeVar

import torch
from omegaconf import MISSING
from torch import Tensor, nn
from torch.nn import functional as F

from cl import distributed
from cl.budget import count_parameters, state_extra_bytes
from cl.errors import ConfigError, NonFiniteLossError
from cl.optim import (
    LOGIT_MASKS,
    LR_SCHEDULES,
    LrFactor,
    class_mask,
    lr_scheduler,
    mask_logits,
    named_parameters,
    optimizer_state,
    restore_optimizer,
    update_param_groups,
)
from cl.registry import Registry
from cl.streams.augment import AUGMENT_SALT, model_input_size
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
        lr_scale_batch: Linear scaling rule: the optimiser's lr is ``lr * batch_size /
            lr_scale_batch`` (e.g. 256, as L2P's and DeiT's reference code); null: ``lr`` as is.
        amp: bf16 autocast on CUDA (ignored on CPU).
        compile: ``torch.compile`` the model's forward.
        reset_optimizer: True: a fresh optimiser for every experience. False (Avalanche's
            behaviour): one optimiser kept across experiences with its state (momentum, Adam's
            moments and step counts); parameters a strategy adds join it, parameters no longer
            trained leave it. Its state is checkpointed, so resume stays exact.
        lr_schedule: Learning rate within each experience (restarted every experience):
            ``constant``, ``cosine`` (from ``lr`` to 0 at the experience's last step, per
            step) or ``step`` (times ``lr_gamma`` every ``lr_step_size`` epochs).
        lr_step_size: Epochs between decays of the ``step`` schedule.
        lr_gamma: Decay factor of the ``step`` schedule.
        warmup_steps: Linear warm-up at the start of every experience, in optimiser steps:
            the lr rises from ``lr / (warmup_steps + 1)`` to ``lr`` (0: none); the schedule
            follows it (cosine decays over the remaining steps).
        logit_mask: Classes the training loss sees (class-IL): ``none`` (all), ``seen``
            (classes of the experiences so far, this one included) or ``current`` (this
            experience's classes: the "labels trick"). Labels in the batch (replayed samples)
            always stay in; masked logits are set to a large negative value before the loss,
            so masked classes' outputs get no gradient from it. Regularisers and
            distillation get the unmasked logits; evaluation is unaffected.
        distributed: Multi-process runs (under torchrun): ``ddp`` (every rank holds the whole
            model; gradients summed over ranks) or ``fsdp`` (also shards a frozen backbone's
            weights with FSDP2, for frozen-backbone strategies). Ignored in one process.
    """

    epochs: int = 5
    batch_size: int = 32
    lr: float = 0.05
    optimizer: str = "sgd"
    momentum: float = 0.0
    weight_decay: float = 0.0
    eval_batch_size: int = 1024
    grad_clip: float | None = None
    lr_scale_batch: int | None = None
    amp: bool = True
    compile: bool = False
    reset_optimizer: bool = True
    lr_schedule: str = "constant"
    lr_step_size: int = 1
    lr_gamma: float = 0.1
    warmup_steps: int = 0
    logit_mask: str = "none"
    distributed: str = "ddp"

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
        positive("train", self, "grad_clip", "lr_scale_batch")
        self._validate_loop_options()

    def _validate_loop_options(self) -> None:
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(
                f"unknown train.lr_schedule {self.lr_schedule!r}; valid: {', '.join(LR_SCHEDULES)}"
            )
        if self.logit_mask not in LOGIT_MASKS:
            raise ConfigError(
                f"unknown train.logit_mask {self.logit_mask!r}; valid: {', '.join(LOGIT_MASKS)}"
            )
        if self.distributed not in distributed.MODES:
            raise ConfigError(
                f"unknown train.distributed {self.distributed!r}; "
                f"valid: {', '.join(distributed.MODES)}"
            )
        if self.warmup_steps < 0:
            raise ConfigError(f"train.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.lr_step_size <= 0:
            raise ConfigError(
                f"train.lr_step_size must be a positive integer, got {self.lr_step_size}"
            )
        if self.lr_gamma <= 0:
            raise ConfigError(f"train.lr_gamma must be positive, got {self.lr_gamma}")

    @property
    def effective_lr(self) -> float:
        """The optimiser's base lr: ``lr``, times ``batch_size / lr_scale_batch`` when set."""
        if self.lr_scale_batch is None:
            return self.lr
        return self.lr * self.batch_size / self.lr_scale_batch


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
        deterministic: Deterministic algorithms were requested: evaluation runs in fp32.
        dist: This process's rank and world size (see :mod:`cl.distributed`).
    """

    device: torch.device
    seed: int
    stream: StreamInfo
    train: TrainConfig
    past_experience: Callable[[int], Experience] | None = None
    deterministic: bool = False
    dist: distributed.DistInfo = distributed.SINGLE

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return torch.bfloat16 if self.train.amp and self.device.type == "cuda" else None


@dataclass
class Batch:
    """A training minibatch; ``task_ids`` is None when the stream has no task ids.

    ``share`` is None for a whole (global) batch; in a distributed run, a rank's shard of a
    global batch carries its share of the batch's samples (0 for the placeholder sample of a
    rank whose shard is empty; see :func:`cl.distributed.shard_batch`).
    """

    x: Tensor
    y: Tensor
    task_ids: Tensor | None
    share: float | None = None


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
    :meth:`extra_loss`, :meth:`train_batches`, :meth:`after_step`, :meth:`after_experience`,
    :meth:`predict`, :meth:`state_dict` / :meth:`load_state_dict` and
    :meth:`extra_state_bytes`.
    """

    name: ClassVar[str] = ""
    config_cls: ClassVar[type[StrategyConfig]] = StrategyConfig
    needs_task_id_at_test: ClassVar[bool] = False
    scenarios: ClassVar[tuple[str, ...]] = ("class_il", "task_il", "domain_il")
    modalities: ClassVar[tuple[str, ...]] = ("vision", "text")
    # Trains on rows packing several text-to-text examples (``stream.packing``): the strategy
    # only reads the model's logits and the labels, never the prompt/target layout of a row.
    packed_rows: ClassVar[bool] = False
    # Config overrides of the small setup the contract tests run this strategy on (a tiny ViT,
    # a tiny text encoder, ...); empty: cl.testing.DEFAULT_SETUP (shrunk split_digits, MLP).
    test_setup: ClassVar[tuple[str, ...]] = ()
    # Tensor attributes accumulated from the rank's shard while training (counts, statistics):
    # summed over ranks before after_experience in a distributed run (see cl.distributed).
    shard_reduced: ClassVar[tuple[str, ...]] = ()
    # Loop options (``train.<name>``) a strategy with its own training loop deals with itself;
    # the others must stay at their defaults (see ``_refuse_loop_options``).
    own_loop_options: ClassVar[tuple[str, ...]] = ()
    # A strategy with its own training loop that handles a distributed run itself (shards its
    # work, reduces its statistics); the other own-loop strategies are refused under torchrun,
    # with ``distributed_note`` (why, what to do) in the message where set.
    own_loop_distributed: ClassVar[bool] = False
    distributed_note: ClassVar[str] = ""

    def __init__(self, *, config: C, model: nn.Module, context: RunContext) -> None:
        self.config = config
        self.model = model
        self.context = context
        self.device = context.device
        self.optimizer: torch.optim.Optimizer | None = None
        self._forward_fn: Callable[..., Tensor] = model
        # The model's own tensors as built: the ledger counts everything else a strategy keeps.
        self._model_keys = frozenset(model.state_dict())
        if context.train.compile:
            self._forward_fn = torch.compile(model)
        if type(self).train_experience is not Strategy.train_experience:
            _refuse_loop_options(self.name, context.train, skip=self.own_loop_options)
            pipe = context.stream.pipeline
            if pipe is not None and pipe.augment != "none":
                raise ConfigError(
                    f"strategy {self.name!r} runs its own training loop and does not apply "
                    f"stream.augment={pipe.augment}"
                )
            if context.dist.enabled and not self.own_loop_distributed:
                raise ConfigError(
                    f"strategy {self.name!r} runs its own training loop and cannot run "
                    f"distributed{self.distributed_note}; start it as one process"
                )

    # ----------------------------------------------------------------- checks
    @classmethod
    def requires_task_ids(cls, config: StrategyConfig) -> bool:
        """Whether the strategy, with ``config``, needs task ids at test time.

        Default: the class attribute ``needs_task_id_at_test``; strategies where it depends on
        the config (e.g. ``adapters`` with ``routing=oracle``) override this.
        """
        return cls.needs_task_id_at_test

    @classmethod
    def check_stream(
        cls,
        info: StreamInfo,
        *,
        config: StrategyConfig | None = None,
        allow_task_oracle: bool = False,
    ) -> None:
        """Raise :class:`ConfigError` when this strategy cannot run on the stream.

        Args:
            info: The stream's metadata.
            config: The strategy's config (None: judge by the class attributes alone).
            allow_task_oracle: Let a strategy that needs task ids at test time run on a
                class_il or domain_il stream (its results are then labelled task_aware).
        """
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
        needs_ids = cls.needs_task_id_at_test if config is None else cls.requires_task_ids(config)
        if needs_ids and not info.has_task_ids:
            raise ConfigError(
                f"strategy {cls.name!r} needs task ids at test time, but stream {info.name!r} "
                "has none (set stream.task_labels=true or choose a task_il stream)"
            )
        if needs_ids and info.scenario != "task_il" and not allow_task_oracle:
            raise ConfigError(
                f"strategy {cls.name!r} (as configured) needs task ids at test time, but "
                f"{info.scenario} evaluation is task-agnostic; set allow_task_oracle=true to run "
                "it anyway (results labelled task_aware) or use stream.scenario=task_il"
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

    def after_step(self, batch: Batch) -> None:
        """Called after every ``optimizer.step()`` (before the lr schedule advances): path
        integrals such as SI's, parameter projections, EMA teachers."""

    def steps_per_epoch(self, exp: Experience) -> int:
        """Optimiser steps in one epoch of ``exp`` (lr schedules count epochs and the cosine
        horizon with it); override it with :meth:`train_batches` when that changes the number
        of batches."""
        return -(-len(exp.train) // self.context.train.batch_size)  # type: ignore[arg-type]

    def after_experience(self, exp: Experience) -> None:
        """Called after training on ``exp`` (store a Fisher, a teacher, a buffer, ...)."""

    def predict(self, x: Tensor, task_ids: Tensor | None) -> Tensor:
        """Evaluation forward pass (called under ``inference_mode`` in eval mode)."""
        return self._forward_fn(x, task_ids)

    def augment(self, batch: Batch, gen: torch.Generator) -> Batch:
        """The stream's training augmentation (``stream.augment``) of a batch, on its device;
        the loop calls it on every training batch with a generator seeded per epoch."""
        pipe = self.context.stream.pipeline
        if pipe is None or pipe.augment == "none":
            return batch
        return replace(batch, x=pipe.train(batch.x, gen, model_input_size(self.model)))

    def eval_input(self, x: Tensor) -> Tensor:
        """The stream's evaluation transform (``stream.eval_transform``) of a test batch."""
        pipe = self.context.stream.pipeline
        if pipe is None or pipe.eval_transform == "none":
            return x
        return pipe.eval(x, model_input_size(self.model))

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: the model and any strategy state."""
        return {"model": self.model.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])

    def extra_state_bytes(self) -> int:
        """Bytes of state kept beyond the model's own tensors, for the ledger.

        By default every tensor in :meth:`state_dict` that is not one of the model's original
        parameters or buffers (see :func:`cl.budget.state_extra_bytes`): buffers, Fishers,
        anchors, teachers, prompts, adapters, added heads. Override only to add memory that
        :meth:`state_dict` does not hold (e.g. data re-read on resume), never to count less.
        """
        return state_extra_bytes(self.state_dict(), self.model_tensors())

    def model_tensors(self) -> dict[str, Tensor]:
        """The model's own parameters and buffers (the names it was built with)."""
        return {k: v for k, v in self.model.state_dict().items() if k in self._model_keys}

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
            yield from self._load(
                data, bs=bs, shuffle=shuffle, gen=self.generator(exp_index, epoch)
            )

    def _load(self, data: Any, *, bs: int, shuffle: bool, gen: torch.Generator) -> Iterator[Batch]:
        """Minibatches of a Dataset in the order of the tensor path (one permutation from
        ``gen``). In a distributed run each rank loads only its strided share of every global
        batch (a :class:`Batch` with ``share`` set), unless the stream augments training
        batches: augmentation draws for the whole global batch, so every rank loads it."""
        n = len(data)
        order = torch.randperm(n, generator=gen) if shuffle else torch.arange(n)
        batches = [order[s : s + bs] for s in range(0, n, bs)]
        dist, pipe = self.context.dist, self.context.stream.pipeline
        shares: list[float | None] = [None] * len(batches)
        if dist.enabled and (pipe is None or pipe.augment == "none"):
            for k, b in enumerate(batches):
                own = b[distributed.shard_rows(len(b), dist)]
                shares[k] = len(own) / len(b)
                batches[k] = own if len(own) else b[:1]  # placeholder: weight 0, see shard_batch
        loader = torch.utils.data.DataLoader(
            data,
            batch_sampler=[b.tolist() for b in batches],
            pin_memory=self.device.type == "cuda",
        )
        with_t = self.context.stream.has_task_ids
        for (x, y, t), share in zip(loader, shares, strict=True):
            yield Batch(
                x.to(self.device, non_blocking=True),
                y.to(self.device, non_blocking=True),
                t.to(self.device, non_blocking=True) if with_t else None,
                share,
            )

    def build_optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        tc = self.context.train
        fused = self.device.type == "cuda" or None
        if not params:
            raise ConfigError(f"strategy {self.name!r} has no trainable parameters")
        if tc.optimizer == "sgd":
            return torch.optim.SGD(
                params, lr=tc.effective_lr, momentum=tc.momentum, weight_decay=tc.weight_decay
            )
        lr = tc.effective_lr
        if tc.optimizer == "adam":
            return torch.optim.Adam(params, lr=lr, weight_decay=tc.weight_decay, fused=fused)
        return torch.optim.AdamW(params, lr=lr, weight_decay=tc.weight_decay, fused=fused)

    def named_parameters(self) -> dict[str, nn.Parameter]:
        """Every parameter of the model and of the strategy's attributes, by a stable name."""
        skip = {"model", "_forward_fn", "optimizer", "context", "config"}
        roots = [("model", self.model)]
        roots += [(k, v) for k, v in sorted(vars(self).items()) if k not in skip]
        return named_parameters(roots)

    def optimizer_state(self) -> dict[str, Any] | None:
        """The kept optimiser's state for a checkpoint (None with ``train.reset_optimizer``)."""
        if self.context.train.reset_optimizer or self.optimizer is None:
            return None
        return optimizer_state(self.optimizer, self.named_parameters())

    def load_optimizer_state(self, state: dict[str, Any] | None) -> None:
        """Restore :meth:`optimizer_state` (after :meth:`load_state_dict`)."""
        if state is not None and not self.context.train.reset_optimizer:
            self.optimizer = restore_optimizer(state, self.named_parameters(), self.build_optimizer)

    def autocast(self, *, evaluation: bool = False) -> contextlib.AbstractContextManager[Any]:
        """bf16 autocast on CUDA with ``train.amp``; evaluation stays fp32 when deterministic."""
        dtype = self.context.amp_dtype
        if dtype is None or (evaluation and self.context.deterministic):
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
        if tc.reset_optimizer or self.optimizer is None:
            self.optimizer = self.build_optimizer(params)
        elif not params:
            raise ConfigError(f"strategy {self.name!r} has no trainable parameters")
        else:
            update_param_groups(self.optimizer, params)
        factor = LrFactor(
            schedule=tc.lr_schedule,
            steps_per_epoch=self.steps_per_epoch(exp),
            epochs=tc.epochs,
            warmup_steps=tc.warmup_steps,
            step_size=tc.lr_step_size,
            gamma=tc.lr_gamma,
        )
        sched = lr_scheduler(self.optimizer, factor)
        mask = self._training_mask(exp)
        dist = self.context.dist
        self.model.train()
        steps = samples = 0
        loss_sum = torch.zeros((), device=self.device)
        n_last = 0
        for epoch in range(tc.epochs):
            loss_sum.zero_()
            n_last = 0
            aug_gen = self.generator(exp.index, epoch, AUGMENT_SALT)
            for batch in self.train_batches(exp, epoch):
                batch = self.augment(batch, aug_gen)  # the global batch: as one process
                n_batch = len(batch.y)  # the global batch; a rank trains on its shard of it
                batch, share = distributed.shard_batch(batch, dist)
                self.optimizer.zero_grad(set_to_none=True)
                with self.autocast():
                    logits = self.forward(batch.x, batch.task_ids)
                    masked = logits if mask is None else mask_logits(logits, mask, batch.y)
                    loss = self.loss(masked, batch)
                    extra = self.extra_loss(batch, logits)
                    if extra is not None:
                        loss = loss + extra
                if dist.enabled:
                    (loss * share).backward()
                    loss = distributed.reduce_gradients(params, loss.detach() * share)
                else:
                    loss.backward()
                if tc.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
                self.optimizer.step()
                self.after_step(batch)
                if sched is not None:
                    sched.step()
                loss_sum += loss.detach()
                steps += 1
                n_last += 1
                samples += n_batch
                if on_step is not None:
                    on_step(steps, n_batch, loss.detach())
            # One host sync per epoch: a NaN anywhere in the epoch makes the sum non-finite.
            if not torch.isfinite(loss_sum):
                raise NonFiniteLossError(
                    f"loss became non-finite while training experience {exp.index} "
                    f"(epoch {epoch}); try a smaller train.lr or train.grad_clip"
                )
        distributed.reduce_shard_state(self, dist)
        # Counted before after_experience, which may freeze what was trained (adapters).
        trainable = optimized_parameters(self.optimizer)
        self.after_experience(exp)
        return ExperienceStats(
            index=exp.index,
            steps=steps,
            samples=samples,
            final_loss=float(loss_sum) / max(n_last, 1),
            trainable_params=trainable,
        )

    def _training_mask(self, exp: Experience) -> Tensor | None:
        """The classes the training loss sees under ``train.logit_mask`` (None: all)."""
        info = self.context.stream
        if self.context.train.logit_mask == "none":
            return None
        if self.context.train.logit_mask == "current":
            classes = set(exp.classes)
        else:
            classes = {c for cs in info.classes[: exp.index + 1] for c in cs} | set(exp.classes)
        return class_mask(info.n_classes, classes, self.device)


def _refuse_loop_options(name: str, tc: TrainConfig, *, skip: tuple[str, ...] = ()) -> None:
    """A strategy with its own training loop cannot honour the base loop's options."""
    set_ = [
        f"train.{k}={v}"
        for k, v, default in (
            ("reset_optimizer", tc.reset_optimizer, True),
            ("lr_schedule", tc.lr_schedule, "constant"),
            ("warmup_steps", tc.warmup_steps, 0),
            ("logit_mask", tc.logit_mask, "none"),
        )
        if v != default and k not in skip
    ]
    if set_:
        raise ConfigError(
            f"strategy {name!r} runs its own training loop and does not support {', '.join(set_)}"
        )


def optimized_parameters(optimizer: torch.optim.Optimizer | None) -> int:
    """Elements of the distinct parameters ``optimizer`` updates (those that take gradients)."""
    if optimizer is None:
        return 0
    params = (p for g in optimizer.param_groups for p in g["params"] if p.requires_grad)
    return count_parameters(params)


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
    """Import every module of the ``cl.strategies`` package (each registers itself)."""
    import importlib
    import pkgutil

    import cl.strategies

    for mod in pkgutil.iter_modules(cl.strategies.__path__):
        if not mod.name.startswith("_"):
            importlib.import_module(f"cl.strategies.{mod.name}")


def list_strategies() -> list[str]:
    load_builtin_strategies()
    return STRATEGIES.names()


def get_strategy(name: str) -> type[Strategy[Any]]:
    load_builtin_strategies()
    return STRATEGIES.get(name).builder
