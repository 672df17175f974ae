"""Learning without Forgetting (LwF): distil the previous model's outputs on the new data.

Li & Hoiem, "Learning without Forgetting", ECCV 2016 / TPAMI 2018; distillation with a
temperature from Hinton et al., "Distilling the Knowledge in a Neural Network", 2015.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from cl.errors import ConfigError
from cl.models.heads import MultiHead
from cl.strategy import Batch, Strategy, StrategyConfig, register_strategy
from cl.streams.base import Experience
from cl.validation import non_negative, positive


@dataclass
class LwFConfig(StrategyConfig):
    """LwF settings.

    The loss is ``CE + alpha * s * KL(softmax(z_old / T) || softmax(z / T))`` averaged over
    the batch, where ``z_old`` are the teacher's logits (the model as it was after the
    previous experience, frozen, in eval mode) and ``s`` is ``T^2`` when ``t2_scaling`` else 1.
    The KL runs over the logits of classes seen before (class_il, domain_il); in task_il it
    runs per earlier task over that task's classes (its head; on a multi-head model the task
    ids select it, so tasks may share classes) and is summed over tasks, each task once. On a
    language model (text-to-text streams) it is token-level: the KL between the next-token
    distributions over the vocabulary at every target token, averaged over tokens.

    Attributes:
        alpha: Weight of the distillation term (0: naive fine-tuning).
        temperature: Softmax temperature T.
        t2_scaling: Multiply the distillation term by T^2 (Hinton et al.) so its gradient
            scale does not depend on T. Off by default, as in the paper and Avalanche.
    """

    name: str = "lwf"
    alpha: float = 1.0
    temperature: float = 2.0
    t2_scaling: bool = False

    def validate(self) -> None:
        non_negative("strategy", self, "alpha")
        positive("strategy", self, "temperature")


@register_strategy("lwf")
class LwF(Strategy[LwFConfig]):
    """Knowledge distillation from a frozen copy of the model taken after each experience."""

    config_cls = LwFConfig
    modalities = ("vision", "text", "text2text")
    packed_rows = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self.config.temperature <= 0 or self.config.alpha < 0:
            raise ConfigError("strategy.temperature must be > 0 and strategy.alpha >= 0")
        self.teacher: nn.Module | None = None
        self.old_tasks: list[int] = []  # task ids trained on before the current experience

    def after_experience(self, exp: Experience) -> None:
        teacher = copy.deepcopy(self.model)
        teacher.eval()  # dropout off and batch-norm statistics fixed: the model that was kept
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.teacher = teacher
        if exp.task_id not in self.old_tasks:
            self.old_tasks.append(exp.task_id)

    def _groups(self) -> list[list[int]]:
        """Class groups the KL runs over, each once: per earlier task in task_il, else one."""
        info = self.context.stream
        if info.scenario == "task_il":
            groups = [sorted(info.task_classes[t]) for t in self.old_tasks]
            return [list(g) for g in dict.fromkeys(tuple(g) for g in groups)]
        return [sorted({c for t in self.old_tasks for c in info.task_classes[t]})]

    def _kl(self, new: Tensor, old: Tensor) -> Tensor:
        t = self.config.temperature
        log_p = F.log_softmax(new.float() / t, dim=1)
        return F.kl_div(log_p, F.softmax(old.float() / t, dim=1), reduction="batchmean")

    def extra_loss(self, batch: Batch, logits: Tensor) -> Tensor | None:
        if self.teacher is None:
            return None
        head = getattr(self.model, "head", None)
        loss = logits.new_zeros((), dtype=torch.float32)
        if isinstance(head, MultiHead):
            # One term per earlier task through its own head (tasks may share classes, so
            # heads are never applied all at once); features are computed once.
            teacher: Any = self.teacher
            with torch.no_grad():
                h_old = teacher.features(batch.x)
            h_new = self.model.features(batch.x)  # type: ignore[operator]
            for task in self.old_tasks:
                old = teacher.head.heads[task](h_old)
                loss = loss + self._kl(head.heads[task](h_new), old)
        else:
            with torch.no_grad():
                old_all = self.teacher(batch.x, batch.task_ids)
            if logits.dim() == 3:  # a language model's [B, V, L] logits: KL per target token
                keep = batch.y != -100
                new_t, old_t = logits.transpose(1, 2)[keep], old_all.transpose(1, 2)[keep]
                loss = loss + self._kl(new_t, old_t)
            for classes in self._groups() if logits.dim() == 2 else []:
                idx = torch.as_tensor(classes, device=logits.device)
                loss = loss + self._kl(logits[:, idx], old_all[:, idx])
        t = self.config.temperature
        scale = t * t if self.config.t2_scaling else 1.0
        return self.config.alpha * scale * loss

    def state_dict(self) -> dict[str, Any]:
        teacher = None if self.teacher is None else self.teacher.state_dict()
        return {**super().state_dict(), "teacher": teacher, "old_tasks": list(self.old_tasks)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.old_tasks = list(state["old_tasks"])
        self.teacher = None
        if state["teacher"] is not None:
            teacher = copy.deepcopy(self.model)
            teacher.load_state_dict(state["teacher"])
            teacher.eval()
            for p in teacher.parameters():
                p.requires_grad_(False)
            self.teacher = teacher
