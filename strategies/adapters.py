"""Adapter swapping: one peft LoRA or MoRA adapter per experience on a frozen backbone.

AdapterSwap (Fleshman et al., "AdapterSwap: Continuous Training of LLMs with Data Removal and
Access-Control Guarantees", 2024) with LoRA (Hu et al., 2022) or MoRA (Jiang et al., "MoRA:
High-Rank Updating for Parameter-Efficient Fine-Tuning", 2024) adapters. Each experience is a
data partition ``exp{index}`` with its own adapter and head, trained while every other adapter is
frozen, so later experiences cannot change earlier ones. At test time an adapter is chosen by the
task id (``routing: oracle``) or by a per-partition model of frozen-backbone embeddings
(``routing: router``, see :mod:`cl.models.adapter_router`); with ``top_k > 1`` the chosen
adapters' predictions are combined as an output mixture ``log sum_k w_k softmax(z_k)`` (no weight
merging). Adapters carry the principals allowed to use them; :meth:`Adapters.delete` and
:meth:`Adapters.forget` remove a partition (or part of it) exactly.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from cl.errors import ConfigError
from cl.models.adapter_router import (
    ROUTERS,
    PartitionRouter,
    adapter_config,
    allowed,
    export_adapter,
    fit_entry,
    linear_names,
    merge_adapter,
)
from cl.models.heads import MultiHead
from cl.strategy import ExperienceStats, Strategy, StrategyConfig, register_strategy
from cl.streams.base import Experience, TensorData
from cl.validation import fraction, non_negative, positive

# Same as cl.models.mora.MORA_TYPES (kept here: that module imports peft, which is slow).
MORA_TYPES = (1, 6)


@dataclass
class AdaptersConfig(StrategyConfig):
    """Adapter-swapping settings.

    Attributes:
        adapter_type: ``lora`` or ``mora``.
        r: LoRA rank (MoRA matches its parameter count with a square matrix).
        lora_alpha: LoRA scaling numerator (MoRA ignores it, as the paper's code does).
        lora_dropout: Dropout on the adapter input.
        mora_type: 1 (sharing operators) or 6 (rotation operators).
        target_modules: Backbone module names to adapt; empty: every ``nn.Linear``.
        head: ``per_adapter`` (a head over each partition's classes) or ``shared`` (the model's
            head, trained with the first adapter and then frozen: for streams whose partitions
            share one label space).
        routing: ``oracle`` (adapter of the task id; task ids needed at test time) or
            ``router`` (ranked by the partitions' embedding models).
        router: ``gmm`` or ``prototypes``.
        router_components: Mixture components (or prototypes) per class.
        router_shrinkage: Least covariance shrinkage of the gmm router.
        top_k: Adapters mixed per query.
        router_temperature: Temperature of the mixture weights.
        principal: Principal the evaluator predicts for (null: unrestricted).
        access: Adapter name (``exp{index}``) -> principals allowed to use it (absent: public).
    """

    name: str = "adapters"
    adapter_type: str = "lora"
    r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    mora_type: int = 1
    target_modules: list[str] = field(default_factory=list)
    head: str = "per_adapter"
    routing: str = "router"
    router: str = "gmm"
    router_components: int = 3
    router_shrinkage: float = 0.05
    top_k: int = 1
    router_temperature: float = 1.0
    principal: str | None = None
    access: dict[str, list[str]] = field(default_factory=dict)

    def validate(self) -> None:
        checks = [
            (self.adapter_type in ("lora", "mora"), "adapter_type must be lora or mora"),
            (self.mora_type in MORA_TYPES, f"mora_type must be one of {MORA_TYPES}"),
            (self.head in ("per_adapter", "shared"), "head must be per_adapter or shared"),
            (self.routing in ("oracle", "router"), "routing must be oracle or router"),
            (self.router in ROUTERS, f"router must be one of {', '.join(ROUTERS)}"),
            (self.r > 0 and self.top_k > 0, "r and top_k must be positive"),
            (self.router_components > 0, "router_components must be positive"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(f"strategy.{msg}")
        fraction("strategy", self, "lora_dropout", high_open=True)
        non_negative("strategy", self, "router_shrinkage")
        positive("strategy", self, "router_temperature", "lora_alpha")


@register_strategy("adapters")
class Adapters(Strategy[AdaptersConfig]):
    """One adapter per experience on a frozen backbone, routed at test time."""

    config_cls = AdaptersConfig

    @classmethod
    def requires_task_ids(cls, config: StrategyConfig) -> bool:
        """Oracle routing picks the adapter by the task id: ids needed at test time."""
        return getattr(config, "routing", None) == "oracle"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config.validate()
        self.needs_task_id_at_test = self.requires_task_ids(self.config)  # type: ignore[misc]
        if self.needs_task_id_at_test and not self.context.stream.has_task_ids:
            raise ConfigError(
                f"strategy.routing=oracle needs task ids at test time, but stream "
                f"{self.context.stream.name!r} has none (use routing=router)"
            )
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.peft: Any = None
        self.meta: dict[str, dict[str, Any]] = {}
        self.heads = nn.ModuleDict()
        self.router = PartitionRouter()
        self.access: dict[str, set[str] | None] = {k: set(v) for k, v in self.config.access.items()}
        self.training_name: str | None = None
        self.head_owner: str | None = None
        self._targets: list[str] | None = None

    # ------------------------------------------------------------ adapter bank
    def _peft_config(self) -> Any:
        if self._targets is None:  # resolved on the plain backbone, before peft wraps it
            self._targets = list(self.config.target_modules) or linear_names(self.model.backbone)
        c = self.config
        return adapter_config(
            c.adapter_type, c.r, c.lora_alpha, c.lora_dropout, c.mora_type, self._targets
        )

    def _partition_seed(self, index: int) -> int:
        return int(torch.randint(2**62, (1,), generator=self.generator(index, 7_777)))

    def _add_adapter(self, name: str, meta: dict[str, Any]) -> None:
        """Create adapter ``name`` and its head, initialised from the partition's own seed (so
        a partition's adapter never depends on which other partitions exist)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self._partition_seed(meta["index"]))
            cfg = self._peft_config()
            if self.peft is None:
                # peft edits module trees in place: give it a copy of the backbone's structure
                # that shares its (frozen) tensors, so the model itself never changes.
                bb = self.model.backbone
                shared = {id(t): t for t in [*bb.parameters(), *bb.buffers()]}
                shell = copy.deepcopy(bb, memo=shared)
                from peft import get_peft_model  # heavy: imported only when used

                self.peft = get_peft_model(shell, cfg, adapter_name=name)
            else:
                self.peft.add_adapter(name, cfg)
            if self.config.head == "per_adapter":
                head = MultiHead(
                    self.model.feature_dim, self.context.stream.n_classes, [meta["classes"]]
                )
                self.heads[name] = head.to(self.device)
        self.meta[name] = meta
        self.peft.to(self.device)

    def _use(self, names: list[str]) -> None:
        """Activate adapters ``names`` (empty: the frozen backbone), all kept frozen."""
        self.peft.base_model.set_adapter(names, inference_mode=True)
        # The frozen backbone always runs in eval mode (no dropout, fixed norm statistics).
        self.peft.eval()

    def _head(self, name: str) -> nn.Module:
        return self.heads[name] if self.config.head == "per_adapter" else self.model.head

    def _adapter_params(self, name: str) -> list[nn.Parameter]:
        return [p for n, p in self.peft.named_parameters() if f".{name}." in n]

    # ------------------------------------------------------------------- hooks
    def before_experience(self, exp: Experience) -> None:
        name = f"exp{exp.index}"
        if name in self.meta:  # retraining a partition replaces its adapter
            self.delete(name)
        meta = {"index": exp.index, "task_id": exp.task_id, "classes": list(exp.classes)}
        self._add_adapter(name, meta)
        self.training_name = name  # the current partition, until the next one starts
        if name in self.config.access and name not in self.access:  # after a delete
            self.access[name] = set(self.config.access[name])
        self._use([name])
        for mod_name, mod in self.peft.named_modules():
            if mod_name.endswith(f"lora_dropout.{name}"):
                mod.train()
        if self.config.head == "shared" and self.head_owner is None:
            self.head_owner = name
        for p in self.trainable_parameters():
            p.requires_grad_(True)
        # Adapter dropout draws from the global generator: seed it per partition too.
        torch.manual_seed(self._partition_seed(exp.index) + 1)

    def trainable_parameters(self) -> list[nn.Parameter]:
        name = self.training_name
        if name is None:
            return []
        params = self._adapter_params(name)
        if self.config.head == "per_adapter" or self.head_owner == name:
            params += list(self._head(name).parameters())
        return params

    def forward(self, x: Tensor, task_ids: Tensor | None) -> Tensor:
        assert self.training_name is not None
        return self._head(self.training_name)(self.peft(x))

    def after_experience(self, exp: Experience) -> None:
        name = self.training_name
        assert name is not None
        for p in self.model.parameters():
            p.requires_grad_(False)
        for p in self.trainable_parameters():
            p.requires_grad_(False)
        if not isinstance(exp.train, TensorData):
            raise ConfigError("the adapters router needs in-memory (tensor) experiences")
        z = self.frozen_features(exp.train.x)
        gen = torch.Generator().manual_seed(self._partition_seed(exp.index) + 2)
        entry = fit_entry(
            z.cpu(),
            exp.train.y.cpu(),
            kind=self.config.router,
            components=self.config.router_components,
            shrinkage=self.config.router_shrinkage,
            generator=gen,
        )
        self.router.add(name, entry)

    # --------------------------------------------------------------- inference
    @torch.no_grad()
    def frozen_features(self, x: Tensor) -> Tensor:
        """Embeddings of the frozen backbone (no adapter), in eval batches."""
        was_training = self.model.training
        self.model.eval()
        bs = self.context.train.eval_batch_size
        out = torch.cat([self.model.backbone(x[i : i + bs]) for i in range(0, len(x), bs)])
        self.model.train(was_training)
        return out.float()

    def adapter_logits(self, name: str, x: Tensor) -> Tensor:
        """Logits of adapter ``name`` and its head (the oracle's output for its task)."""
        self._use([name])
        return self._head(name)(self.peft(x)).float()

    def usable(self, principal: str | None) -> list[str]:
        """Adapters (trained, with routing entries) that ``principal`` may use."""
        return [n for n in self.router.entries if allowed(self.access, n, principal)]

    def predict(self, x: Tensor, task_ids: Tensor | None) -> Tensor:
        return self.predict_for(x, self.config.principal, task_ids)

    def predict_for(
        self, x: Tensor, principal: str | None, task_ids: Tensor | None = None
    ) -> Tensor:
        """Logits for ``principal``: only adapters it may use ever touch its queries.

        Rows with a task id whose adapter is usable go to that adapter (oracle); the others
        are routed among the usable adapters. With none usable, the frozen model answers.
        """
        names = self.usable(principal)
        if not names:  # the frozen model alone
            return self.model(x).float()
        by_task = {m["task_id"]: n for n, m in self.meta.items() if n in names}
        out = torch.empty(len(x), self.context.stream.n_classes, device=x.device)
        rest = torch.ones(len(x), dtype=torch.bool, device=x.device)
        if task_ids is not None:
            for t in torch.unique(task_ids).tolist():
                if t in by_task:
                    rows = task_ids == t
                    out[rows] = self.adapter_logits(by_task[t], x[rows])
                    rest &= ~rows
        if rest.any():
            out[rest] = self._routed(x[rest], names)
        return out

    def _routed(self, x: Tensor, names: list[str]) -> Tensor:
        idx, w = self.router.route(
            self.frozen_features(x), names, self.config.top_k, self.config.router_temperature
        )
        k = idx.shape[1]
        parts = torch.full(
            (k, len(x), self.context.stream.n_classes), float("-inf"), device=x.device
        )
        for j, name in enumerate(names):
            for slot in range(k):
                rows = idx[:, slot] == j
                if rows.any():
                    z = self.adapter_logits(name, x[rows])
                    # top-1 returns the adapter's own logits (same as the oracle's).
                    parts[slot, rows] = z if k == 1 else torch.log_softmax(z, dim=1)
        if k == 1:
            return parts[0]
        return torch.logsumexp(parts + torch.log(w.T.float()).unsqueeze(-1), dim=0)

    def routing_accuracy(
        self, exps: list[Experience], ks: tuple[int, ...] = (1, 3)
    ) -> dict[int, float]:
        """Fraction of test queries whose own partition's adapter is in the router's top-k."""
        data = [(self.frozen_features(e.test.x), f"exp{e.index}") for e in exps]  # type: ignore[union-attr]
        return self.router.topk_accuracy(data, ks)

    # ------------------------------------------- access, deletion and export
    def set_access(self, name: str, principals: list[str] | set[str] | None) -> None:
        """Allow only ``principals`` to use adapter ``name`` (None: everyone)."""
        self.access[name] = None if principals is None else set(principals)

    def delete(self, name: str) -> None:
        """Remove partition ``name``: its adapter, head, routing entry and access entry."""
        if name not in self.meta:
            raise KeyError(f"no adapter {name!r}; have {sorted(self.meta)}")
        if self.config.head == "shared" and self.head_owner == name:
            raise ValueError(f"the shared head was trained on {name!r}: retrain from scratch")
        if len(self.meta) == 1:
            self.peft = None
        else:
            self.peft.delete_adapter(name)
        self.meta.pop(name)
        if self.training_name == name:
            self.training_name = None
        self.router.remove(name)
        self.access.pop(name, None)
        if name in self.heads:
            del self.heads[name]

    def forget(self, name: str, remaining: TensorData) -> ExperienceStats:
        """Drop part of partition ``name``: retrain its adapter from ``remaining`` only."""
        meta, acl = dict(self.meta[name]), self.access.get(name)
        self.delete(name)
        exp = Experience(
            index=meta["index"],
            task_id=meta["task_id"],
            classes=meta["classes"],
            train=remaining,
            test=remaining,
        )
        stats = self.train_experience(exp)
        self.access[name] = acl
        return stats

    def export(self, path: str | Path) -> list[Path]:
        """Every adapter as a standard peft adapter directory ``path/<name>``."""
        return [
            export_adapter(
                self.peft,
                n,
                self._head(n),
                path,
                {**m, "principals": sorted(self.access.get(n) or [])},
            )
            for n, m in self.meta.items()
        ]

    def merged_model(self, name: str, path: str | Path | None = None) -> nn.Module:
        """A plain model with adapter ``name`` merged into the backbone (saved when ``path``)."""
        return merge_adapter(self.peft, name, self._head(name), self.model.feature_dim, path)

    # ---------------------------------------------------------------- state
    def _adapter_state(self) -> dict[str, Tensor]:
        """The adapters' own tensors (the frozen base tensors are the model's)."""
        if self.peft is None:
            return {}
        marks = [f".{n}." for n in self.meta]
        return {k: v for k, v in self.peft.state_dict().items() if any(m in k for m in marks)}

    def state_dict(self) -> dict[str, Any]:
        return {
            "meta": {n: dict(m) for n, m in self.meta.items()},
            "model": self.model.state_dict(),
            "adapters": self._adapter_state(),
            "heads": self.heads.state_dict(),
            "router": self.router.state_dict(),
            "access": {n: (sorted(a) if a is not None else None) for n, a in self.access.items()},
            "head_owner": self.head_owner,
            "current": self.training_name,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        for name, meta in state["meta"].items():
            if name not in self.meta:
                self._add_adapter(name, dict(meta))
        if self.peft is not None:
            if set(state["adapters"]) != set(self._adapter_state()):
                raise ValueError("adapter state does not match the adapters being restored")
            self.peft.load_state_dict(state["adapters"], strict=False)
        self.heads.load_state_dict(state["heads"])
        self.router.load_state_dict(state["router"])
        self.access = {n: (set(a) if a is not None else None) for n, a in state["access"].items()}
        self.head_owner = state["head_owner"]
        self.training_name = state["current"]
        for p in [*self.model.parameters(), *self.heads.parameters()]:
            p.requires_grad_(False)
        if self.peft is not None:
            self._use([])
