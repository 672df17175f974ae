"""DualPrompt: complementary prompting for rehearsal-free continual learning (Wang et al.,
ECCV 2022, arXiv:2204.04799; reference code google-research/l2p and its PyTorch port
JH-LEE-KR/dualprompt-pytorch).

A frozen pretrained ViT gets two kinds of prompts through the shared prompting layer
(:mod:`cl.models.prompting`), by default as prefix-tuning (key/value prefixes inside
attention):

* the G-prompt (general, shared by all tasks) at the first layers (``g_prompt_layers``);
* an E-prompt (expert) per task at the following layers (``e_prompt_layers``), from a pool of
  ``pool_size`` prompts with learnable keys. While training task ``t`` its own E-prompt ``t``
  is used and its key is pulled towards the queries (``pull_lambda * (1 - cos(q, k_t))``); at
  test time the E-prompt whose key is nearest (cosine) to the query is used (``top_k = 1``).

The query is the frozen model's class-token feature without prompts; the classifier reads the
class token of the prompted pass; logits of classes outside the current experience are masked
while training (the reference's ``train_mask``). The reference's batch-wise prompt selection
(a majority vote over an evaluation batch, which reveals the task) is not used: selection is
per sample, so results do not depend on the evaluation batch size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from cl.errors import ConfigError
from cl.models.prompting import (
    PROMPT_STYLES,
    LayerPrompt,
    PromptableBackbone,
    frozen_promptable,
    layer_styles,
)
from cl.optim import keep_classes
from cl.strategy import Batch, Strategy, StrategyConfig, register_strategy
from cl.streams.base import Experience
from cl.testing import TINY_VIT_SETUP
from cl.validation import non_negative, one_of, positive


@dataclass
class DualPromptConfig(StrategyConfig):
    """DualPrompt hyperparameters (defaults: the reference's Split CIFAR-100 setting).

    Attributes:
        g_prompt_layers: Blocks that get the G-prompt.
        g_prompt_length: G-prompt tokens (per key and per value with prefix-tuning).
        e_prompt_layers: Blocks that get the selected E-prompt.
        e_prompt_length: E-prompt tokens (per key and per value with prefix-tuning).
        pool_size: E-prompts in the pool (one per task: at least the number of experiences).
        style: ``prefix`` (the paper's) or ``prompt`` (tokens prepended to the block input).
        pull_lambda: Weight of the key-query pull loss.
        init_range: Prompts and keys start uniform in ``[-init_range, init_range]``.
        mask_old_logits: Mask logits of classes outside the current experience in training.
    """

    name: str = "dualprompt"
    g_prompt_layers: list[int] = field(default_factory=lambda: [0, 1])
    g_prompt_length: int = 5
    e_prompt_layers: list[int] = field(default_factory=lambda: [2, 3, 4])
    e_prompt_length: int = 5
    pool_size: int = 10
    style: str = "prefix"
    pull_lambda: float = 1.0
    init_range: float = 1.0
    mask_old_logits: bool = True

    def validate(self) -> None:
        positive("strategy", self, "g_prompt_length", "e_prompt_length", "pool_size")
        positive("strategy", self, "init_range")
        non_negative("strategy", self, "pull_lambda")
        one_of("strategy", self, "style", PROMPT_STYLES)
        if set(self.g_prompt_layers) & set(self.e_prompt_layers):
            raise ConfigError("strategy.g_prompt_layers and strategy.e_prompt_layers overlap")


def uniform(shape: tuple[int, ...], r: float) -> nn.Parameter:
    return nn.Parameter(torch.empty(shape).uniform_(-r, r))


@register_strategy("dualprompt")
class DualPrompt(Strategy[DualPromptConfig]):
    """G- and E-prompts injected at chosen layers of a frozen ViT (``model=vit``)."""

    config_cls = DualPromptConfig
    test_setup = (
        *TINY_VIT_SETUP,
        "model.depth=2",
        "strategy.g_prompt_layers=[0]",
        "strategy.e_prompt_layers=[1]",
        "strategy.g_prompt_length=2",
        "strategy.e_prompt_length=3",
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        c = self.config
        self.backbone: PromptableBackbone = frozen_promptable(self.model, self.name)
        depth, d = self.backbone.depth, self.backbone.embed_dim
        if depth == 0:
            raise ConfigError("strategy 'dualprompt' needs a ViT backbone (model=vit)")
        self.g_layers = list(layer_styles(list(c.g_prompt_layers), c.style, depth, "G-prompt"))
        self.e_layers = list(layer_styles(list(c.e_prompt_layers), c.style, depth, "E-prompt"))
        if c.pool_size < self.context.stream.n_experiences:
            raise ConfigError(
                f"strategy.pool_size ({c.pool_size}) must be >= the stream's "
                f"{self.context.stream.n_experiences} experiences (one E-prompt per task)"
            )
        kv = (2,) if c.style == "prefix" else ()
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(self.context.seed + 1)  # prompt init independent of model init
        self.prompts = nn.ParameterDict(
            {
                "g": uniform((len(self.g_layers), *kv, c.g_prompt_length, d), c.init_range),
                "e": uniform(
                    (len(self.e_layers), c.pool_size, *kv, c.e_prompt_length, d), c.init_range
                ),
                "key": uniform((c.pool_size, d), c.init_range),
            }
        )
        torch.random.set_rng_state(gen_state)
        self.prompts.to(self.device)
        self._task = 0
        self._classes: Tensor | None = None
        self._sim: Tensor | None = None

    # ------------------------------------------------------------- prompting
    def select(self, q: Tensor) -> tuple[Tensor, Tensor]:
        """E-prompt index per sample ``[B]`` (nearest key) and all cosines ``[B, M]``."""
        cos = F.normalize(q.float(), dim=1) @ F.normalize(self.prompts["key"].float(), dim=1).T
        return cos.argmax(dim=1), cos

    def _logits(self, x: Tensor, task_ids: Tensor | None, *, training: bool) -> Tensor:
        q = self.backbone.query(x)
        idx, cos = self.select(q)
        if training:
            idx = torch.full_like(idx, self._task % self.config.pool_size)
            self._sim = cos.gather(1, idx.unsqueeze(1)).squeeze(1)
        style = self.config.style
        layers = {k: LayerPrompt(style, self.prompts["g"][i]) for i, k in enumerate(self.g_layers)}
        for i, k in enumerate(self.e_layers):
            layers[k] = LayerPrompt(style, self.prompts["e"][i][idx])
        enc = self.backbone.encode(x, layers=layers)
        return self.model.head(enc.pooled("cls"), task_ids)

    # ----------------------------------------------------------------- hooks
    def before_experience(self, exp: Experience) -> None:
        self._task = exp.index
        self._classes = torch.as_tensor(exp.classes, device=self.device)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [*self.prompts.values(), *self.model.head.parameters()]

    def forward(self, x: Tensor, task_ids: Tensor | None) -> Tensor:
        logits = self._logits(x, task_ids, training=True)
        if self.config.mask_old_logits and self._classes is not None:
            logits = keep_classes(logits, self._classes)
        return logits

    def extra_loss(self, batch: Batch, logits: Tensor) -> Tensor | None:
        if self._sim is None or self.config.pull_lambda == 0:
            return None
        return self.config.pull_lambda * (1.0 - self._sim).mean()

    def after_experience(self, exp: Experience) -> None:
        self._sim = None

    def predict(self, x: Tensor, task_ids: Tensor | None) -> Tensor:
        return self._logits(x, task_ids, training=False)

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "prompts": self.prompts.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.prompts.load_state_dict(state["prompts"])
