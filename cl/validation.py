"""Value checks of config dataclasses: one readable :class:`~cl.errors.ConfigError` per mistake.

Config dataclasses declare their ranges in a ``validate()`` method built from the helpers here
(``positive``, ``non_negative``, ``fraction``, ``one_of``); :func:`check_config` runs the checks
every config gets (unknown keys, non-finite floats) and then ``validate()``, recursing into
nested dataclasses. Every message names the full key (``strategy.emb_dim``) and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import typing
from collections.abc import Iterable, Mapping
from typing import Any

from cl.errors import ConfigError


def _optional(obj: Any, name: str) -> bool:
    for f in dataclasses.fields(obj) if dataclasses.is_dataclass(obj) else ():
        if f.name == name:
            return "None" in str(f.type)
    return False


def _fail(prefix: str, obj: Any, name: str, rule: str, value: Any) -> None:
    null = " (or null)" if _optional(obj, name) else ""
    raise ConfigError(f"{prefix}.{name} must be {rule}{null}, got {value!r}")


def _values(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


def positive(prefix: str, obj: Any, *names: str) -> None:
    """Each named field (each entry of a list field) is > 0; null passes."""
    for name in names:
        value = getattr(obj, name)
        if value is not None and any(v <= 0 for v in _values(value)):
            rule = "a list of numbers > 0" if isinstance(value, list | tuple) else "> 0"
            _fail(prefix, obj, name, rule, value)


def non_negative(prefix: str, obj: Any, *names: str) -> None:
    """Each named field is >= 0; null passes."""
    for name in names:
        value = getattr(obj, name)
        if value is not None and any(v < 0 for v in _values(value)):
            _fail(prefix, obj, name, ">= 0", value)


def fraction(prefix: str, obj: Any, name: str, *, low_open: bool = False, high_open: bool) -> None:
    """The named field lies in [0, 1], with the given ends open; null passes."""
    value = getattr(obj, name)
    if value is None:
        return
    low_ok = value > 0 if low_open else value >= 0
    high_ok = value < 1 if high_open else value <= 1
    if not (low_ok and high_ok):
        rule = f"in {'(' if low_open else '['}0, 1{')' if high_open else ']'}"
        _fail(prefix, obj, name, rule, value)


def one_of(prefix: str, obj: Any, name: str, choices: Iterable[Any]) -> None:
    """The named field is one of ``choices``."""
    allowed = list(choices)
    value = getattr(obj, name)
    if value not in allowed:
        _fail(prefix, obj, name, f"one of {', '.join(map(str, allowed))}", value)


def unknown_keys(prefix: str, node: Mapping[str, Any], cls: type) -> None:
    """Reject a key of ``node`` that ``cls`` has no field for, naming the closest valid one;
    recurses into the fields that are dataclasses themselves."""
    if not dataclasses.is_dataclass(cls):  # an attrs schema: OmegaConf checks its keys
        return
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # a type only importable for type checkers: no nested check
        hints = {}
    valid = [f.name for f in dataclasses.fields(cls)]
    for key in node:
        key = str(key)
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
            hint = f"did you mean {prefix}.{close[0]}? " if close else ""
            raise ConfigError(
                f"unknown key {prefix}.{key} ({cls.__name__}); {hint}valid keys: {', '.join(valid)}"
            )
        if dataclasses.is_dataclass(hints.get(key)):
            sub = node.get(key)
            if isinstance(sub, Mapping):
                unknown_keys(f"{prefix}.{key}", sub, hints[key])


def finite(prefix: str, value: Any) -> None:
    """Every float in ``value`` (a dataclass, list or dict, recursively) is finite."""
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"{prefix} must be a finite number, got {value}")
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            finite(f"{prefix}.{f.name}", getattr(value, f.name))
    elif isinstance(value, Mapping):
        for k, v in value.items():
            finite(f"{prefix}.{k}", v)
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            finite(f"{prefix}[{i}]", v)


def check_config(prefix: str, obj: Any) -> None:
    """Finite floats everywhere, then ``validate()`` of ``obj`` and of nested dataclasses."""
    finite(prefix, obj)
    _validate(prefix, obj)


def _validate(prefix: str, obj: Any) -> None:
    for f in dataclasses.fields(obj) if dataclasses.is_dataclass(obj) else ():
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            _validate(f"{prefix}.{f.name}", value)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    raise AssertionError


def affordable(n_params: int, what: str, *, bytes_per_param: int = 12) -> None:
    """Refuse a model whose parameters, gradients and an optimizer buffer (``bytes_per_param``
    bytes per parameter in all) would not fit in this machine's memory, before allocating any
    of it; ``what`` names the settings that size the model."""
    need = n_params * bytes_per_param
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # no sysconf: let the allocation decide
        return
    if need > total:
        raise ConfigError(
            f"{what} needs about {_size(need)} for {n_params:.3g} parameters with their "
            f"gradients and optimizer state; this machine has {_size(total)} of memory"
        )
