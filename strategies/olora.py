"""O-LoRA: a new LoRA adapter per task, learned in a subspace orthogonal to the previous ones.

Wang et al., "Orthogonal Subspace Learning for Language Model Continual Learning", Findings of
EMNLP 2023 (reference code: cmnfriend/O-LoRA). The language model's weights stay frozen; each
experience adds a LoRA adapter on upstream peft (:class:`cl.adapter_bank.AdapterBank`) while the
previous tasks' adapters stay active and frozen. The loss is

    L = L_task + lambda_1 * sum_{i < t} sum_layers |A_i A_t^T|  +  lambda_2 * ||theta_t||

(:mod:`cl.lora_ortho`): the new adapter's ``A`` rows are pushed out of the input subspaces the
earlier updates read. Test time is task-agnostic, as in the paper: every adapter is active, which
equals the single model with all of them merged into the weights (:meth:`OLoRA.merged_model`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from cl.adapter_bank import AdapterBank
from cl.errors import ConfigError
from cl.lora_ortho import init_lora_, l2_loss, lora_layers, orthogonality_loss
from cl.models.lm import LanguageModel, default_targets
from cl.strategy import Batch, Strategy, StrategyConfig, register_strategy
from cl.streams.base import Experience
from cl.testing import LM_SETUP
from cl.validation import fraction, non_negative, positive

# Salt of the generator that initialises each task's adapter (see init_lora_).
INIT_SALT = 7_013


@dataclass
class OLoRAConfig(StrategyConfig):
    """O-LoRA settings (defaults: the reference's T5 scripts).

    Attributes:
        r: Rank of each task's LoRA adapter.
        lora_alpha: LoRA scaling numerator (the update is scaled by ``lora_alpha / r``).
        lora_dropout: Dropout on the adapter's input.
        target_modules: Module names to adapt; empty: peft's default for the architecture
            (the attention query and value projections).
        lambda_1: Weight of the orthogonality loss.
        lambda_2: Weight of the L2 penalty on the new adapter's parameters.
    """

    name: str = "olora"
    r: int = 8
    lora_alpha: int = 32
    lora_dropout: float = 0.1
    target_modules: list[str] = field(default_factory=list)
    lambda_1: float = 0.5
    lambda_2: float = 0.0

    def validate(self) -> None:
        positive("strategy", self, "r", "lora_alpha")
        non_negative("strategy", self, "lambda_1", "lambda_2")
        fraction("strategy", self, "lora_dropout", high_open=True)


def task_name(index: int) -> str:
    return f"task{index}"


@register_strategy("olora")
class OLoRA(Strategy[OLoRAConfig]):
    """One frozen LoRA per past task, one trained LoRA for the current task, all summed."""

    config_cls = OLoRAConfig
    modalities = ("text2text",)
    test_setup = LM_SETUP  # the contract tests run it on a tiny causal LM

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config.validate()
        if not isinstance(self.model, LanguageModel):
            raise ConfigError(
                "strategy 'olora' needs a language model (model=hf_causal_lm or model=hf_seq2seq)"
            )
        if lora_layers(self.model):
            raise ConfigError(
                "strategy 'olora' adds its own LoRA adapter per task: set model.lora_rank=0"
            )
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.bank = AdapterBank()
        self.current: str | None = None
        # The language model over the bank's adapted copy of the backbone (shares its weights).
        self._lm: list[LanguageModel] = []

    # --------------------------------------------------------------- adapters
    @property
    def names(self) -> list[str]:
        return self.bank.names

    def _add_adapter(self, index: int) -> None:
        from peft import LoraConfig

        cfg = self.config
        targets = list(cfg.target_modules) or default_targets(self.model.backbone)
        pc = LoraConfig(
            r=cfg.r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=targets,
        )
        name = task_name(index)
        try:
            self.bank.add(name, pc, self.model.backbone, self.device)
        except ValueError as e:
            raise ConfigError(f"strategy.target_modules: {str(e).splitlines()[0]}") from None
        init_lora_(lora_layers(self.bank.peft), name, self.generator(index, INIT_SALT))
        if not self._lm:
            kind = self.model.kind  # type: ignore[union-attr]
            self._lm.append(LanguageModel(self.bank.peft.base_model.model, kind=kind))

    def _activate(self, *, dropout: bool) -> None:
        """Every adapter active (frozen but the current task's), ``dropout`` on the current's."""
        name = self.current
        self.bank.activate(self.names, train_dropout=name if dropout else None)
        if name is not None:
            for p in self.bank.adapter_parameters(name):
                p.requires_grad_(True)

    @property
    def lm(self) -> nn.Module:
        """The model the strategy runs: the adapted copy once an adapter exists."""
        return self._lm[0] if self._lm else self.model

    # ------------------------------------------------------------------ hooks
    def before_experience(self, exp: Experience) -> None:
        name = task_name(exp.index)
        if name not in self.names:
            self._add_adapter(exp.index)
        self.current = name
        self._activate(dropout=True)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The current (or, between experiences, the last trained) task's adapter."""
        if self.current is None:
            return []
        return self.bank.adapter_parameters(self.current)

    def forward(self, x: Tensor, task_ids: Tensor | None) -> Tensor:
        return self.lm(x, task_ids)

    def extra_loss(self, batch: Batch, logits: Tensor) -> Tensor | None:
        assert self.current is not None
        cfg = self.config
        loss: Tensor | None = None
        previous = [n for n in self.names if n != self.current]
        if cfg.lambda_1 > 0 and previous:
            ortho = orthogonality_loss(lora_layers(self.bank.peft), previous, self.current)
            if ortho is not None:
                loss = cfg.lambda_1 * ortho
        if cfg.lambda_2 > 0:
            l2 = cfg.lambda_2 * l2_loss(self.bank.adapter_parameters(self.current))
            loss = l2 if loss is None else loss + l2
        return loss

    def after_experience(self, exp: Experience) -> None:
        self._activate(dropout=False)  # the last task's adapter is trained by the next one

    def predict(self, x: Tensor, task_ids: Tensor | None) -> Tensor:
        """Task-agnostic: the sum of every task's adapter, whatever the input's task."""
        return self.lm(x, task_ids)

    def generate(self, ids: Tensor, mask: Tensor, **kw: Any) -> Tensor:
        """Greedy generation with every adapter active (see :mod:`cl.evaluate_lm`)."""
        lm: Any = self.lm
        return lm.generate_ids(ids, mask, **kw)  # type: ignore[no-any-return]

    @torch.no_grad()
    def merged_model(self) -> LanguageModel:
        """A plain language model with every task's adapter merged into its weights (a copy)."""
        if not self.names:
            return copy.deepcopy(self.model)  # type: ignore[return-value]
        work = copy.deepcopy(self.bank.peft)
        work.base_model.set_adapter(self.names, inference_mode=True)
        hf = work.merge_and_unload(adapter_names=self.names)
        return LanguageModel(hf, kind=self.model.kind).eval()  # type: ignore[union-attr]

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "adapters": self.bank.adapter_state(),
            "names": list(self.names),
            "current": self.current,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        for name in state["names"]:
            if name not in self.names:
                self._add_adapter(int(name.removeprefix("task")))
        self.bank.load_adapter_state(state["adapters"])
        self.current = state["current"]
        if self.names:
            self._activate(dropout=False)
