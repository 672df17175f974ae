"""Packaging: the wheel's package list covers every folder of ``cl/``, and the built-in
strategies import as ``cl.strategies`` (never as a top-level ``strategies`` a user's folder could
shadow)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import cl.strategies
from cl.strategy import list_strategies

ROOT = Path(__file__).resolve().parent.parent


def test_package_list_covers_every_subpackage() -> None:
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setup["packages"])
    found = {
        "cl." + ".".join(p.parent.relative_to(ROOT / "cl").parts)
        for p in (ROOT / "cl").rglob("__init__.py")
    }
    found = {f.rstrip(".") for f in found} | {"cl.strategies", "cl.conf"}
    assert listed == found
    assert setup["package-dir"] == {"cl.strategies": "strategies", "cl.conf": "conf"}


def test_builtin_strategies_are_cl_strategies() -> None:
    assert Path(cl.strategies.__path__[0]).resolve() == (ROOT / "strategies").resolve()
    assert "ewc" in list_strategies()
