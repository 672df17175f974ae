"""Task streams: core types and the stream registry."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cl.registry import Registry
from cl.streams.base import SCENARIOS, Data, Experience, Stream, StreamInfo, TensorData

StreamBuilder = Callable[[Any], Stream]
STREAMS: Registry[StreamBuilder] = Registry("stream")


def register_stream(name: str, config_cls: type) -> Callable[[StreamBuilder], StreamBuilder]:
    """Register ``builder(config) -> Stream`` under ``name`` with its config dataclass."""
    return STREAMS.register(name, config_cls)


def load_builtin_streams() -> None:
    """Import every public module of this package (each registers its streams).

    Modules here keep heavy imports (transformers, timm, peft, avalanche) inside functions, so
    that composing a config stays fast.
    """
    import importlib
    import pkgutil

    for mod in pkgutil.iter_modules(__path__):
        if not mod.name.startswith("_") and mod.name != "base":
            importlib.import_module(f"{__name__}.{mod.name}")


__all__ = [
    "SCENARIOS",
    "STREAMS",
    "Data",
    "Experience",
    "Stream",
    "StreamInfo",
    "TensorData",
    "load_builtin_streams",
    "register_stream",
]
