"""Task-conditioned hypernetworks (HNET), with task inference by predictive entropy (HNET+ENT).

von Oswald, Henning, Grewe and Sacramento, "Continual learning with hypernetworks", ICLR 2020.

A hypernetwork maps a learned task embedding ``e_t`` to every weight of the target network (the
platform's model, run with :func:`torch.func.functional_call` on the generated weights). Each
task gets its own output head (a linear layer over its classes), generated with the backbone from
``e_t``; the model's own parameters are never trained. After each task the outputs
``h(e_t, theta*)`` of all learned tasks are stored, and while learning a new task the regulariser
``beta/(T-1) sum_t ||h(e_t, theta*) - h(e_t, theta + dtheta)||^2`` keeps them (optionally a random
subset per step) in one batched hypernetwork pass; with look-ahead, ``dtheta`` is the optimiser's
step on the task loss alone (hypercl's default; ``lookahead_step=sgd``: ``-lr * grad``).
Batch-norm statistics are kept per task. Without task ids, the task is inferred per sample as the
embedding whose network gives the lowest entropy (HNET+ENT), divided by ``log(n_classes)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn import functional as F

from cl.distributed import summed_gradients
from cl.errors import ConfigError
from cl.lookahead import LOOKAHEAD_STEPS, optimizer_delta, sgd_delta
from cl.models.hypernet import (
    ACTIVATIONS,
    HyperNetwork,
    RegStep,
    TargetSpec,
    normalized_entropy,
)
from cl.strategy import Batch, Strategy, StrategyConfig, register_strategy
from cl.streams.base import Experience, TensorData
from cl.validation import non_negative, one_of, positive


@dataclass
class HypernetConfig(StrategyConfig):
    """HNET settings.

    Attributes:
        beta: Strength of the output regulariser.
        emb_dim: Size of the task embeddings.
        emb_init_std: Std of the normal init of the task embeddings.
        hidden_sizes: Hidden widths of the hypernetwork.
        activation: Hypernetwork activation (``relu``, ``elu``, ``tanh``).
        chunk_size: Weights generated per chunk (null: one output layer for all weights).
        chunk_emb_dim: Size of the learned chunk embeddings.
        reg_tasks_per_step: Regularise this many random old tasks per step (null: all).
        lookahead: Regularise at ``theta + dtheta`` (dtheta: the task loss's own step).
        lookahead_step: ``optimizer`` (the optimiser's own next step on the task loss, its
            state and lr: hypercl's default) or ``sgd`` (the plain ``-lr * grad``).
        ent_temperature: Temperature of the softmax whose entropy infers the task.
        ent_normalize: Divide each task's entropy by ``log`` of its number of classes.
    """

    name: str = "hypernet"
    beta: float = 0.01
    emb_dim: int = 32
    emb_init_std: float = 1.0
    hidden_sizes: list[int] = field(default_factory=lambda: [50, 50])
    activation: str = "relu"
    chunk_size: int | None = None
    chunk_emb_dim: int = 8
    reg_tasks_per_step: int | None = None
    lookahead: bool = False
    lookahead_step: str = "optimizer"
    ent_temperature: float = 1.0
    ent_normalize: bool = True

    def validate(self) -> None:
        non_negative("strategy", self, "beta")
        positive("strategy", self, "emb_dim", "emb_init_std", "hidden_sizes", "chunk_size")
        positive("strategy", self, "chunk_emb_dim", "reg_tasks_per_step", "ent_temperature")
        one_of("strategy", self, "activation", ACTIVATIONS)
        one_of("strategy", self, "lookahead_step", LOOKAHEAD_STEPS)


@register_strategy("hypernet")
class Hypernet(Strategy[HypernetConfig]):
    """Hypernetwork generating the model's weights from task embeddings."""

    config_cls = HypernetConfig
    needs_task_id_at_test = False  # HNET+ENT infers the task

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        cfg, info = self.config, self.context.stream
        backbone = getattr(self.model, "backbone", None)
        feat = getattr(self.model, "feature_dim", None)
        if not isinstance(backbone, nn.Module) or not isinstance(feat, int):
            raise ConfigError("strategy 'hypernet' needs a model with a backbone and feature_dim")
        cfg.validate()
        self.backbone = backbone
        self.task_classes = [list(c) for c in info.task_classes]
        width = max(len(c) for c in self.task_classes)
        named = list(backbone.named_parameters())
        self.spec = TargetSpec(
            names=(*(n for n, _ in named), "head.weight", "head.bias"),
            shapes=(*(tuple(p.shape) for _, p in named), (width, feat), (width,)),
        )
        scale, offset = self.spec.init_scale_offset()
        self.hnet = HyperNetwork(
            n_out=self.spec.numel,
            emb_dim=cfg.emb_dim,
            hidden_sizes=cfg.hidden_sizes,
            chunk_size=cfg.chunk_size,
            chunk_emb_dim=cfg.chunk_emb_dim,
            activation=cfg.activation,
            scale=scale,
            offset=offset,
        ).to(self.device)
        n_tasks = len(self.task_classes)
        self.embeddings = nn.ParameterList(
            nn.Parameter(torch.randn(cfg.emb_dim, device=self.device) * cfg.emb_init_std)
            for _ in range(n_tasks)
        )
        # Batch-norm running statistics are not generated: one copy per task.
        self._bn_init = {n: b.detach().clone() for n, b in backbone.named_buffers()}
        self.bn_stats: dict[int, dict[str, Tensor]] = {}
        self.learned: list[int] = []
        self.targets: dict[int, Tensor] = {}
        self.current = 0
        self._reg_gen: torch.Generator | None = None
        # Fixed within an experience: embeddings and targets of the old tasks, stacked.
        self._old: tuple[Tensor, Tensor] | None = None
        self._step: RegStep | None = None  # this training step's regulariser inputs

    def generate(self, tasks: list[int]) -> Tensor:
        """Flat target weights ``(len(tasks), n)`` for ``tasks``, in one hypernetwork pass."""
        return self.hnet(torch.stack([self.embeddings[t] for t in tasks]))

    def task_logits(self, x: Tensor, task: int, flat: Tensor) -> Tensor:
        """Logits of the generated network of ``task`` over that task's own classes."""
        w = self.spec.unflatten(flat)
        head_w, head_b = w.pop("head.weight"), w.pop("head.bias")
        buffers = self.bn_stats.get(task, self._bn_init)
        feats = functional_call(self.backbone, {**w, **buffers}, (x,))
        k = len(self.task_classes[task])
        return F.linear(feats, head_w[:k], head_b[:k])

    def _global(self, n: int, like: Tensor) -> Tensor:
        return like.new_full((n, self.context.stream.n_classes), float("-inf"))

    def _logits_with_ids(self, x: Tensor, task_ids: Tensor) -> Tensor:
        tasks = torch.unique(task_ids).tolist()
        flats = self.generate(tasks)
        out: Tensor | None = None
        for t, flat in zip(tasks, flats, strict=True):
            rows = (task_ids == t).nonzero(as_tuple=True)[0]
            logits = self.task_logits(x[rows], t, flat)
            if out is None:
                out = self._global(len(x), logits)
            cls = torch.as_tensor(self.task_classes[t], device=x.device)
            out[rows.unsqueeze(1), cls.unsqueeze(0)] = logits.to(out.dtype)
        assert out is not None
        return out

    def before_experience(self, exp: Experience) -> None:
        self.current = exp.task_id
        if exp.task_id not in self.bn_stats and self._bn_init:
            self.bn_stats[exp.task_id] = {k: v.clone() for k, v in self._bn_init.items()}
        self._reg_gen = self.generator(exp.index, 104_729)
        old = [t for t in self.learned if t != self.current]
        self._old = None
        if old and self.config.beta > 0:
            emb = torch.stack([self.embeddings[t].detach() for t in old])
            self._old = (emb, torch.stack([self.targets[t] for t in old]))

    def build_optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        """Adam/AdamW with torch's fused kernel on CPU too (~8x faster on millions of weights)."""
        tc, kinds = self.context.train, {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
        if tc.optimizer not in kinds or not params:
            return super().build_optimizer(params)
        lr = tc.effective_lr  # train.lr, scaled by batch_size / train.lr_scale_batch when set
        return kinds[tc.optimizer](params, lr=lr, weight_decay=tc.weight_decay, fused=True)

    def trainable_parameters(self) -> list[nn.Parameter]:
        # Embeddings of earlier tasks stay fixed: only the current one is learned.
        return [*self.hnet.parameters(), self.embeddings[self.current]]

    def forward(self, x: Tensor, task_ids: Tensor | None) -> Tensor:
        ids = task_ids if task_ids is not None else x.new_full((len(x),), self.current).long()
        self._step = None
        if self._old is None or not torch.is_grad_enabled() or not (ids == self.current).all():
            return self._logits_with_ids(x, ids)
        emb, target = self._old
        k = self.config.reg_tasks_per_step
        if k is not None and k < len(emb):
            pick = torch.randperm(len(emb), generator=self._reg_gen)[:k].to(self.device)
            emb, target = emb[pick], target[pick]
        self._step = RegStep(emb, target)
        if self.config.lookahead:  # old tasks are generated at theta + dtheta, after loss()
            flat = self.hnet(self.embeddings[self.current])
        else:  # one hypernetwork pass for the current task and every regularised old one
            flats = self.hnet(torch.cat([self.embeddings[self.current][None], emb]))
            flat, self._step.pred = flats[0], flats[1:]
        out = self._global(len(x), x)
        cls = torch.as_tensor(self.task_classes[self.current], device=x.device)
        out[:, cls] = self.task_logits(x, self.current, flat).to(out.dtype)
        return out

    def loss(self, logits: Tensor, batch: Batch) -> Tensor:
        task_loss = super().loss(logits, batch)
        if not self.config.lookahead or self._step is None:
            return task_loss
        # hypercl's order: backpropagate the task loss, preview the optimiser's step from those
        # gradients (summed over ranks: each holds its share), regularise at theta + dtheta; the
        # loop adds the regulariser's gradients (so the returned loss is detached).
        share = 1.0 if batch.share is None else batch.share
        with torch.autocast(self.device.type, enabled=False):
            (task_loss * share if share != 1.0 else task_loss).backward()
        names, params = zip(*self.hnet.named_parameters(), strict=True)
        assert self.optimizer is not None
        preview = optimizer_delta if self.config.lookahead_step == "optimizer" else sgd_delta
        grads = summed_gradients(params, self.context.dist)
        ahead = preview(self.optimizer, params, grads, scratch=self.hnet.workspace, add_param=True)
        at = {n: a for n, a in zip(names, ahead, strict=True) if a is not None}
        self._step.pred = self.hnet(self._step.emb, at)  # at theta + dtheta, dtheta detached
        return task_loss.detach()

    def extra_loss(self, batch: Batch, logits: Tensor) -> Tensor | None:
        step, self._step = self._step, None
        if step is None or step.pred is None:
            return None
        return self.config.beta / len(step.target) * (step.pred.float() - step.target).pow(2).sum()

    def after_experience(self, exp: Experience) -> None:
        self._old = None
        self.hnet.release_workspace()
        if exp.task_id not in self.learned:
            self.learned.append(exp.task_id)
        with torch.no_grad():  # theta*: targets for every learned task, recomputed now
            flats = self.generate(self.learned).float()
        self.targets = {t: f.clone() for t, f in zip(self.learned, flats, strict=True)}

    def predict(self, x: Tensor, task_ids: Tensor | None) -> Tensor:
        if task_ids is not None:
            return self._logits_with_ids(x, task_ids)
        tasks, best, logits = self._infer(x)
        out = self._global(len(x), logits[0])
        for i, t in enumerate(tasks):
            rows = (best == i).nonzero(as_tuple=True)[0]
            cls = torch.as_tensor(self.task_classes[t], device=x.device)
            out[rows.unsqueeze(1), cls.unsqueeze(0)] = logits[i][rows].to(out.dtype)
        return out

    def _infer(self, x: Tensor) -> tuple[list[int], Tensor, list[Tensor]]:
        """Candidate tasks, index of the lowest-entropy one per sample, and their logits."""
        tasks = self.learned or [self.current]
        flats = self.generate(tasks)
        logits = [self.task_logits(x, t, f).float() for t, f in zip(tasks, flats, strict=True)]
        temp, norm = self.config.ent_temperature, self.config.ent_normalize
        ent = torch.stack([normalized_entropy(z, temperature=temp, normalize=norm) for z in logits])
        return tasks, ent.argmin(0), logits  # ent: (tasks, n)

    @torch.inference_mode()
    def infer_tasks(self, x: Tensor) -> Tensor:
        """HNET+ENT: the task id of the lowest-entropy generated network, per sample."""
        tasks, best, _ = self._infer(x)
        return torch.as_tensor(tasks, device=x.device)[best]

    def task_inference_accuracy(self, data: TensorData, batch_size: int = 1024) -> float:
        """Fraction of ``data`` whose task :meth:`infer_tasks` gets right (in eval mode)."""
        was_training, b = self.model.training, batch_size
        self.model.eval()
        hits = sum(
            int((self.infer_tasks(data.x[s : s + b]) == data.t[s : s + b]).sum())
            for s in range(0, len(data), b)
        )
        self.model.train(was_training)
        return hits / max(len(data), 1)

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "hnet": self.hnet.state_dict(),
            "embeddings": torch.stack([e.detach() for e in self.embeddings]).clone(),
            "learned": list(self.learned),
            "targets": {t: v.clone() for t, v in self.targets.items()},
            "bn_stats": {t: {k: v.clone() for k, v in d.items()} for t, d in self.bn_stats.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.hnet.load_state_dict(state["hnet"])
        with torch.no_grad():
            for e, v in zip(self.embeddings, state["embeddings"], strict=True):
                e.copy_(v)
        self.learned = list(state["learned"])
        self.targets = {int(t): v.to(self.device) for t, v in state["targets"].items()}
        self.bn_stats = {
            int(t): {k: v.to(self.device) for k, v in d.items()}
            for t, d in state["bn_stats"].items()
        }
