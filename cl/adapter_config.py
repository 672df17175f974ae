"""Configuration of adapter-swapping strategies (the ``adapters`` strategy's options)."""

from __future__ import annotations

from dataclasses import dataclass, field

from cl.adapter_router import ROUTERS
from cl.errors import ConfigError
from cl.strategy import StrategyConfig
from cl.streams.base import StreamInfo
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
        target_modules: Backbone module names to adapt; empty: every ``nn.Linear`` (of a
            language model: all but its output embeddings).
        head: ``per_adapter`` (a head over each partition's classes) or ``shared`` (the model's
            head, trained with the first public partition and then frozen: for streams whose
            partitions share one label space; restricted partitions get their own head).
            Language models have no head (their vocabulary logits): ignored.
        routing: ``oracle`` (adapter of the task id; task ids needed at test time) or
            ``router`` (ranked by the partitions' embedding models).
        router: ``gmm``, ``prototypes`` or ``knn`` (a retriever: the nearest stored embedding
            of each partition; a language model's router reads its mean prompt states).
        router_components: Mixture components (or prototypes) per class.
        router_shrinkage: Least covariance shrinkage of the gmm router.
        top_k: Adapters mixed per query (a language model mixes next-token distributions).
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

    def validate_for(self, stream: StreamInfo) -> None:
        """Oracle routing needs task ids; a shared head serves partitions with one label space
        only (not class-incremental ones)."""
        if self.routing == "oracle" and not stream.has_task_ids:
            raise ConfigError(
                f"strategy.routing=oracle needs task ids at test time, but stream "
                f"{stream.name!r} has none (use routing=router)"
            )
        if self.head == "shared" and any(set(c) != set(stream.classes[0]) for c in stream.classes):
            raise ConfigError(
                f"strategy.head=shared trains one head on the first partition's classes, but "
                f"stream {stream.name!r} ({stream.scenario}) has different classes per "
                "experience: use strategy.head=per_adapter"
            )
