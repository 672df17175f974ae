"""Model builders and the model registry.

Every model is a :class:`CLModel`: a feature extractor (``backbone``) and a head that returns
logits over the stream's global label space.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from omegaconf import MISSING
from torch import Tensor, nn

from cl.models.heads import MultiHead, SingleHead
from cl.registry import Registry
from cl.streams.base import StreamInfo


@dataclass
class ModelConfig:
    """Fields every model config has.

    Attributes:
        name: Model name.
        multi_head: One head per task (task ids needed to pick it) instead of one shared head.
    """

    name: str = MISSING
    multi_head: bool = False


class CLModel(nn.Module):
    """``backbone`` maps inputs to features, ``head`` maps features (and task ids) to logits."""

    def __init__(self, backbone: nn.Module, head: nn.Module, feature_dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.feature_dim = feature_dim

    def features(self, x: Tensor) -> Tensor:
        return self.backbone(x)

    def forward(self, x: Tensor, task_ids: Tensor | None = None) -> Tensor:
        return self.head(self.backbone(x), task_ids)


def make_head(cfg: ModelConfig, feature_dim: int, info: StreamInfo) -> nn.Module:
    if cfg.multi_head:
        return MultiHead(feature_dim, info.n_classes, info.task_classes)
    return SingleHead(feature_dim, info.n_classes)


# Modules of this package that register no model (imported only where used, since some pull
# in heavy libraries such as peft).
LIBRARY_MODULES = frozenset({"heads", "mora", "prompting", "hypernet", "prompt_queue"})

ModelBuilder = Callable[[Any, StreamInfo], CLModel]
MODELS: Registry[ModelBuilder] = Registry("model")


def register_model(name: str, config_cls: type) -> Callable[[ModelBuilder], ModelBuilder]:
    """Register ``builder(config, stream_info) -> CLModel`` under ``name``."""
    return MODELS.register(name, config_cls)


def load_builtin_models() -> None:
    """Import every public module of this package (each registers its models).

    Modules here keep heavy imports (transformers, timm, peft, avalanche) inside functions, so
    that composing a config stays fast.
    """
    import importlib
    import pkgutil

    for mod in pkgutil.iter_modules(__path__):
        if not mod.name.startswith("_") and mod.name not in LIBRARY_MODULES:
            importlib.import_module(f"{__name__}.{mod.name}")


__all__ = ["MODELS", "CLModel", "ModelConfig", "load_builtin_models", "make_head", "register_model"]
