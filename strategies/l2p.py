"""L2P: Learning to Prompt for Continual Learning (Wang et al., CVPR 2022, arXiv:2112.08654).

A frozen pretrained transformer is instructed by prompts picked from a shared pool of ``M``
prompts (each ``L_p`` tokens) with learnable keys. The query is the frozen model's feature of
the input without prompts; the ``N`` keys nearest in cosine similarity select the prompts that
are prepended to the input; the classifier reads the mean of the prompt-position outputs. The
loss adds the surrogate ``lambda * sum_i (1 - cos(q, k_{s_i}))`` that pulls selected keys
towards their queries, and logits of classes outside the current experience are masked while
training (the paper's code does this for class-incremental runs).

The query, the key matching and the surrogate loss run in fp32 even under bf16 autocast, so
mixed precision never changes which prompts are chosen. As in the reference code
(l2p-pytorch), prompts and keys start ~ U(-1, 1), the head ~ trunc-normal(0.02) with zero bias,
and prompt tokens carry the class token's position embedding (``prompt_position``).

Honesty notes:
* ``batchwise_prompt`` (the official code's default) replaces each sample's prompts by the
  ``N`` prompts most often selected in its batch. Evaluation batches hold one experience, so
  the majority vote reveals the task identity: accuracy then depends on the evaluation batch
  size. It is off by default; with it off, predictions are per sample.
* ``task_prompt_mask`` gives task ``t`` the fixed prompts ``t*N .. t*N+N-1`` (task_il; the
  task id selects them at test time when given).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from cl.errors import ConfigError
from cl.models.prompting import PromptableBackbone, frozen_promptable
from cl.optim import keep_classes
from cl.strategy import Batch, Strategy, StrategyConfig, register_strategy
from cl.streams.base import Experience
from cl.testing import TINY_VIT_SETUP
from cl.validation import non_negative, one_of, positive


@dataclass
class L2PConfig(StrategyConfig):
    """L2P hyperparameters (defaults: the paper's Split CIFAR-100 setting).

    Attributes:
        pool_size: ``M``, prompts in the pool.
        prompt_length: ``L_p``, tokens per prompt.
        top_k: ``N``, prompts selected per sample.
        pull_lambda: ``lambda`` of the key-query surrogate loss.
        init_range: Prompts and keys start uniform in ``[-init_range, init_range]``.
        mask_old_logits: Mask logits of classes outside the current experience in training.
        diversify: Prompt-frequency diversification while training (Sec. 4.3): distances are
            multiplied by the normalised selection frequency of earlier tasks.
        batchwise_prompt: Batch-wise majority selection (leaks task identity: see module doc).
        task_prompt_mask: Each task trains (and, given its id, tests) its own fixed prompts.
        readout: ``prompt`` (mean of prompt outputs, the paper's) or ``cls``.
        head_init: ``trunc_normal`` (weights ~ N(0, 0.02) truncated at +-2, zero bias: the
            reference ViT's head) or ``default`` (the model's own initialisation).
        prompt_position: ``cls``: prompts get the class token's position embedding, as in the
            reference code (its position table repeats the class token's entry for them);
            ``none``: no position embedding. Only ViTs with a class token have one to give.
    """

    name: str = "l2p"
    pool_size: int = 10
    prompt_length: int = 5
    top_k: int = 5
    pull_lambda: float = 0.1
    init_range: float = 1.0
    mask_old_logits: bool = True
    diversify: bool = False
    batchwise_prompt: bool = False
    task_prompt_mask: bool = False
    readout: str = "prompt"
    head_init: str = "trunc_normal"
    prompt_position: str = "cls"

    def validate(self) -> None:
        positive("strategy", self, "pool_size", "prompt_length", "top_k", "init_range")
        non_negative("strategy", self, "pull_lambda")
        one_of("strategy", self, "readout", ("prompt", "cls"))
        one_of("strategy", self, "head_init", ("trunc_normal", "default"))
        one_of("strategy", self, "prompt_position", ("cls", "none"))
        if self.top_k > self.pool_size:
            raise ConfigError(
                f"strategy.top_k must be <= strategy.pool_size ({self.pool_size}), got {self.top_k}"
            )


class PromptPool(nn.Module):
    """``M`` prompts of ``L_p`` tokens and their keys, all of width ``D``."""

    def __init__(self, size: int, length: int, dim: int, init_range: float) -> None:
        super().__init__()
        self.prompts = nn.Parameter(
            torch.empty(size, length, dim).uniform_(-init_range, init_range)
        )
        self.keys = nn.Parameter(torch.empty(size, dim).uniform_(-init_range, init_range))


@register_strategy("l2p")
class L2P(Strategy[L2PConfig]):
    """Prompt-pool continual learning on a frozen promptable backbone (``vit``, ``hf_encoder``)."""

    config_cls = L2PConfig
    test_setup = TINY_VIT_SETUP
    shard_reduced = ("_counts",)  # this task's selection counts, summed over ranks

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        c = self.config
        backbone = frozen_promptable(self.model, self.name)
        if not 1 <= c.top_k <= c.pool_size or c.prompt_length < 1:
            raise ConfigError(
                "l2p needs 1 <= strategy.top_k <= strategy.pool_size and prompt_length >= 1"
            )
        if c.readout not in ("prompt", "cls"):
            raise ConfigError(f"strategy.readout must be 'prompt' or 'cls', got {c.readout!r}")
        self.backbone: PromptableBackbone = backbone
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(self.context.seed + 1)  # pool init independent of model init order
        self.pool = PromptPool(c.pool_size, c.prompt_length, backbone.embed_dim, c.init_range)
        if c.head_init == "trunc_normal":
            for m in self.model.head.modules():
                if isinstance(m, nn.Linear):
                    nn.init.trunc_normal_(m.weight, std=0.02)
                    nn.init.zeros_(m.bias)
        torch.random.set_rng_state(gen_state)
        # The frozen backbone's position embedding for prompt tokens (ViTs have one).
        self._position = getattr(backbone, "class_position", None)
        if c.prompt_position == "none":
            self._position = None
        self.pool.to(self.device)
        # Selection counts: of earlier tasks (for diversification) and of the current one.
        self.freq = torch.zeros(c.pool_size, device=self.device)
        self._counts = torch.zeros(c.pool_size, device=self.device)
        self._classes: Tensor | None = None
        self._task = 0
        self._sim: Tensor | None = None

    # ------------------------------------------------------------- selection
    def select(
        self, q: Tensor, task_ids: Tensor | None, *, training: bool
    ) -> tuple[Tensor, Tensor]:
        """Prompt indices ``[B, N]`` and the cosine similarities ``[B, N]`` of their keys."""
        c = self.config
        cos = F.normalize(q.float(), dim=1) @ F.normalize(self.pool.keys.float(), dim=1).T
        if c.task_prompt_mask and (training or task_ids is not None):
            t = torch.full_like(cos[:, 0], self._task, dtype=torch.long) if training else task_ids
            assert t is not None
            idx = (
                t.long().unsqueeze(1) * c.top_k + torch.arange(c.top_k, device=cos.device)
            ) % c.pool_size
        else:
            dist = 1.0 - cos
            if training and c.diversify and self.freq.sum() > 0:
                # Rarely used prompts get small distances, so new tasks explore them.
                dist = dist * (self.freq / self.freq.sum())
            idx = dist.topk(c.top_k, dim=1, largest=False).indices
            if c.batchwise_prompt:
                counts = torch.bincount(idx.flatten(), minlength=c.pool_size)
                # Ties go to the lower index (stable sort) so the choice is deterministic.
                major = counts.argsort(descending=True, stable=True)[: c.top_k]
                idx = major.unsqueeze(0).expand(len(q), -1)
        return idx, cos.gather(1, idx)

    def selection(
        self, x: Tensor, task_ids: Tensor | None, *, training: bool
    ) -> tuple[Tensor, Tensor]:
        """Query features, key matching and the selected keys' similarities in fp32, also
        under bf16 autocast (low precision could change which prompts are chosen)."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            q = self.backbone.query(x.float() if x.is_floating_point() else x)  # text: ids
            return self.select(q, task_ids, training=training)

    def _logits(self, x: Tensor, task_ids: Tensor | None, *, training: bool) -> Tensor:
        idx, sim = self.selection(x, task_ids, training=training)
        if training:
            self._sim = sim
            self._counts += torch.bincount(idx.flatten(), minlength=self.config.pool_size)
        prompts = self.pool.prompts[idx].flatten(1, 2)  # [B, N * L_p, D]
        pos = self._position() if self._position is not None else None
        if pos is not None:
            prompts = prompts + pos
        enc = self.backbone.encode(x, prompts)
        feat = enc.prompt_mean() if self.config.readout == "prompt" else enc.pooled("cls")
        return self.model.head(feat, task_ids)

    # ----------------------------------------------------------------- hooks
    def before_experience(self, exp: Experience) -> None:
        self._task = exp.task_id
        self._counts.zero_()
        self._classes = torch.as_tensor(exp.classes, device=self.device)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [*self.pool.parameters(), *self.model.head.parameters()]

    def forward(self, x: Tensor, task_ids: Tensor | None) -> Tensor:
        logits = self._logits(x, task_ids, training=True)
        if self.config.mask_old_logits and self._classes is not None:
            logits = keep_classes(logits, self._classes)
        return logits

    def extra_loss(self, batch: Batch, logits: Tensor) -> Tensor | None:
        if self._sim is None or self.config.pull_lambda == 0:
            return None
        with torch.autocast(device_type=self._sim.device.type, enabled=False):
            return self.config.pull_lambda * (1.0 - self._sim.float()).sum(dim=1).mean()

    def after_experience(self, exp: Experience) -> None:
        self.freq += self._counts
        self._sim = None

    def predict(self, x: Tensor, task_ids: Tensor | None) -> Tensor:
        return self._logits(x, task_ids, training=False)

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "pool": self.pool.state_dict(), "freq": self.freq.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.pool.load_state_dict(state["pool"])
        self.freq.copy_(state["freq"])
