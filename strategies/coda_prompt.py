"""CODA-Prompt: continual decomposed attention-based prompting (Smith et al., CVPR 2023,
arXiv:2211.13218; reference code GT-RIPL/CODA-Prompt).

At each prompted layer a pool of ``M`` prompt components ``P_m`` (``L`` tokens) has keys
``K_m`` and attention vectors ``A_m``. For the frozen model's query ``q`` (class token without
prompts) the weights are ``alpha_m = cos(q * A_m, K_m)`` and the layer's prompt is
``sum_m alpha_m P_m``, entered by prefix-tuning: its first ``L/2`` tokens are key prefixes, the
other ``L/2`` value prefixes. The pool is split evenly over the tasks: task ``t`` trains
components ``[t*M/T, (t+1)*M/T)``, uses the earlier ones frozen (no gradient) and ignores the
later ones; the new components of each task start orthogonal to all earlier ones
(Gram-Schmidt), and ``ortho_mu * sum ||X X^T - I||^2`` (mean over entries, for ``X`` the
keys, the attention vectors and the flattened prompts) keeps them so. Logits of classes
outside the current experience are masked while training, as in the reference.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from cl.errors import ConfigError
from cl.models.prompting import LayerPrompt, PromptableBackbone, frozen_promptable, layer_styles
from cl.optim import keep_classes
from cl.strategy import Batch, Strategy, StrategyConfig, register_strategy
from cl.streams.base import Experience
from cl.testing import TINY_VIT_SETUP
from cl.validation import non_negative, positive


@dataclass
class CODAPromptConfig(StrategyConfig):
    """CODA-Prompt hyperparameters (defaults: the reference's 10-task CIFAR-100 setting).

    Attributes:
        pool_size: ``M`` components per layer, split evenly over the experiences.
        prompt_length: ``L`` tokens per component (even: half key, half value prefixes).
        layers: Blocks that get prompts.
        ortho_mu: Weight of the orthogonality penalty.
        mask_old_logits: Mask logits of classes outside the current experience in training.
    """

    name: str = "coda_prompt"
    pool_size: int = 100
    prompt_length: int = 8
    layers: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    ortho_mu: float = 0.1
    mask_old_logits: bool = True

    def validate(self) -> None:
        positive("strategy", self, "pool_size", "prompt_length")
        non_negative("strategy", self, "ortho_mu")
        if self.prompt_length % 2:
            raise ConfigError(
                f"strategy.prompt_length must be even (key and value halves), "
                f"got {self.prompt_length}"
            )


def gram_schmidt(shape: tuple[int, int], old: Tensor, gen: torch.Generator) -> Tensor:
    """``shape[0]`` unit rows orthogonal to each other and to the rows of ``old`` (``[s, n]``)."""
    basis: list[Tensor] = []
    for r in old.detach().double():  # orthonormal basis of the earlier rows' span
        for b in basis:
            r = r - (r @ b) * b
        if r.norm() > 1e-10:
            basis.append(r / r.norm())
    out = []
    for _ in range(shape[0]):
        v = torch.randn(shape[1], generator=gen, dtype=torch.float64).to(old.device)
        for b in basis:
            v = v - (v @ b) * b
        v = F.normalize(v, dim=0)
        basis.append(v)
        out.append(v)
    return torch.stack(out).to(old.dtype)


def ortho_penalty(x: Tensor) -> Tensor:
    """``mean((X X^T - I)^2)`` of the rows of ``x``."""
    eye = torch.eye(x.shape[0], device=x.device, dtype=x.dtype)
    return ((x @ x.T - eye) ** 2).mean()


@register_strategy("coda_prompt")
class CODAPrompt(Strategy[CODAPromptConfig]):
    """Attention-weighted prompt components on a frozen ViT (``model=vit``)."""

    config_cls = CODAPromptConfig
    test_setup = (
        *TINY_VIT_SETUP,
        "model.depth=2",
        "strategy.pool_size=6",
        "strategy.prompt_length=4",
        "strategy.layers=[0,1]",
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        c = self.config
        self.backbone: PromptableBackbone = frozen_promptable(self.model, self.name)
        if self.backbone.depth == 0:
            raise ConfigError("strategy 'coda_prompt' needs a ViT backbone (model=vit)")
        self.layers = list(layer_styles(list(c.layers), "prefix", self.backbone.depth, "CODA"))
        n_exp = self.context.stream.n_experiences
        if c.pool_size < n_exp:
            raise ConfigError(
                f"strategy.pool_size ({c.pool_size}) must be >= the stream's {n_exp} experiences"
            )
        self.per_task = c.pool_size // n_exp
        d, n_l = self.backbone.embed_dim, len(self.layers)
        z = {"device": self.device}
        self.prompts = nn.ParameterDict(
            {
                "p": nn.Parameter(torch.zeros(n_l, c.pool_size, c.prompt_length * d, **z)),
                "k": nn.Parameter(torch.zeros(n_l, c.pool_size, d, **z)),
                "a": nn.Parameter(torch.zeros(n_l, c.pool_size, d, **z)),
            }
        )
        self._task = 0
        self._init_components(0)
        self._classes: Tensor | None = None
        self._ortho: Tensor | None = None

    def _range(self, task: int) -> tuple[int, int]:
        return task * self.per_task, (task + 1) * self.per_task

    @torch.no_grad()
    def _init_components(self, task: int) -> None:
        """Task ``task``'s components: orthogonal to each other and to all earlier ones."""
        s, f = self._range(task)
        gen = self.generator(104729, task)
        for par in self.prompts.values():
            for li in range(par.shape[0]):
                par[li, s:f] = gram_schmidt((f - s, par.shape[2]), par[li, :s], gen)

    # ------------------------------------------------------------- prompting
    def _layer_prompt(self, li: int, q: Tensor, training: bool) -> Tensor:
        """Key/value prefixes ``[B, 2, L/2, D]`` of layer ``li`` for queries ``q``."""
        s, f = self._range(self._task)
        p, k, a = (self.prompts[n][li] for n in ("p", "k", "a"))
        if training:  # earlier components are used but frozen
            p, k, a = (torch.cat([t[:s].detach(), t[s:f]]) for t in (p, k, a))
            if self.config.ortho_mu > 0:
                pen = ortho_penalty(k) + ortho_penalty(a) + ortho_penalty(p)
                self._ortho = pen if self._ortho is None else self._ortho + pen
        else:
            p, k, a = p[:f], k[:f], a[:f]
        aq = F.normalize(q.unsqueeze(1) * a.unsqueeze(0), dim=2)  # [B, m, D]
        alpha = (aq * F.normalize(k, dim=1).unsqueeze(0)).sum(dim=2)  # [B, m]
        prompt = (alpha @ p).view(len(q), self.config.prompt_length, -1)  # [B, L, D]
        return prompt.view(len(q), 2, self.config.prompt_length // 2, -1)

    def _logits(self, x: Tensor, task_ids: Tensor | None, *, training: bool) -> Tensor:
        q = self.backbone.query(x).float()
        self._ortho = None
        layers = {
            k: LayerPrompt("prefix", self._layer_prompt(i, q, training))
            for i, k in enumerate(self.layers)
        }
        enc = self.backbone.encode(x, layers=layers)
        return self.model.head(enc.pooled("cls"), task_ids)

    # ----------------------------------------------------------------- hooks
    def before_experience(self, exp: Experience) -> None:
        if exp.index != self._task:
            self._task = exp.index
            self._init_components(exp.index)
        self._classes = torch.as_tensor(exp.classes, device=self.device)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [*self.prompts.values(), *self.model.head.parameters()]

    def forward(self, x: Tensor, task_ids: Tensor | None) -> Tensor:
        logits = self._logits(x, task_ids, training=True)
        if self.config.mask_old_logits and self._classes is not None:
            logits = keep_classes(logits, self._classes)
        return logits

    def extra_loss(self, batch: Batch, logits: Tensor) -> Tensor | None:
        if self._ortho is None:
            return None
        return self.config.ortho_mu * self._ortho

    def after_experience(self, exp: Experience) -> None:
        self._ortho = None

    def predict(self, x: Tensor, task_ids: Tensor | None) -> Tensor:
        return self._logits(x, task_ids, training=False)

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "prompts": self.prompts.state_dict(), "task": self._task}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.prompts.load_state_dict(state["prompts"])
        self._task = int(state["task"])
