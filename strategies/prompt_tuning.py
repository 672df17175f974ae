"""Prompt tuning, continued task after task: the naive baseline of continual prompt tuning.

One soft prompt (Lester et al., "The Power of Scale for Parameter-Efficient Prompt Tuning",
EMNLP 2021) is prepended to a frozen transformer and tuned on each task in turn, with the
classifier; nothing protects what earlier tasks learned, so the shared prompt drifts and old
tasks' heads read features they were not trained on. Progressive Prompts and Q-tuning
(``progprompt``, ``qtuning``) are measured against it.

On a language model (``model=hf_seq2seq`` or ``hf_causal_lm``, text-to-text streams: the
papers' setting) there is no head: the prompts go in front of the frozen LM's input embeddings
(:mod:`cl.models.lm_prompting`) and the loss is on the target tokens of the LM's own vocabulary;
rank classification and generation read the same prompts (:meth:`PromptStrategy.generate`).

This module also holds :class:`PromptStrategy`, the shared base of the three prompt-tuning
strategies: backbone check and freezing, the read-out, logits masked to the current task's
classes while training (per-task label spaces), and prediction (and generation, on LMs)
grouped by task id.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from cl.errors import ConfigError
from cl.models.lm import LanguageModel
from cl.models.lm_prompting import embed_dim, prompted_features, vocab_prompt
from cl.models.prompt_queue import ResidualMLP
from cl.models.prompting import PromptableBackbone, frozen_promptable
from cl.strategy import Strategy, StrategyConfig, register_strategy
from cl.streams.base import Experience
from cl.testing import TEXT_SETUP
from cl.validation import non_negative, one_of, positive

READOUTS = ("mean", "cls", "prompt")
INITS = ("random", "vocab")


@dataclass
class PromptConfig(StrategyConfig):
    """Settings shared by the prompt-tuning strategies.

    Attributes:
        prompt_length: Tokens per prompt.
        init_std: Prompts start as ``N(0, init_std^2)`` (token embeddings of MiniLM have a
            standard deviation of about 0.05).
        prompt_init: ``random`` (``init_std``) or ``vocab``: embeddings of sampled vocabulary
            tokens (Lester et al. 2021, Sec. 3.2; language models only).
        mlp_bottleneck: Width of the residual MLP reparameterising the prompt (0: none).
        readout: ``mean`` (mean of the text tokens' outputs), ``cls`` or ``prompt`` (mean of
            the prompt-position outputs). Classifier models only.
        mask_other_logits: While training, logits of classes outside the current experience
            are masked (per-task label spaces; old classes' head rows get no gradient).
        train_head: Train the classifier with the prompts. ``false`` keeps the head at its
            (seeded random) initialisation, so prompts carry all task knowledge, as with the
            frozen verbaliser of a text-to-text model in the papers' setting.
    """

    name: str = "prompt_tuning"
    prompt_length: int = 4
    init_std: float = 0.05
    prompt_init: str = "random"
    mlp_bottleneck: int = 64
    readout: str = "mean"
    mask_other_logits: bool = True
    train_head: bool = True

    def validate(self) -> None:
        positive("strategy", self, "prompt_length", "init_std")
        non_negative("strategy", self, "mlp_bottleneck")
        one_of("strategy", self, "readout", READOUTS)
        one_of("strategy", self, "prompt_init", INITS)


PC = TypeVar("PC", bound=PromptConfig)


class PromptStrategy(Strategy[PC]):
    """Base of the prompt strategies: subclasses say which prompts a task reads."""

    modalities = ("vision", "text", "text2text")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        c = self.config
        # A language model reads the prompts through its input embeddings (no head).
        self.lm = self.model if isinstance(self.model, LanguageModel) else None
        if self.lm is not None:
            self.lm.requires_grad_(False)
        elif c.prompt_init != "random":
            raise ConfigError("strategy.prompt_init=vocab needs a language model (hf_seq2seq ...)")
        backbone = None if self.lm is not None else frozen_promptable(self.model, self.name)
        if c.prompt_length < 1 or c.mlp_bottleneck < 0 or c.init_std <= 0:
            raise ConfigError(
                "strategy.prompt_length must be >= 1, mlp_bottleneck >= 0, init_std > 0"
            )
        if c.readout not in READOUTS:
            raise ConfigError(f"strategy.readout must be one of {READOUTS}, got {c.readout!r}")
        self.backbone: PromptableBackbone | None = backbone  # frozen: prompts and heads train
        self.dim = embed_dim(self.lm) if self.lm is not None else backbone.embed_dim  # type: ignore[union-attr]
        self.task = 0
        self._classes: Tensor | None = None
        self._feat: Tensor | None = None  # read-out of the last training forward

    # ------------------------------------------------------------- helpers
    def new_prompt(self, n_tokens: int, *parts: int) -> nn.Parameter:
        """A fresh prompt from a generator seeded by the run seed and ``parts`` (resumable)."""
        g = self.generator(7919, *parts)
        if self.lm is not None and self.config.prompt_init == "vocab":
            return nn.Parameter(vocab_prompt(self.lm, n_tokens, g).to(self.device))
        p = torch.randn(n_tokens, self.dim, generator=g) * self.config.init_std
        return nn.Parameter(p.to(self.device))

    def new_mlp(self, *parts: int) -> ResidualMLP | None:
        if self.config.mlp_bottleneck == 0:
            return None
        state = torch.random.get_rng_state()
        torch.manual_seed(int(self.generator(104729, *parts).initial_seed()) % (2**31))
        mlp = ResidualMLP(self.dim, self.config.mlp_bottleneck).to(self.device)
        torch.random.set_rng_state(state)
        return mlp

    def features(self, x: Tensor, prompts: Tensor | None) -> Tensor:
        """Read-out of a pass with ``prompts`` (``[P, D]``) in front of ``x`` (on a language
        model: the mean output over the prompted input, :func:`prompted_features`)."""
        if self.lm is not None:
            return prompted_features(self.lm, x, prompts)
        assert self.backbone is not None
        enc = self.backbone.encode(x, prompts)
        if self.config.readout == "prompt":
            return enc.prompt_mean()
        return enc.pooled(self.config.readout)

    @abstractmethod
    def prompts_for(self, task: int | None, *, training: bool) -> Tensor:
        """``[P, D]`` prompt tokens that ``task`` reads (``training``: the current task)."""

    # ----------------------------------------------------------------- hooks
    def before_experience(self, exp: Experience) -> None:
        self.task = exp.task_id
        if self.lm is None:  # an LM's "classes" are its vocabulary: nothing to mask
            self._classes = torch.as_tensor(exp.classes, device=self.device)

    def run(self, x: Tensor, prompts: Tensor, task_ids: Tensor | None) -> Tensor:
        """Evaluation logits with ``prompts``: the LM's ``[B, V, Lt]`` or the head's."""
        if self.lm is not None:
            return self.lm(x, prompts=prompts)
        return self.model.head(self.features(x, prompts), task_ids)

    def forward(self, x: Tensor, task_ids: Tensor | None) -> Tensor:
        if self.lm is not None:
            return self.lm(x, prompts=self.prompts_for(self.task, training=True))
        self._feat = self.features(x, self.prompts_for(self.task, training=True))
        logits = self.model.head(self._feat, task_ids)
        if self.config.mask_other_logits and self._classes is not None:
            keep = torch.zeros(logits.shape[1], dtype=torch.bool, device=logits.device)
            keep[self._classes] = True
            logits = logits.masked_fill(~keep, float("-inf"))
        return logits

    def predict(self, x: Tensor, task_ids: Tensor | None) -> Tensor:
        if task_ids is None:
            return self.run(x, self.prompts_for(None, training=False), None)
        # Each task reads its own prompts: one pass per task id present in the batch.
        out: Tensor | None = None
        for t in torch.unique(task_ids).tolist():
            rows = (task_ids == t).nonzero(as_tuple=True)[0]
            logits = self.run(x[rows], self.prompts_for(int(t), training=False), task_ids[rows])
            if out is None:
                out = logits.new_full((len(x), *logits.shape[1:]), float("-inf"))
            out[rows] = logits
        assert out is not None
        return out

    def generate(
        self,
        ids: Tensor,
        mask: Tensor,
        *,
        max_new_tokens: int,
        eos_id: int,
        pad_id: int,
        task_ids: Tensor | None = None,
    ) -> Tensor:
        """Greedy generation on a language model with the prompts each row's task reads
        (:meth:`LanguageModel.generate_ids`; the evaluator's hook)."""
        if self.lm is None:
            raise ConfigError(f"strategy {self.name!r} generates text only on a language model")
        kw: dict[str, Any] = dict(max_new_tokens=max_new_tokens, eos_id=eos_id, pad_id=pad_id)
        groups = [None] if task_ids is None else torch.unique(task_ids).tolist()
        out = ids.new_full((len(ids), max_new_tokens), pad_id)
        for t in groups:
            rows = torch.arange(len(ids), device=ids.device) if t is None else task_ids == t
            p = self.prompts_for(None if t is None else int(t), training=False)
            new = self.lm.generate_ids(ids[rows], mask[rows], prompts=p, **kw)
            out[rows, : new.shape[1]] = new
        return out

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.model.head.parameters()) if self.config.train_head else []

    @staticmethod
    def nbytes(*tensors: Tensor) -> int:
        return sum(t.numel() * t.element_size() for t in tensors)


@register_strategy("prompt_tuning")
class PromptTuning(PromptStrategy[PromptConfig]):
    """One prompt (plus its residual MLP) shared by all tasks and tuned on each in turn."""

    config_cls = PromptConfig
    test_setup = TEXT_SETUP

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.prompt = self.new_prompt(self.config.prompt_length, 0)
        self.mlp = self.new_mlp(0)

    def prompts_for(self, task: int | None, *, training: bool) -> Tensor:
        return self.prompt if self.mlp is None else self.mlp(self.prompt)

    def trainable_parameters(self) -> list[nn.Parameter]:
        mlp = [] if self.mlp is None else list(self.mlp.parameters())
        return [self.prompt, *mlp, *self.head_parameters()]

    def state_dict(self) -> dict[str, Any]:
        mlp = None if self.mlp is None else self.mlp.state_dict()
        return {**super().state_dict(), "prompt": self.prompt.detach().clone(), "mlp": mlp}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        with torch.no_grad():
            self.prompt.copy_(state["prompt"])
        if self.mlp is not None:
            self.mlp.load_state_dict(state["mlp"])
