"""Q-tuning: queue-based prompt tuning for lifelong few-shot language learning (Guo et al.,
NAACL Findings 2024, arXiv:2404.14607).

Task ``t`` trains a new prompt ``theta_t`` (reparameterised by a residual MLP) appended to a
queue of earlier prompts (frozen). The model reads ``[theta_p ; W_t o Q_t ; x]``: a globally
shared prefix prompt ``theta_p``, then the queue ``Q_t`` (``n * L`` tokens, ``theta_t`` last)
reweighted elementwise by the low-rank matrix ``W_t = U_t V_t^T`` (adaptive knowledge
aggregation; ``U_t`` is ``[n L, r]``, ``V_t`` is ``[D, r]``, ``W`` starts at all ones). When the
queue holds its capacity ``C`` prompts, the De-Q rule keeps the ``C - 1`` leading principal
directions before ``theta_t`` is added, so the input never exceeds ``P + C * L`` prompt tokens
and the cost per step stays flat. A memory-retention regulariser trains the prefix to keep the
information of the queue once evictions start.

Where the paper is ambiguous, we decided:

* **Granularity of PCA.** The paper applies PCA to the queue; we treat each prompt
  (``L * D`` flattened) as one sample and keep ``C - 1`` principal directions scaled by their
  singular values (``S_k V_k^T``), without centring: the uncentred truncated SVD is the best
  rank-``(C - 1)`` approximation (Eckart-Young), whereas centring would spend a row on the mean.
* **Old tasks after an eviction.** The paper evaluates old tasks with task identities but does
  not say which prompts they read once theirs are compressed. Each task keeps tiny state: its
  ``U_t, V_t`` and coefficients ``A_t`` (at most ``C x C``) with its prompts ``= A_t rows``;
  an eviction maps ``A_t <- A_t U_k``, so a task reads the projection of its own prompts onto
  the retained subspace, with error ``<= ||A_t||_2 sigma_C`` (``cl.models.prompt_queue``).
  Memory: ``C`` prompts plus ``O(C^2 + C L r + D r)`` numbers per task (and the task's
  prefix, ``P * D``, below); what grows per task is far smaller than a prompt when ``P < L``,
  and the input stays at ``P + C * L`` prompt tokens.
* **MLP.** A fresh residual MLP per task (identity at init), as in Progressive Prompts,
  whose reparameterisation the paper adopts; each trained prompt is materialised
  (``p + MLP(p)``) into the queue and the MLP is dropped. ``shared_mlp=true`` keeps one MLP
  warm-started across tasks. Measured (frozen MiniLM, 4 text tasks, C=3, means of 2 seeds):
  with frozen heads, per-task 0.841 accuracy / -0.002 forgetting, shared 0.799 / 0.047 (the
  shared MLP's output grows task after task, so the PCA favours the newest prompts); with
  trained heads (3 tasks, C=2, seed 0) the shared one did better: 0.806 / -0.033 against
  0.764 / 0.017.
* **Shared prefix.** Trained on every task, read by every task: "globally shared" in the
  paper's sense, it carries each task's start (forward transfer). Which prefix an old task reads
  at test time the paper does not say; it lists the absence of backward transfer as a
  limitation, i.e. old tasks keep what they learned. We keep each task's prefix as it ended
  (``P * D`` numbers per task, the size of ``P`` tokens; ``prefix_at_test=own``): a prefix that
  went on drifting cost old tasks up to 0.2 accuracy with frozen heads, even with no eviction.
  ``prefix_at_test=latest`` reads the current prefix; ``prefix_length=0`` removes it.
* **Memory-retention regulariser.** The paper maximises the mutual information between what
  the prefix and the Q-prompt carry; we maximise ``I(z_p; z_q)`` between the read-out with the
  prefix alone (``z_p``) and the read-out with the full Q-prompt (``z_q``, detached), so the
  prefix (which the task keeps) absorbs what the queue knows before evictions compress it.
  **Estimator: InfoNCE** with a cosine critic (temperature ``mr_tau``):
  ``I >= log B - L_NCE``. We chose it over MINE (Donsker-Varadhan) because in few-shot training
  batches are small (8-16): MINE's gradient is biased on minibatches and needs a moving-average
  correction and a critic network whose variance is high at that size, while InfoNCE is
  low-variance, needs no extra parameters and is a valid lower bound at any batch size (capped
  at ``log B``, harmless for a regulariser). It runs only after the first eviction
  (``mr_always`` to run it from the start), as in the paper's motivation; it costs one
  prefix-only pass per step.

Known weakness (measured with frozen heads, Adam 0.1, seeds 0-4: ``benchmarks/qtuning_seeds.py``):
the trained prompts reach norms of 1.5e4-5e4 and are nearly orthogonal, so the eviction drops
most of the smallest one, whichever task it belongs to (its scale means little to the model:
the embedding LayerNorm divides it out). Two seeds in five lost most of an old task that way
(seed 2: 0.675 -> 0.525, forgetting 0.071; seed 4: 0.108); ``mr_always`` did not prevent it
(seed 2: forgetting 0.129). Compare methods over seeds: one seed moves accuracy by up to 0.1.

On a language model (T5 or a decoder, the paper's setting) the same queue, aggregation,
eviction and prefix go in front of the frozen LM's input embeddings; the regulariser's
read-outs are the mean encoder (or decoder) outputs over the prompted input
(:func:`cl.models.lm_prompting.prompted_features`), ``z_q`` from one extra pass without gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from cl.errors import ConfigError
from cl.models.prompt_queue import PromptQueue, info_nce
from cl.strategies.prompt_tuning import PromptConfig, PromptStrategy
from cl.strategy import Batch, register_strategy
from cl.streams.base import Experience
from cl.testing import TEXT_SETUP
from cl.validation import non_negative, one_of, positive


@dataclass
class QTuningConfig(PromptConfig):
    """Q-tuning settings (plus :class:`~strategies.prompt_tuning.PromptConfig`'s).

    Attributes:
        capacity: ``C``, prompts the queue holds at most.
        prefix_length: Tokens of the globally shared prefix prompt (0: none).
        agg_rank: Rank ``r`` of the aggregation matrix ``W = U V^T`` (the paper's is 1).
        mr_lambda: Weight of the memory-retention regulariser (0: off).
        mr_tau: Temperature of the InfoNCE critic.
        mr_always: Apply the regulariser from the first task, not only after an eviction.
        prefix_at_test: ``own``: a trained task reads the prefix as it was when the task ended
            (``P * D`` numbers per task); ``latest``: every task reads the current prefix.
        shared_mlp: One residual MLP warm-started across tasks instead of a fresh one per task.
    """

    name: str = "qtuning"
    capacity: int = 4
    prefix_length: int = 2
    agg_rank: int = 1
    mr_lambda: float = 0.1
    mr_tau: float = 0.1
    mr_always: bool = False
    prefix_at_test: str = "own"
    shared_mlp: bool = False

    def validate(self) -> None:
        super().validate()
        positive("strategy", self, "agg_rank", "mr_tau")
        non_negative("strategy", self, "prefix_length", "mr_lambda")
        one_of("strategy", self, "prefix_at_test", ("own", "latest"))
        if self.capacity < 2:
            raise ConfigError(f"strategy.capacity must be >= 2, got {self.capacity}")


@register_strategy("qtuning")
class QTuning(PromptStrategy[QTuningConfig]):
    """Prompt queue with low-rank aggregation, PCA eviction, shared prefix and MR."""

    config_cls = QTuningConfig
    test_setup = (*TEXT_SETUP, "strategy.capacity=2")
    needs_task_id_at_test = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        c = self.config
        if c.capacity < 2 or c.agg_rank < 1 or c.prefix_length < 0 or c.mr_tau <= 0:
            raise ConfigError(
                "qtuning needs strategy.capacity >= 2, agg_rank >= 1, prefix_length >= 0, "
                "mr_tau > 0"
            )
        if c.prefix_at_test not in ("own", "latest"):
            raise ConfigError(
                f"strategy.prefix_at_test must be 'own' or 'latest', got {c.prefix_at_test!r}"
            )
        self.queue = PromptQueue(capacity=c.capacity, length=c.prompt_length, dim=self.dim)
        self.queue.to(self.device)
        self.prefix = self.new_prompt(max(c.prefix_length, 1), 0)
        self.mlp = self.new_mlp(0)  # replaced per task unless shared_mlp
        self.agg: dict[int, tuple[Tensor, Tensor]] = {}  # task -> frozen (U_t, V_t)
        self.prefixes: dict[int, Tensor] = {}  # task -> prefix as it ended (prefix_at_test=own)
        self._new_task_params(0)
        self.last_mi = 0.0

    def _new_task_params(self, index: int) -> None:
        """The new prompt and the aggregation factors over ``len(queue) + 1`` prompts."""
        c = self.config
        self.current = self.new_prompt(c.prompt_length, index + 1)
        n_tokens = (len(self.queue) + 1) * c.prompt_length
        u = torch.zeros(n_tokens, c.agg_rank, device=self.device)
        v = torch.zeros(self.dim, c.agg_rank, device=self.device)
        u[:, 0] = 1.0
        v[:, 0] = 1.0
        if c.agg_rank > 1:  # extra ranks start at zero in U, random in V (so U gets gradient)
            v[:, 1:] = 0.01 * torch.randn(self.dim, c.agg_rank - 1, generator=self.generator(31))
        self.u, self.v = nn.Parameter(u), nn.Parameter(v)

    def _prefix(self, task: int | None = None) -> list[Tensor]:
        """The prefix ``task`` reads: its own if kept, else the current one (none if P = 0)."""
        return [self.prefixes.get(task, self.prefix)] if self.config.prefix_length > 0 else []

    def _materialise(self) -> Tensor:
        return self.current if self.mlp is None else self.mlp(self.current)

    def prompts_for(self, task: int | None, *, training: bool) -> Tensor:
        if training:
            q = torch.cat([self.queue.rows.reshape(-1, self.dim), self._materialise()])
            return torch.cat([*self._prefix(), q * (self.u @ self.v.T)])
        if task in self.agg:
            u, v = self.agg[task]
            q = self.queue.task_prompts(task) * (u @ v.T)
            return torch.cat([*self._prefix(task), q])
        # A task not trained yet (or no task id): the prefix and the queue as it is.
        rows = self.queue.rows.reshape(-1, self.dim)
        out = torch.cat([*self._prefix(), rows])
        return out if len(out) else self._materialise()

    # ----------------------------------------------------------------- hooks
    def before_experience(self, exp: Experience) -> None:
        super().before_experience(exp)
        if self.queue.full:
            self.queue.evict()  # De-Q: C prompts -> C - 1 principal directions
        if not self.config.shared_mlp:
            self.mlp = self.new_mlp(exp.index + 1)
        self._new_task_params(exp.index)

    def trainable_parameters(self) -> list[nn.Parameter]:
        mlp = [] if self.mlp is None else list(self.mlp.parameters())
        prefix = [self.prefix] if self.config.prefix_length > 0 else []
        return [*prefix, self.current, self.u, self.v, *mlp, *self.head_parameters()]

    def extra_loss(self, batch: Batch, logits: Tensor) -> Tensor | None:
        c = self.config
        on = c.mr_always or bool(self.queue.dropped)
        if c.mr_lambda == 0 or c.prefix_length == 0 or not on or len(batch.y) < 2:
            return None
        z_p = self.features(batch.x, self.prefix)
        if self._feat is not None:
            z_q = self._feat.detach()
        else:  # a language model's forward gives logits: one more pass for the read-out
            with torch.no_grad():
                z_q = self.features(batch.x, self.prompts_for(self.task, training=True))
        loss, mi = info_nce(z_p, z_q, c.mr_tau)
        self.last_mi = float(mi)
        return c.mr_lambda * loss

    def after_experience(self, exp: Experience) -> None:
        with torch.no_grad():
            self.queue.push(self._materialise(), exp.task_id)
        self.agg[exp.task_id] = (self.u.detach().clone(), self.v.detach().clone())
        if self.config.prefix_length > 0 and self.config.prefix_at_test == "own":
            self.prefixes[exp.task_id] = self.prefix.detach().clone()

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "queue": self.queue.state_dict(),
            "agg": {t: (u.clone(), v.clone()) for t, (u, v) in self.agg.items()},
            "prefix": self.prefix.detach().clone(),
            "prefixes": {t: p.clone() for t, p in self.prefixes.items()},
            "mlp": None if self.mlp is None else self.mlp.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.queue.load_state_dict(state["queue"])
        self.agg = {
            int(t): (u.to(self.device), v.to(self.device)) for t, (u, v) in state["agg"].items()
        }
        self.prefixes = {int(t): p.to(self.device) for t, p in state["prefixes"].items()}
        with torch.no_grad():
            self.prefix.copy_(state["prefix"])
        if self.mlp is not None:
            self.mlp.load_state_dict(state["mlp"])

    def extra_state_bytes(self) -> int:
        """Everything in the state (queue, aggregation factors, prefixes, MLP) plus the current
        prompt and its factors, which live until the next task replaces them."""
        return super().extra_state_bytes() + self.nbytes(self.current, self.u, self.v)
