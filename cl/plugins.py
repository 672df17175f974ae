"""Plugins: strategies, streams and models registered from the user's own modules.

A plugin is a Python module that registers entries the way the built-ins do
(``@register_strategy``, ``register_stream``, ``register_model``). Plugins are found in three
places, and imported before the config schemas are stored, so the user's yaml can start from
``/schema/strategy/<name>@_here_`` like the built-ins:

- the entry-point group ``cl_platform.plugins`` of installed distributions (each entry point
  names a module, e.g. ``mine = "my_pkg.strategies"`` in ``pyproject.toml``);
- the ``plugins=[my_pkg.mine, ...]`` list of the run config (read from the command line before
  the config is composed, and from the saved config when a run is resumed);
- the environment variable ``CL_PLUGINS`` (comma-separated module names).

A module that is not installed is imported from ``PYTHONPATH`` or the working directory.
A plugin's ``conf/`` folder (next to the module, in one of its packages up to the top-level
one, or at the root of the source tree holding it) joins Hydra's search path, so its
``conf/strategy/<name>.yaml`` is a ``strategy=`` choice. The yaml is optional: an entry without
one gets its dataclass stored as its default config (see :func:`cl.config.register_configs`).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

from cl.errors import ConfigError, reason

ENTRY_POINT_GROUP = "cl_platform.plugins"
ENV_VAR = "CL_PLUGINS"
# Markers of a source tree's root: its conf/ belongs to the package(s) inside it.
_ROOT_MARKERS = ("pyproject.toml", "setup.py", "setup.cfg", ".git")


class PluginError(ConfigError):
    """A plugin module could not be imported."""


def env_plugins() -> list[str]:
    """Module names of ``CL_PLUGINS`` (comma-separated)."""
    return [p.strip() for p in os.environ.get(ENV_VAR, "").split(",") if p.strip()]


def override_plugins(overrides: Sequence[str]) -> list[str]:
    """Module names of a ``plugins=`` override (a list or one name; ``+``/``++`` allowed).

    Raises:
        ConfigError: The ``plugins=`` override is not a name or a list of names.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    wanted = [o for o in overrides if o.lstrip("+").split("=", 1)[0].strip() == "plugins"]
    if not wanted:
        return []
    try:
        parsed = OverridesParser.create().parse_overrides(wanted)
    except Exception as e:
        raise ConfigError(f"invalid plugins override: {reason(e)}") from None
    names: list[str] = []
    for o in parsed:
        if o.is_delete() or o.is_sweep_override():
            if o.is_sweep_override():
                raise ConfigError("plugins= cannot be swept; give one list of modules")
            continue
        value = o.value()
        values = value if isinstance(value, list) else [value]
        for v in values:
            if not isinstance(v, str) or not v.strip():
                raise ConfigError(f"plugins= takes module names, got {v!r}")
            names.append(v.strip())
    return names


def normalize_overrides(overrides: Sequence[str]) -> list[str]:
    """``overrides`` with a single-name ``plugins=my_pkg.mine`` written as a list."""
    out = []
    for o in overrides:
        key, sep, value = o.partition("=")
        if sep and key.lstrip("+").strip() == "plugins" and value and value[0] not in "[\"'":
            o = f"{key}=[{value}]"
        out.append(o)
    return out


def saved_plugins(resume: str | None) -> list[str]:
    """The ``plugins`` list of the run being resumed (from its ``.hydra/config.yaml``)."""
    if not resume:
        return []
    path = Path(resume) / ".hydra" / "config.yaml"
    try:
        from omegaconf import DictConfig, OmegaConf

        saved = OmegaConf.load(path)
        if not isinstance(saved, DictConfig):
            return []
        return [str(p) for p in (saved.get("plugins") or [])]
    except Exception:  # a missing or broken directory is reported by the resume checks
        return []


def import_plugin(name: str) -> ModuleType:
    """Import plugin module ``name`` (from the working directory too).

    Raises:
        PluginError: The module cannot be imported (or raised while importing).
    """
    try:
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as e:
            cwd = os.getcwd()
            top = name.split(".")[0]
            if e.name not in (top, name) or cwd in sys.path or "" in sys.path:
                raise
            sys.path.append(cwd)  # `cl-run` is a console script: its sys.path lacks the cwd
            return importlib.import_module(name)
    except Exception as e:
        raise PluginError(
            f"plugin {name!r} failed to import: {type(e).__name__}: {reason(e)}"
        ) from None


def entry_point_plugins() -> list[ModuleType]:
    """Import the modules named by the ``cl_platform.plugins`` entry points.

    Raises:
        PluginError: One of them cannot be imported.
    """
    out = []
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except Exception as e:
            raise PluginError(
                f"plugin {ep.value!r} (entry point {ep.name!r} of group {ENTRY_POINT_GROUP}) "
                f"failed to import: {type(e).__name__}: {reason(e)}"
            ) from None
        out.append(obj if isinstance(obj, ModuleType) else sys.modules[ep.module])
    return out


def load_plugins(names: Iterable[str] = ()) -> list[ModuleType]:
    """Import the plugins: entry points, ``CL_PLUGINS`` and ``names`` (each once).

    Returns:
        The imported modules, in that order.

    Raises:
        PluginError: A plugin cannot be imported.
    """
    modules = entry_point_plugins()
    for name in dict.fromkeys([*env_plugins(), *names]):
        modules.append(import_plugin(name))
    return modules


def load_plugins_of(cfg: Any) -> list[ModuleType]:
    """Import the plugins a composed (or saved) run config names, plus the others."""
    return load_plugins([str(p) for p in (cfg.get("plugins") or [])])


def conf_dirs(module: ModuleType | str) -> list[Path]:
    """The ``conf/`` folders that belong to ``module``: next to it, in each package above it up
    to the top-level one, and at the root of the source tree that holds that package."""
    mod = sys.modules.get(module) if isinstance(module, str) else module
    file = getattr(mod, "__file__", None)
    if mod is None or not file:
        return []
    here = Path(file).resolve().parent
    levels = mod.__name__.count(".") + (1 if Path(file).stem == "__init__" else 0)
    candidates = []  # the packages' folders, innermost first
    for _ in range(levels):
        candidates.append(here)
        here = here.parent
    # ``here`` holds the top-level package (or is the folder of a top-level module).
    roots = [here, here.parent] if here.name == "src" else [here]
    for root in roots:
        if levels == 0 or any((root / m).exists() for m in _ROOT_MARKERS):
            candidates.append(root)
            break
    out = []
    for c in candidates:
        conf = c / "conf"
        if conf.is_dir() and conf not in out:
            out.append(conf)
    return out


def search_path_override(modules: Iterable[ModuleType], overrides: Sequence[str]) -> list[str]:
    """``overrides`` with the plugins' ``conf/`` folders added to ``hydra.searchpath``.

    The folders come after the platform's own ``conf/`` (a built-in's yaml cannot be
    replaced by accident) and after any ``hydra.searchpath`` the user gave.
    """
    from cl.config import CONF_DIR

    dirs: list[str] = []
    for m in [*modules, *_registering_modules()]:
        for d in conf_dirs(m):
            if d != CONF_DIR.resolve() and f"file://{d}" not in dirs:
                dirs.append(f"file://{d}")
    if not dirs:
        return list(overrides)
    from hydra.core.override_parser.overrides_parser import OverridesParser

    rest, given = [], []
    for o in overrides:
        if o.lstrip("+").split("=", 1)[0].strip() == "hydra.searchpath":
            value = OverridesParser.create().parse_override(o).value()
            given = [str(v) for v in (value if isinstance(value, list) else [value])]
        else:
            rest.append(o)
    entries = ",".join(_quote(p) for p in [*given, *(d for d in dirs if d not in given)])
    return [*rest, f"hydra.searchpath=[{entries}]"]


def _registering_modules() -> list[ModuleType]:
    """Modules outside the platform that registered an entry in this process (a user's test
    that imported its strategy module itself)."""
    from cl.models import MODELS
    from cl.strategy import STRATEGIES
    from cl.streams import STREAMS

    out = []
    for registry in (STREAMS, MODELS, STRATEGIES):
        for e in registry.entries():
            name = str(getattr(e.builder, "__module__", "") or "")
            if name.split(".")[0] != "cl" and name in sys.modules:
                out.append(sys.modules[name])
    return out


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def prepare_overrides(overrides: Sequence[str]) -> list[str]:
    """Import the plugins a command line asks for (and the installed and ``CL_PLUGINS`` ones)
    and return the overrides to compose with: ``plugins=`` as a list, the plugins' ``conf/``
    folders on the search path.

    Raises:
        PluginError: A plugin cannot be imported.
    """
    overrides = normalize_overrides(overrides)
    names = override_plugins(overrides)
    if not names:
        names = saved_plugins(_resume_value(overrides))
    modules = load_plugins(names)
    return search_path_override(modules, overrides)


def _resume_value(overrides: Sequence[str]) -> str | None:
    for o in overrides:
        key, _, value = o.partition("=")
        if key.lstrip("+").strip() == "resume" and value not in ("", "null"):
            return value.strip("'\"")
    return None


def plugin_versions(cfg: Any) -> dict[str, str]:
    """Provenance of the user's code a run used: for each top-level package (outside the
    platform) of its plugins and registered entries, its installed version and, when its
    source is in a git work tree, the commit (``+modified`` with uncommitted changes).

    Returns:
        ``{"plugin:<package>": "<version>, git <commit>"}`` (empty when no plugin is used).
    """
    names = [str(p) for p in (cfg.get("plugins") or [])] if cfg is not None else []
    modules = [sys.modules[n] for n in names if n in sys.modules]
    with contextlib.suppress(Exception):
        modules += entry_point_plugins()
    modules += _registering_modules()
    modules = [m for m in modules if m.__name__.split(".")[0] != "cl"]
    if not modules:
        return {}
    out: dict[str, str] = {}
    dists = _distributions()
    for mod in modules:
        top = mod.__name__.split(".")[0]
        if f"plugin:{top}" in out:
            continue
        parts = []
        for dist in dists.get(top, []):
            with contextlib.suppress(metadata.PackageNotFoundError):
                parts.append(f"{dist} {metadata.version(dist)}")
                break
        commit = git_commit(Path(getattr(mod, "__file__", "") or ".").parent)
        if commit:
            parts.append(f"git {commit}")
        out[f"plugin:{top}"] = ", ".join(parts) or "unversioned"
    return out


@functools.cache
def _distributions() -> Mapping[str, list[str]]:
    """Top-level import name -> distributions (slow: it reads every installed package's file
    list, so once per process, and only when a plugin is in use)."""
    return metadata.packages_distributions()


def git_commit(folder: Path) -> str | None:
    """The commit of the git work tree holding ``folder`` (``+modified`` when it has
    uncommitted changes), or None (not in a work tree, or no git)."""
    import subprocess

    def git(*args: str) -> str | None:
        try:
            p = subprocess.run(
                ["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return p.stdout.strip() if p.returncode == 0 else None

    if not folder.is_dir():
        return None
    head = git("rev-parse", "--short=12", "HEAD")
    if not head:
        return None
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".")
    return head + ("+modified" if dirty else "")


__all__ = [
    "ENTRY_POINT_GROUP",
    "ENV_VAR",
    "PluginError",
    "conf_dirs",
    "git_commit",
    "import_plugin",
    "load_plugins",
    "load_plugins_of",
    "plugin_versions",
    "prepare_overrides",
]
