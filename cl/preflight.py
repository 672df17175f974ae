"""Checks of a ``cl-run`` command line before Hydra starts.

Hydra creates the run directory (for ``resume=`` the resumed one), its ``.hydra/`` and a log
file before the task function runs, so a mistake caught only there leaves files behind, and
composition errors come as several lines. :func:`preflight` composes the config as Hydra will
and checks it first: composition errors (unknown group option, key or type) in one line, every
value check of :func:`cl.config.build` that needs no data, the ``resume=`` directory and that the
output directory can be written. Sweeps (``-m``) and custom config dirs are checked per job.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import io
import os
import tempfile
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from cl.errors import ConfigError


def preflight(argv: list[str]) -> None:
    """Raise :class:`ConfigError` for a ``cl-run`` command line that would fail or write where
    it cannot; return silently when it looks runnable (or is not a plain run: ``--help``,
    ``--cfg``, ``-m``, ...), leaving the rest to Hydra."""
    args = _hydra_args(argv)
    if args is None or args.help or args.hydra_help or args.cfg or args.info:
        return
    if args.shell_completion:
        return
    resume = _resume_override(args.overrides)
    if resume is not None:
        check_resume(resume)
    if args.config_dir or args.config_path:
        return
    if args.multirun:
        _check_sweep_dir(args.config_name or "config", args.overrides)
        return
    cfg = _compose(args.config_name or "config", args.overrides)
    if cfg.get("resume"):  # the saved config is what runs; resume=null needs no check
        check_resume(str(cfg.resume))
        _check_writable(str(cfg.resume), "resume")
        return
    from cl.config import validate_config

    validate_config(cfg)
    try:
        run_dir = str(cfg.hydra.run.dir)
    except OmegaConfBaseException:
        return
    _check_writable(run_dir, "hydra.run.dir")


def _check_sweep_dir(config_name: str, overrides: list[str]) -> None:
    """A sweep composes as Hydra composes it (without the swept values) and its directory can
    be written; values are checked job by job (one may be valid only with a swept choice)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:  # Hydra reports malformed overrides itself
        return
    fixed = [o.input_line for o in parsed if not o.is_sweep_override() and o.input_line]
    cfg = _compose(config_name, fixed)
    try:
        sweep_dir = str(cfg.hydra.sweep.dir)
    except OmegaConfBaseException:  # it interpolates a swept value
        return
    _check_writable(sweep_dir, "hydra.sweep.dir")


def check_resume(path: str) -> None:
    """``resume=`` names an existing cl-run directory (with ``.hydra/config.yaml``)."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"resume={path}: no such directory; resume takes a cl-run run directory")
    if not p.is_dir():
        raise ConfigError(f"resume={path} is a file; resume takes a cl-run run directory")
    if not (p / ".hydra" / "config.yaml").is_file():
        raise ConfigError(
            f"resume={path} is not a cl-run run directory (no .hydra/config.yaml in it)"
        )


def _check_writable(path: str, key: str) -> None:
    """The directory ``path`` exists and is writable, or can be created."""
    target = Path(path).absolute()
    existing = target
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{key}={path} cannot be created: {existing} is not a directory")
    try:  # a real write: permissions, read-only mounts and pseudo file systems alike
        probe = tempfile.mkdtemp(prefix=".cl-write-check-", dir=existing)
    except OSError as e:
        raise ConfigError(
            f"{key}={path} cannot be written ({existing}: {e.strerror or e}); "
            "choose a writable output directory"
        ) from None
    os.rmdir(probe)


def _hydra_args(argv: list[str]) -> argparse.Namespace | None:
    from hydra._internal.utils import get_args_parser

    with contextlib.redirect_stderr(io.StringIO()):  # Hydra reports its own usage errors
        try:
            args, unknown = get_args_parser().parse_known_args(argv)
        except SystemExit:
            return None
    return None if unknown else args


def _resume_override(overrides: list[str]) -> str | None:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:  # Hydra reports malformed overrides itself
        return None
    for o in parsed:
        if o.key_or_group == "resume" and not o.is_delete() and not o.is_sweep_override():
            value = o.value()
            return None if value is None else str(value)
    return None


def _compose(config_name: str, overrides: list[str]) -> DictConfig:
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    from cl.config import CONF_DIR, register_configs

    register_configs()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException, ValueError) as e:
        raise ConfigError(one_line(e)) from None


def one_line(e: BaseException) -> str:
    """A Hydra/OmegaConf error and its cause as one line (option lists joined by commas); an
    unknown key gets the closest valid name."""
    parts: list[str] = []
    seen: BaseException | None = e
    while seen is not None:
        text = _join_lines(str(seen))
        if text and "$VALUE" not in text and text not in parts:
            parts.append(text)
        if isinstance(seen, OmegaConfBaseException):  # its message is the precise one
            hint = (
                _closest_key(seen)
                if isinstance(seen, ConfigAttributeError | ConfigKeyError)
                else None
            )
            return ": ".join(parts) + (f"; {hint}" if hint else "")
        seen = seen.__cause__ or seen.__context__
    return ": ".join(parts)


def _join_lines(text: str) -> str:
    """First paragraph of an OmegaConf message (no ``full_key:`` details), or Hydra's "options"
    listing folded into ``label: a, b, c``."""
    out: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith(("Config search path", "To append to your config")):
            break  # Hydra's search path and a "+key" hint that a schema would refuse anyway
        if not line or line.startswith(("full_key:", "object_type=", "reference_type=")):
            continue
        if raw[:1] in ("\t", " ") and out and out[-1].endswith((":", ",")):  # a listed option
            out[-1] += f" {line},"
        else:
            out.append(line)
    return "; ".join(s.rstrip(",").rstrip(".") for s in out)


def _closest_key(err: OmegaConfBaseException) -> str | None:
    key = getattr(err, "key", None)
    full_key = str(getattr(err, "full_key", "") or "")
    obj_type: Any = getattr(err, "object_type", None)
    if key is None or obj_type is None or not dataclasses.is_dataclass(obj_type):
        return None
    valid = [f.name for f in dataclasses.fields(obj_type)]
    close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.5)
    if not close:
        return f"valid keys: {', '.join(valid)}"
    prefix = full_key.rpartition(".")[0]
    return f"did you mean {prefix + '.' if prefix else ''}{close[0]}?"


__all__ = ["check_resume", "one_line", "preflight"]
