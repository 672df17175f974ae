"""Elastic Weight Consolidation (EWC) and online EWC.

Kirkpatrick et al., "Overcoming catastrophic forgetting in neural networks", PNAS 2017;
online EWC: Schwarz et al., "Progress & Compress: A scalable framework for continual
learning", ICML 2018 (see also Huszár, "Note on the quadratic penalties in elastic weight
consolidation", PNAS 2018). On Fisher estimators: van de Ven, "On the Computation of the
Fisher Information in Continual Learning", ICLR Blogposts 2025.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor

from cl.errors import ConfigError
from cl.fisher import ESTIMATORS, ImplicitPenaltyGrad, Quadratic, add_penalty_grad, estimate_fisher
from cl.strategy import Batch, Strategy, StrategyConfig, register_strategy
from cl.streams.base import Experience, TensorData
from cl.validation import fraction, non_negative, one_of, positive


@dataclass
class EWCConfig(StrategyConfig):
    """EWC settings.

    The penalty added to the task loss is ``(ewc_lambda / 2) * sum_i F_i (theta_i - theta*_i)^2``
    (the paper's 1/2 convention), summed over every earlier experience in ``separate`` mode.
    Avalanche's ``EWC(ewc_lambda=L)`` adds ``L * sum F (theta - theta*)^2`` (no 1/2) with the
    ``batched`` Fisher: ``estimator=batched, ewc_lambda=2L`` is its penalty exactly. F is a
    mean over samples (over minibatches for ``batched``).

    Attributes:
        ewc_lambda: Penalty strength (0 turns the penalty off: naive fine-tuning).
        mode: ``separate``: one penalty per earlier experience, each with its own Fisher and
            anchor. ``online``: a single penalty with the running Fisher
            ``F* <- gamma * F* + F_t`` anchored at the latest parameters (online EWC).
        gamma: Decay of the running Fisher in online mode (1: plain sum).
        gamma_in_penalty: Online mode only. False (mammoth): gamma decays the running Fisher
            when it is accumulated, the penalty uses ``F*``. True (Schwarz et al. 2018, van de
            Ven's code): the penalty also uses the decayed ``gamma * F*``.
        estimator: How the diagonal Fisher is estimated after each experience:
            ``exact``: expectation over the model's own predictive distribution,
            ``mean_x sum_c p(c|x) (d log p(c|x))^2`` (the true Fisher; costs one backward per
            class, vmapped); ``sampled``: one label per sample drawn from ``p(.|x)`` (unbiased
            Monte-Carlo estimate of the exact one, one backward); ``empirical``: the true labels;
            ``batched``: the squared gradient of the minibatch-mean loss, averaged over
            minibatches of ``train.batch_size`` (Avalanche's estimate; it shrinks with the
            batch size and is not a per-sample Fisher).
        fisher_classes: The predictive distribution ``p(c|x)`` of the Fisher: ``all``: softmax
            over every output (Avalanche, mammoth); ``seen``: softmax over the logits of the
            classes seen so far, this experience's included, and for ``exact`` the sum over
            those classes only (van de Ven's exact Fisher in class-incremental learning).
        fisher_method: ``auto``: closed form for ``nn.Linear`` layers on 2-D inputs (the
            per-sample squared gradient of ``W`` is ``delta^2 a^2``, summed with one matmul),
            ``torch.func`` per-sample gradients (``vmap(grad)``) otherwise; ``vmap``: always
            ``torch.func``. Both give the same Fisher.
        fisher_batch_size: Samples per chunk of the Fisher pass (bounds its memory).
        fisher_max_samples: Estimate the Fisher on a random subset of this many training
            samples (null: all of them). An unbiased estimate of the full-data Fisher whose
            noise is already small at a few thousand samples; it bounds the cost of the
            Fisher pass on large experiences.
        penalty_step: ``explicit``: the penalty's gradient ``ewc_lambda * A (theta - m)`` is
            added to the task gradient (the paper). With SGD this diverges once
            ``lr * ewc_lambda * A > 2 (1 + momentum)`` for some weight (a warning says so
            beforehand). ``implicit`` (SGD only): the proximal step for the quadratic,
            ``grad <- (g + ewc_lambda * A (theta - m)) / (1 + lr * ewc_lambda * A)`` with the
            step's current lr: with plain SGD it lands exactly on ``argmin_theta' <g, theta'> +
            penalty(theta') + |theta' - theta|^2 / (2 lr)``, which is stable for any lambda and
            has the same fixed points (with momentum the same rescaling: the penalty's
            effective curvature stays below ``1 / lr``, inside the stable range). ``auto``
            (default): ``implicit`` with ``train.optimizer=sgd``, ``explicit`` with Adam(W),
            whose normalised steps do not blow up on a stiff quadratic.
    """

    name: str = "ewc"
    ewc_lambda: float = 100.0
    mode: str = "separate"
    gamma: float = 1.0
    gamma_in_penalty: bool = False
    estimator: str = "exact"
    fisher_classes: str = "all"
    fisher_method: str = "auto"
    fisher_batch_size: int = 512
    fisher_max_samples: int | None = 10000
    penalty_step: str = "auto"

    def validate(self) -> None:
        non_negative("strategy", self, "ewc_lambda")
        fraction("strategy", self, "gamma", high_open=False)
        positive("strategy", self, "fisher_batch_size", "fisher_max_samples")
        one_of("strategy", self, "mode", ("separate", "online"))
        one_of("strategy", self, "estimator", ESTIMATORS)
        one_of("strategy", self, "fisher_classes", ("all", "seen"))
        one_of("strategy", self, "fisher_method", ("auto", "vmap"))
        one_of("strategy", self, "penalty_step", ("auto", "explicit", "implicit"))
        if self.gamma_in_penalty and self.mode != "online":
            raise ConfigError("strategy.gamma_in_penalty=true needs strategy.mode=online")


@register_strategy("ewc")
class EWC(Strategy[EWCConfig]):
    """EWC with separate penalties per experience or online (decayed running Fisher).

    Separate penalties are stored merged: ``sum_k F_k (theta - theta_k)^2`` equals
    ``A (theta - m)^2 + const`` with ``A = sum_k F_k`` and ``m = sum_k F_k theta_k / A``, so the
    per-step cost and the memory do not grow with the number of experiences.
    """

    config_cls = EWCConfig
    modalities = ("vision", "text", "text2text")
    packed_rows = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        c = self.config
        c.validate()  # also when built directly, not through build()
        if c.penalty_step == "implicit" and self.context.train.optimizer != "sgd":
            raise ConfigError("strategy.penalty_step=implicit needs train.optimizer=sgd")
        if self.context.stream.modality == "text2text" and c.estimator != "batched":
            raise ConfigError(
                "ewc on a language model needs strategy.estimator=batched (per-sample Fishers "
                f"over the vocabulary are not supported), got {c.estimator!r}"
            )
        self.importance: dict[str, Tensor] = {}  # A: summed (or decayed) Fisher
        self.anchor: dict[str, Tensor] = {}  # m: Fisher-weighted mean of the anchors
        self._terms: tuple[list[Tensor], list[Tensor], list[Tensor]] | None = None
        self._hooks: list[Any] = []

    @property
    def implicit(self) -> bool:
        """Whether the penalty takes the proximal (implicit) step (see ``penalty_step``)."""
        step = self.config.penalty_step
        return step == "implicit" or (step == "auto" and self.context.train.optimizer == "sgd")

    @property
    def penalty_weight(self) -> float:
        """The factor of ``A (theta - m)^2`` in the penalty, before the 1/2: ``ewc_lambda``,
        times ``gamma`` in online mode with ``gamma_in_penalty``."""
        c = self.config
        return c.ewc_lambda * (c.gamma if c.gamma_in_penalty else 1.0)

    # ------------------------------------------------------------------ penalty
    def penalty(self) -> Tensor:
        """``(penalty_weight / 2) * sum A (theta - m)^2`` with its graph (tests and reports)."""
        if not self.importance:
            return torch.zeros((), device=self.device)
        if self._terms is None:
            named = dict(self.model.named_parameters())
            keys = [n for n in self.importance if n in named]
            self._terms = (
                [named[n] for n in keys],
                [self.importance[n] for n in keys],
                [self.anchor[n] for n in keys],
            )
        params, imp, anchor = self._terms
        return Quadratic.apply(0.5 * self.penalty_weight, imp, anchor, *params)

    def extra_loss(self, batch: Batch, logits: Tensor) -> Tensor | None:
        # The penalty's gradient penalty_weight * A (theta - m) is added to each parameter's
        # gradient by a hook (one fused pass per tensor) instead of putting the quadratic in
        # the graph (several passes per step): the loop's loss is the task loss alone.
        return None

    def _current_lr(self) -> float:
        assert self.optimizer is not None
        return float(self.optimizer.param_groups[0]["lr"])

    def before_experience(self, exp: Experience) -> None:
        self._remove_hooks()
        if not self.importance or self.penalty_weight == 0:
            return
        named = dict(self.model.named_parameters())
        # Distributed: ranks' gradients are summed, so one rank adds the penalty's gradient.
        once = self.context.dist.is_main
        for n, a in self.importance.items():
            p = named.get(n)
            if p is None or not p.requires_grad:
                continue
            scale = (self.penalty_weight * a).to(p.dtype)
            shift = scale * self.anchor[n].to(p.dtype)
            hook: Any = partial(add_penalty_grad, scale, shift)
            if self.implicit:
                hook = ImplicitPenaltyGrad(scale, shift, self._current_lr, penalty=once)
            elif not once:
                continue  # the penalty's gradient is added on one rank only
            self._hooks.append(p.register_post_accumulate_grad_hook(hook))
        if not self.implicit:
            self._warn_if_unstable()

    def _warn_if_unstable(self) -> None:
        # Gradient descent on lambda/2 * A * (theta - m)^2 oscillates and diverges once
        # lr * lambda * A > 2 (2 * (1 + momentum) with heavy-ball momentum); the NaN guard
        # would stop the run later with a less specific message.
        tc = self.context.train
        if tc.optimizer != "sgd" or not self.importance:
            return
        a_max = max(float(a.max()) for a in self.importance.values())
        curvature = tc.effective_lr * self.penalty_weight * a_max  # the optimiser's lr
        bound = 2.0 * (1.0 + tc.momentum)
        if curvature > bound:
            warnings.warn(
                f"ewc: lr * strategy.ewc_lambda * max(Fisher) = {curvature:.3g} exceeds "
                f"{bound:g}: SGD on the EWC penalty diverges for the most important weights; "
                "lower train.lr or strategy.ewc_lambda, or set strategy.penalty_step=implicit",
                RuntimeWarning,
                stacklevel=2,
            )

    def _remove_hooks(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def after_experience(self, exp: Experience) -> None:
        self._remove_hooks()
        fisher = self.fisher(exp)
        params = {n: p.detach().float() for n, p in self.model.named_parameters() if n in fisher}
        for n, f in fisher.items():
            if n not in self.importance or self.config.mode == "online":
                old = self.importance.get(n, torch.zeros_like(f)) * self.config.gamma
                self.importance[n], self.anchor[n] = old + f, params[n].clone()
            else:
                a_old, m_old = self.importance[n], self.anchor[n]
                a_new = a_old + f
                m_new = (a_old * m_old + f * params[n]) / a_new.clamp_min(1e-30)
                self.importance[n] = a_new
                self.anchor[n] = torch.where(a_new > 0, m_new, params[n])
        self._terms = None  # the cached penalty terms point at the old tensors

    # ------------------------------------------------------------------- Fisher
    def fisher_classes(self, exp: Experience) -> Tensor | None:
        """The classes of the Fisher's predictive distribution (None: every output)."""
        if self.config.fisher_classes == "all":
            return None
        seen = {c for cs in self.context.stream.classes[: exp.index + 1] for c in cs}
        return torch.tensor(sorted(seen | set(exp.classes)), device=self.device)

    def fisher(self, exp: Experience) -> dict[str, Tensor]:
        """Diagonal Fisher of the trainable parameters on ``exp.train`` (see the config)."""
        if not isinstance(exp.train, TensorData):
            raise ConfigError("ewc needs in-memory (tensor) experiences")
        data, c = exp.train, self.config
        if c.fisher_max_samples is not None and c.fisher_max_samples < len(data):
            idx = torch.randperm(len(data), generator=self.generator(exp.index, 77))
            data = data.subset(idx[: c.fisher_max_samples].sort().values.to(data.x.device))
        ids = {id(p) for p in self.trainable_parameters()}
        names = [n for n, p in self.model.named_parameters() if id(p) in ids]
        was_training = self.model.training
        self.model.eval()  # dropout off, batch-norm statistics frozen: the model being kept
        try:
            return estimate_fisher(
                self.model,
                data,
                names,
                estimator=c.estimator,
                method=c.fisher_method,
                chunk_size=c.fisher_batch_size,
                batch_size=self.context.train.batch_size,
                task_ids=self.context.stream.has_task_ids,
                classes=self.fisher_classes(exp),
                generator=self.generator(exp.index, 78),
                dist=self.context.dist,
            )
        finally:
            self.model.train(was_training)

    # ------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "importance": self.importance, "anchor": self.anchor}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.importance = {k: v.to(self.device) for k, v in state["importance"].items()}
        self.anchor = {k: v.to(self.device) for k, v in state["anchor"].items()}
        self._terms = None
