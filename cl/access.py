"""Access policy of a partitioned model: which principals may use which partition.

A partition (an adapter trained on one data partition) is *public* unless it has an access
entry; an entry lists the principals allowed to use it. The ``None`` principal is the model's
unrestricted owner and may use every partition. The policy only answers questions: the
strategy that consults it must make sure that a denied partition does not reach a principal's
outputs by any other path (a shared head, a router, merged weights).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


class AccessPolicy:
    """Partition name -> allowed principals, with the configured entries as defaults.

    Args:
        configured: Entries from the configuration; they apply to a partition whenever it is
            (re)trained, until :meth:`restrict` changes them.
    """

    def __init__(self, configured: Mapping[str, Iterable[str]] | None = None) -> None:
        self.configured = {n: frozenset(p) for n, p in (configured or {}).items()}
        self.entries: dict[str, frozenset[str] | None] = dict(self.configured)

    def restrict(self, name: str, principals: Iterable[str] | None) -> None:
        """Allow only ``principals`` to use partition ``name`` (None: make it public)."""
        self.entries[name] = None if principals is None else frozenset(principals)

    def principals(self, name: str) -> frozenset[str] | None:
        """The principals allowed to use ``name``, or None when it is public."""
        return self.entries.get(name)

    def is_restricted(self, name: str) -> bool:
        """Whether some principal is denied partition ``name``."""
        return self.principals(name) is not None

    def allows(self, name: str, principal: str | None) -> bool:
        """Whether ``principal`` may use partition ``name``."""
        members = self.principals(name)
        return principal is None or members is None or principal in members

    def usable(self, names: Iterable[str], principal: str | None) -> list[str]:
        """The partitions among ``names`` that ``principal`` may use, in order."""
        return [n for n in names if self.allows(n, principal)]

    def drop(self, name: str) -> None:
        """Forget partition ``name``'s entry (after its deletion)."""
        self.entries.pop(name, None)

    def reset(self, name: str) -> None:
        """Give a partition that is (re)trained its configured entry, if it has none now."""
        if name in self.configured and name not in self.entries:
            self.entries[name] = self.configured[name]

    def state_dict(self) -> dict[str, list[str] | None]:
        return {n: (sorted(a) if a is not None else None) for n, a in self.entries.items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.entries = {n: (frozenset(a) if a is not None else None) for n, a in state.items()}
