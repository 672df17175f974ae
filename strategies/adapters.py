"""Adapter swapping: one peft LoRA or MoRA adapter per experience on a frozen backbone.

AdapterSwap (Fleshman et al., "AdapterSwap: Continuous Training of LLMs with Data Removal and
Access-Control Guarantees", 2024) with LoRA (Hu et al., 2022) or MoRA (Jiang et al., "MoRA:
High-Rank Updating for Parameter-Efficient Fine-Tuning", 2024) adapters. Each experience is a
data partition ``exp{index}`` with its own adapter (:class:`cl.adapter_bank.AdapterBank`),
trained while every other adapter is frozen, so later experiences cannot change earlier ones. At
test time an adapter is chosen by the task id (``routing: oracle``) or by a per-partition model of
frozen-backbone embeddings (``routing: router``, :mod:`cl.adapter_router`); with ``top_k > 1`` the
chosen adapters' predictions are combined as an output mixture ``log sum_k w_k softmax(z_k)``.

Access control (:mod:`cl.access`): a principal's queries only ever touch partitions it may use.
With ``head: shared`` the head is trained by the first *public* partition and then frozen; a
partition restricted when it trains gets a head of its own, so no denied partition's data reaches
a principal through the shared head (restricting the head's partition afterwards is refused).
:meth:`Adapters.delete` and :meth:`Adapters.forget` remove a partition (or part of it) exactly;
``cl-adapters delete`` purges it from a run's checkpoints and exports on disk.

On language models (no head; top-k mixes next-token distributions) see :mod:`cl.adapter_lm`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from cl.access import AccessPolicy
from cl.adapter_bank import AdapterBank, adapter_config
from cl.adapter_config import AdaptersConfig
from cl.adapter_lm import adapted, adapter_targets, embed, merged_wrapper, routed_generate
from cl.adapter_router import PartitionRouter, fit_entry, predict_routed
from cl.errors import ConfigError
from cl.models.heads import MultiHead
from cl.models.lm import LanguageModel
from cl.strategy import ExperienceStats, Strategy, StrategyConfig, register_strategy
from cl.streams.base import Experience, TensorData


@register_strategy("adapters")
class Adapters(Strategy[AdaptersConfig]):
    """One adapter per experience on a frozen backbone, routed at test time."""

    config_cls = AdaptersConfig
    modalities = ("vision", "text", "text2text")

    @classmethod
    def requires_task_ids(cls, config: StrategyConfig) -> bool:
        """Oracle routing picks the adapter by the task id: ids needed at test time."""
        return getattr(config, "routing", None) == "oracle"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config.validate()
        self.needs_task_id_at_test = self.requires_task_ids(self.config)  # type: ignore[misc]
        self.config.validate_for(self.context.stream)
        self.lm = isinstance(self.model, LanguageModel)  # no head: the LM's vocabulary logits
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.bank = AdapterBank()
        self.meta: dict[str, dict[str, Any]] = {}
        self.heads = nn.ModuleDict()
        self.router = PartitionRouter()
        self.policy = AccessPolicy(self.config.access)
        self.training_name: str | None = None
        self.head_owner: str | None = None
        self._targets: list[str] | None = None

    @property
    def peft(self) -> Any:
        """The peft model holding every adapter (None before the first one)."""
        return self.bank.peft

    def _partition_seed(self, index: int) -> int:
        return int(torch.randint(2**62, (1,), generator=self.generator(index, 7_777)))

    def _add_adapter(self, name: str, meta: dict[str, Any]) -> None:
        """Create adapter ``name`` (and its own head, if any), initialised from the partition's
        own seed (so a partition's adapter never depends on which other partitions exist)."""
        if self._targets is None:
            self._targets = list(self.config.target_modules) or adapter_targets(self.model)
        c = self.config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self._partition_seed(meta["index"]))
            cfg = adapter_config(
                c.adapter_type, c.r, c.lora_alpha, c.lora_dropout, c.mora_type, self._targets
            )
            self.bank.add(name, cfg, self.model.backbone, self.device)
            if meta["own_head"]:
                head = MultiHead(
                    self.model.feature_dim, self.context.stream.n_classes, [meta["classes"]]
                )
                self.heads[name] = head.to(self.device)
        self.meta[name] = meta

    def _head(self, name: str) -> nn.Module:
        if name in self.heads:
            return self.heads[name]
        return self.model.head

    # ------------------------------------------------------------------- hooks
    def before_experience(self, exp: Experience) -> None:
        name = f"exp{exp.index}"
        if name in self.meta:  # retraining a partition replaces its adapter
            self.delete(name)
        self.policy.reset(name)
        # Own head: always per_adapter; with a shared head, for partitions some are denied.
        own = not self.lm and (self.config.head == "per_adapter" or self.policy.is_restricted(name))
        meta = {"index": exp.index, "task_id": exp.task_id, "classes": list(exp.classes)}
        self._add_adapter(name, {**meta, "own_head": own})
        self.training_name = name  # the current partition, until the next one starts
        self.bank.activate([name], train_dropout=name)
        if not own and not self.lm and self.head_owner is None:
            self.head_owner = name
        for p in self.trainable_parameters():
            p.requires_grad_(True)
        # Adapter dropout draws from the global generator: seed it per partition too.
        torch.manual_seed(self._partition_seed(exp.index) + 1)

    def trainable_parameters(self) -> list[nn.Parameter]:
        name = self.training_name
        if name is None:
            return []
        params = self.bank.adapter_parameters(name)
        if name in self.heads or self.head_owner == name:
            params += list(self._head(name).parameters())
        return params

    def forward(self, x: Tensor, task_ids: Tensor | None) -> Tensor:
        assert self.training_name is not None
        return self._head(self.training_name)(adapted(self.model, self.bank, x))

    def after_experience(self, exp: Experience) -> None:
        name = self.training_name
        assert name is not None
        for p in [*self.model.parameters(), *self.trainable_parameters()]:
            p.requires_grad_(False)
        if not isinstance(exp.train, TensorData):
            raise ConfigError("the adapters router needs in-memory (tensor) experiences")
        z = self.frozen_features(exp.train.x)
        gen = torch.Generator().manual_seed(self._partition_seed(exp.index) + 2)
        c = self.config
        entry = fit_entry(
            z.cpu(),
            torch.zeros(len(z), dtype=torch.long) if self.lm else exp.train.y.cpu(),
            kind=c.router,
            components=c.router_components,
            shrinkage=c.router_shrinkage,
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
        out = torch.cat([embed(self.model, x[i : i + bs]) for i in range(0, len(x), bs)])
        self.model.train(was_training)
        return out.float()

    def adapter_logits(self, name: str, x: Tensor) -> Tensor:
        """Logits of adapter ``name`` and its head (the oracle's output for its task)."""
        self.bank.activate([name])
        return self._head(name)(adapted(self.model, self.bank, x)).float()

    def generate(self, ids: Tensor, mask: Tensor, **kw: Any) -> Tensor:
        """Greedy continuations of prompts for ``config.principal`` (:mod:`cl.adapter_lm`)."""
        return routed_generate(self, ids, mask, principal=self.config.principal, **kw)

    def usable(self, principal: str | None) -> list[str]:
        """Adapters (trained, with routing entries) that ``principal`` may use."""
        return self.policy.usable(self.router.entries, principal)

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
        c = self.config
        return predict_routed(
            x,
            task_ids,
            names,
            task_of={m["task_id"]: n for n, m in self.meta.items() if n in names},
            router=self.router,
            features=self.frozen_features,
            logits=self.adapter_logits,
            top_k=c.top_k,
            temperature=c.router_temperature,
        )

    def routing_accuracy(
        self, exps: list[Experience], ks: tuple[int, ...] = (1, 3)
    ) -> dict[int, float]:
        """Fraction of test queries whose own partition's adapter is in the router's top-k."""
        data = [(self.frozen_features(e.test.x), f"exp{e.index}") for e in exps]  # type: ignore[union-attr]
        return self.router.topk_accuracy(data, ks)

    # ------------------------------------------- access, deletion and export
    def set_access(self, name: str, principals: list[str] | set[str] | None) -> None:
        """Allow only ``principals`` to use partition ``name`` (None: everyone).

        Raises:
            ValueError: ``name`` trained the shared head, which every output depends on.
        """
        if principals is not None and name == self.head_owner:
            raise ValueError(
                f"the shared head was trained on {name!r}: every output depends on it, so it "
                "cannot be restricted now (restrict it before it trains: strategy.access)"
            )
        self.policy.restrict(name, principals)

    def delete(self, name: str) -> None:
        """Remove partition ``name``: its adapter, head, routing entry and access entry."""
        if name not in self.meta:
            raise KeyError(f"no adapter {name!r}; have {sorted(self.meta)}")
        if self.head_owner == name:
            raise ValueError(f"the shared head was trained on {name!r}: retrain from scratch")
        self.bank.delete(name)
        self.meta.pop(name)
        if self.training_name == name:
            self.training_name = None
        self.router.remove(name)
        self.policy.drop(name)
        if name in self.heads:
            del self.heads[name]

    def forget(self, name: str, remaining: TensorData) -> ExperienceStats:
        """Drop part of partition ``name``: retrain its adapter from ``remaining`` only."""
        meta, acl = dict(self.meta[name]), self.policy.principals(name)
        self.delete(name)
        self.policy.restrict(name, acl)
        exp = Experience(
            index=meta["index"],
            task_id=meta["task_id"],
            classes=meta["classes"],
            train=remaining,
            test=remaining,
        )
        return self.train_experience(exp)

    def _public_meta(self, name: str) -> dict[str, Any]:
        return {**self.meta[name], "principals": sorted(self.policy.principals(name) or [])}

    def export(self, path: str | Path) -> list[Path]:
        """Every adapter as a standard peft adapter directory ``path/<name>``."""
        return [self.bank.export(n, self._head(n), path, self._public_meta(n)) for n in self.meta]

    def merged_model(self, name: str, path: str | Path | None = None) -> nn.Module:
        """A plain model with adapter ``name`` merged into the backbone (saved when ``path``)."""
        fd, meta = self.model.feature_dim, self._public_meta(name)
        wrap = merged_wrapper(self.model)
        return self.bank.merged(name, self._head(name), fd, path, meta, wrap=wrap)

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {
            "meta": {n: dict(m) for n, m in self.meta.items()},
            "model": self.model.state_dict(),
            "adapters": self.bank.adapter_state(),
            "heads": self.heads.state_dict(),
            "router": self.router.state_dict(),
            "access": self.policy.state_dict(),
            "head_owner": self.head_owner,
            "current": self.training_name,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        for name, meta in state["meta"].items():
            if name not in self.meta:
                own = meta.get("own_head", self.config.head == "per_adapter")
                self._add_adapter(name, {**meta, "own_head": own})
        self.bank.load_adapter_state(state["adapters"])
        self.heads.load_state_dict(state["heads"])
        self.router.load_state_dict(state["router"])
        self.policy.load_state_dict(state["access"])
        self.head_owner = state["head_owner"]
        self.training_name = state["current"]
        for p in [*self.model.parameters(), *self.heads.parameters()]:
            p.requires_grad_(False)
        if self.peft is not None:
            self.bank.activate([])
