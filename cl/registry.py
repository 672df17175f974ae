"""Name -> (config dataclass, builder) registries for streams and models."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    config_cls: type
    builder: T


class Registry(Generic[T]):
    """A small registry whose entries pair a builder with its config schema."""

    def __init__(self, kind: str, plural: str | None = None) -> None:
        self.kind = kind
        self.plural = plural or f"{kind}s"
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, config_cls: type) -> Callable[[T], T]:
        def deco(builder: T) -> T:
            if name in self._entries and self._entries[name].builder is not builder:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = Entry(name, config_cls, builder)
            return builder

        return deco

    def get(self, name: str) -> Entry[T]:
        from cl.errors import ConfigError

        if name not in self._entries:
            raise ConfigError(
                f"unknown {self.kind} {name!r}; valid {self.plural}: {', '.join(self.names())}"
            )
        return self._entries[name]

    def unregister(self, name: str) -> None:
        """Remove ``name`` (tests that register a throwaway entry clean up with it)."""
        self._entries.pop(name, None)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[Entry[Any]]:
        return [self._entries[n] for n in self.names()]
