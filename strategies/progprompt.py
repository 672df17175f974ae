"""Progressive Prompts (Razdaibiedina et al., "Progressive Prompts: Continual Learning for
Language Models", ICLR 2023, arXiv:2301.12314).

Each task ``k`` learns a new soft prompt ``P_k``, reparameterised during training by a residual
MLP (``P_k = p_k + MLP_k(p_k)``, the MLP discarded afterwards); earlier prompts are frozen and
concatenated in front of it: the input of task ``k`` is ``[P_k; P_{k-1}; ...; P_1; x]``. A task
is evaluated with the prompts up to its own (task ids at test time, as in the paper's BERT
code), so with a frozen backbone and per-task label spaces old tasks' predictions never change.
The price is an input that grows by ``prompt_length`` tokens per task: the cost that Q-tuning
bounds with its queue (see ``benchmarks/qtuning_cost.py``).

On a language model (the paper's T5 setting; decoders too) the prompts go in front of the
frozen LM's input embeddings and the loss is on the target tokens (no head): an old task's
generations and label likelihoods are exactly those it had when its training ended.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from cl.strategies.prompt_tuning import PromptConfig, PromptStrategy
from cl.strategy import register_strategy
from cl.streams.base import Experience
from cl.testing import TEXT_SETUP


@dataclass
class ProgPromptConfig(PromptConfig):
    """Progressive Prompts settings (see :class:`~strategies.prompt_tuning.PromptConfig`)."""

    name: str = "progprompt"


@register_strategy("progprompt")
class ProgPrompt(PromptStrategy[ProgPromptConfig]):
    """A new prompt per task; old prompts frozen and concatenated (newest first)."""

    config_cls = ProgPromptConfig
    test_setup = TEXT_SETUP
    needs_task_id_at_test = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # Frozen, materialised prompts of the tasks trained so far (task id -> [L, D]).
        self.prompts: dict[int, Tensor] = {}
        self.order: list[int] = []
        self.current = self.new_prompt(self.config.prompt_length, 0)
        self.mlp = self.new_mlp(0)

    def _materialise(self) -> Tensor:
        return self.current if self.mlp is None else self.mlp(self.current)

    def prompts_for(self, task: int | None, *, training: bool) -> Tensor:
        if training:
            old = [self.prompts[t] for t in reversed(self.order)]
            return torch.cat([self._materialise(), *old])
        # A task reads the prompts up to its own; an unseen task (or no task id) all of them.
        upto = self.order.index(task) + 1 if task in self.order else len(self.order)
        seq = [self.prompts[t] for t in reversed(self.order[:upto])]
        return torch.cat(seq) if seq else self._materialise()

    def before_experience(self, exp: Experience) -> None:
        super().before_experience(exp)
        # A fresh prompt and MLP per task (the paper's per-task reparameterisation).
        self.current = self.new_prompt(self.config.prompt_length, exp.index + 1)
        self.mlp = self.new_mlp(exp.index + 1)

    def trainable_parameters(self) -> list[nn.Parameter]:
        mlp = [] if self.mlp is None else list(self.mlp.parameters())
        return [self.current, *mlp, *self.head_parameters()]

    def after_experience(self, exp: Experience) -> None:
        with torch.no_grad():
            self.prompts[exp.task_id] = self._materialise().detach().clone()
        if exp.task_id not in self.order:
            self.order.append(exp.task_id)

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "prompts": {t: p.clone() for t, p in self.prompts.items()},
            "order": list(self.order),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.prompts = {int(t): p.to(self.device) for t, p in state["prompts"].items()}
        self.order = list(state["order"])
