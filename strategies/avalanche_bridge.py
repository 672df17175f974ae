"""Bridge: run any ``avalanche.training`` strategy under our evaluator, sinks and checkpoints.

Lomonaco et al., "Avalanche: an End-to-End Library for Continual Learning", CVPR Workshops
2021. Each of our experiences is converted to an Avalanche experience and handed to the
Avalanche strategy's ``train``; evaluation, the accuracy matrices, the ledger and the sinks are
ours, so results are directly comparable with our own strategies.

Checkpoints hold the Avalanche strategy's own state (replay buffers, importances, teachers,
clocks, the optimizer's state), pickled as Avalanche's own checkpointing does (dill) with the
model, its tensors and the optimizer referenced rather than copied, so a resumed run continues
exactly. A strategy whose state cannot be pickled refuses ``resume=`` with a clear error.
"""

from __future__ import annotations

import copy
import inspect
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from cl.avalanche_state import TRANSIENT, dump_state, load_state, tensor_bytes
from cl.errors import ConfigError, NonFiniteLossError
from cl.strategy import ExperienceStats, Strategy, StrategyConfig, register_strategy
from cl.streams.avalanche import to_avalanche_experience
from cl.streams.base import Experience


@dataclass
class AvalancheBridgeConfig(StrategyConfig):
    """Bridge settings.

    The model, optimizer (``train.optimizer``, ``train.lr``, ...), batch size and epochs are
    ours; the Avalanche strategy gets them as ``model``, ``optimizer``, ``train_mb_size``,
    ``train_epochs`` and ``eval_mb_size``, plus cross-entropy as ``criterion``. One optimizer
    serves every experience, as in Avalanche. ``train.grad_clip`` clips the gradient norm
    before every optimizer step, ``train.amp`` runs Avalanche's training under bf16 autocast
    on CUDA and ``train.compile`` compiles the model in place; ``train.reset_optimizer`` (our
    loop's fresh optimizer per experience) does not apply: ``reset_optimizer_state`` decides
    (``train.reset_optimizer=false`` is accepted as the same request as its default).

    Attributes:
        strategy_name: Class name in ``avalanche.training`` (``EWC``, ``SynapticIntelligence``,
            ``AGEM``, ``DER``, ``GDumb``, ...).
        kwargs: Keyword arguments of that class (e.g. ``{si_lambda: 1.0}``).
        task_labels: Give task ids to Avalanche (null: only on task_il streams; otherwise
            every sample has task 0, as in Avalanche's class-incremental benchmarks). Models are
            called as ``model(x)``: a multi-head model then applies all its heads.
        reset_optimizer_state: Avalanche's ``make_optimizer(reset_optimizer_state=...)`` at
            every experience: False (Avalanche's default) keeps the optimizer's state (momentum,
            Adam's moments) from one experience to the next; True clears it.
    """

    name: str = "avalanche"
    strategy_name: str = "Naive"
    kwargs: dict[str, Any] = field(default_factory=dict)
    task_labels: bool | None = None
    reset_optimizer_state: bool = False


def avalanche_strategy_class(name: str) -> type:
    """The class ``avalanche.training.<name>``, or a ConfigError listing the valid names."""
    import avalanche.training as avt
    from avalanche.training.templates import BaseTemplate

    cls = getattr(avt, name, None)
    if not (inspect.isclass(cls) and issubclass(cls, BaseTemplate)):
        valid = sorted(
            n for n, c in vars(avt).items() if inspect.isclass(c) and issubclass(c, BaseTemplate)
        )
        raise ConfigError(f"unknown Avalanche strategy {name!r}; valid names: {', '.join(valid)}")
    return cls


@register_strategy("avalanche")
class AvalancheBridge(Strategy[AvalancheBridgeConfig]):
    """Runs ``avalanche.training.<strategy_name>`` on each of our experiences."""

    config_cls = AvalancheBridgeConfig
    own_loop_options = ("reset_optimizer",)
    # Avalanche 0.6's DistributedHelper wraps the model in DDP and loads shards through a
    # DistributedSampler (per-rank batches of train_mb_size, padded shards: not our global
    # batch), and most of its plugins (EWC, LwF, SI, ...) keep per-rank state it does not
    # reduce (it warns "not compatible with distributed training"): refused under torchrun.
    distributed_note = (
        " (Avalanche 0.6 trains distributed only with a few plugins, on its own samplers, and "
        "does not keep its strategies' state identical across ranks)"
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not self.context.train.reset_optimizer and self.config.reset_optimizer_state:
            raise ConfigError(
                "train.reset_optimizer=false contradicts strategy.reset_optimizer_state=true"
            )
        self._cls = avalanche_strategy_class(self.config.strategy_name)
        self._av: Any = None
        self._on_step: Callable[[int, int, Tensor], None] | None = None
        self._steps = self._samples = self._epoch_steps = self._exp_index = 0
        self._loss_sum = torch.zeros(())

    def _build(self) -> Any:
        from avalanche.training.plugins import EvaluationPlugin

        tc = self.context.train
        params = [p for p in self.model.parameters() if p.requires_grad]
        args: dict[str, Any] = {
            "model": self.model,
            "optimizer": self.build_optimizer(params),
            "criterion": nn.CrossEntropyLoss(),
            "train_mb_size": tc.batch_size,
            "train_epochs": tc.epochs,
            "eval_mb_size": tc.eval_batch_size,
            "device": self.device,
            "evaluator": EvaluationPlugin(loggers=[]),  # our sinks log; Avalanche stays quiet
            "plugins": [_step_plugin(self)],
        }
        if tc.compile:  # in place: Avalanche calls the model itself, names stay the same
            self.model.compile()
        sig = inspect.signature(self._cls.__init__).parameters
        accepts_any = any(p.kind is p.VAR_KEYWORD for p in sig.values())
        args = {k: v for k, v in args.items() if k in sig or accepts_any}
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="No loggers specified")
                return self._cls(**args, **dict(self.config.kwargs))
        except TypeError as e:
            raise ConfigError(f"cannot build Avalanche {self._cls.__name__}: {e}") from None

    def train_experience(
        self, exp: Experience, *, on_step: Callable[[int, int, Tensor], None] | None = None
    ) -> ExperienceStats:
        if self._av is None:
            self._av = self._build()
        info = self.context.stream
        tl = (
            info.scenario == "task_il"
            if self.config.task_labels is None
            else self.config.task_labels
        )
        av_exp = to_avalanche_experience(exp, info, task_labels=tl)
        self._exp_index = exp.index
        self._on_step, self._steps, self._samples = on_step, 0, 0
        self._loss_sum = torch.zeros((), device=self.device)
        with self.autocast():
            self._av.train(
                av_exp,
                eval_streams=[],
                num_workers=0,
                reset_optimizer_state=self.config.reset_optimizer_state,
            )
        self.model = self._av.model  # some strategies (GDumb) replace the model object
        self._check_finite()
        return ExperienceStats(
            index=exp.index,
            steps=self._steps,
            samples=self._samples,
            final_loss=float(self._loss_sum) / max(self._epoch_steps, 1),  # the last epoch
            trainable_params=sum(p.numel() for p in self.model.parameters() if p.requires_grad),
        )

    def _check_finite(self) -> None:
        if not torch.isfinite(self._loss_sum):
            raise NonFiniteLossError(
                f"loss became non-finite while training experience {self._exp_index} "
                f"with Avalanche {self._cls.__name__}; try a smaller train.lr or train.grad_clip"
            )

    def predict(self, x: Tensor, task_ids: Tensor | None) -> Tensor:
        return self.model(x, task_ids)  # type: ignore[no-any-return]

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"model": self.model.state_dict(), "avalanche": None}
        if self._av is None:
            return state
        try:
            state["avalanche"] = dump_state(self._av, self._references())
        except Exception as e:
            state["unresumable"] = f"{type(e).__name__}: {e}"
            return state
        # A copy: the live optimizer keeps updating its state tensors in place.
        state["optimizer"] = copy.deepcopy(self._av.optimizer.state_dict())
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "unresumable" in state or ("avalanche" not in state and "model" in state):
            why = state.get("unresumable", "the checkpoint holds no Avalanche strategy state")
            raise ConfigError(
                f"cannot resume Avalanche {self._cls.__name__}: its state was not saved ({why})"
            )
        self.model.load_state_dict(state["model"])
        if state["avalanche"] is None:
            return
        if self._av is None:
            self._av = self._build()
        vars(self._av).update(load_state(state["avalanche"], self._references()))
        self._av.optimizer.load_state_dict(state["optimizer"])
        self.model = self._av.model

    def _references(self) -> dict[str, Any]:
        """Live objects the pickled state refers to by name instead of copying."""
        refs: dict[str, Any] = {
            "strategy": self._av,
            "model": self.model,
            "optimizer": self._av.optimizer,
            "evaluator": self._av.evaluator,
            "device": self.device,
        }
        refs.update({f"step:{i}": p for i, p in enumerate(self._av.plugins) if _ours(p)})
        for name, t in self.model.state_dict(keep_vars=True).items():
            refs[f"tensor:{name}"] = t
        return refs

    def extra_state_bytes(self) -> int:
        """Tensors the Avalanche strategy keeps beyond the model's own, in numel x element
        size: buffers (each sample's input, label and task id as stored, read from the
        buffer), importances, teachers, and the optimizer's state, which Avalanche carries from
        one experience to the next."""
        if self._av is None:
            return 0
        seen: set[int] = {id(p) for p in self.model.state_dict(keep_vars=True).values()}
        seen |= {id(self.model), id(self._av), id(self._av.evaluator)}
        held = {k: v for k, v in vars(self._av).items() if k not in TRANSIENT}
        return tensor_bytes(held, seen, 12)


def _ours(plugin: Any) -> bool:
    return type(plugin).__name__ == "StepPlugin" and type(plugin).__module__ == __name__


def _step_plugin(bridge: AvalancheBridge) -> Any:
    """A plugin forwarding each Avalanche training iteration to our progress callback."""
    from avalanche.training.plugins import SupervisedPlugin

    class StepPlugin(SupervisedPlugin):  # type: ignore[misc]
        def before_training_epoch(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
            bridge._check_finite()  # one host sync per epoch, as in the native loop
            bridge._loss_sum.zero_()  # final_loss: the mean over the last epoch
            bridge._epoch_steps = 0

        def before_update(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
            clip = bridge.context.train.grad_clip
            if clip is not None:
                params = [p for g in strategy.optimizer.param_groups for p in g["params"]]
                torch.nn.utils.clip_grad_norm_(params, clip)

        def after_training_iteration(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
            loss = strategy.loss.detach().float().sum()
            bridge._epoch_steps += 1
            bridge._steps += 1
            bridge._samples += len(strategy.mb_y)
            bridge._loss_sum += loss
            if bridge._on_step is not None:
                bridge._on_step(bridge._steps, len(strategy.mb_y), loss)

    return StepPlugin()
