"""Run-directory safety: one ``cl-run`` per directory, its composed config, resume overrides.

A run holds an exclusive ``flock`` on ``<run dir>/.cl-run.lock`` from before it writes
anything until it ends. The kernel drops the lock when the process dies, so a killed run never
leaves a stale lock behind; the file itself stays (it only names the last holder).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cl.errors import CLError

LOCK_NAME = ".cl-run.lock"
HYDRA_SUBDIR = ".hydra"

# Settings a resumed run may change: they do not alter what is trained or how it is measured.
SAFE_ON_RESUME = ("device", "logger", "train.eval_batch_size", "checkpoint.keep_all", "dist")


class RunDirError(CLError):
    """The run directory is in use or already holds another run; nothing in it was touched."""


@contextlib.contextmanager
def run_dir_lock(run_dir: Path) -> Iterator[None]:
    """Hold the run directory's lock for the duration of the block.

    Args:
        run_dir: The run directory (created if missing).

    Raises:
        RunDirError: Another live process holds the lock, or the directory cannot be written.
    """
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise RunDirError(f"cannot write to run directory {run_dir}: {e.strerror or e}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise RunDirError(
                f"run directory {run_dir} is in use by another cl-run ({holder}); wait for it "
                "to end, or choose another directory with hydra.run.dir=..."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the last descriptor releases the lock


def check_fresh(run_dir: Path) -> None:
    """Refuse to start a new run over the results or checkpoint of an earlier one.

    Raises:
        RunDirError: ``run_dir`` already holds a run.
    """
    for name in ("results.json", "checkpoints/last.pt"):
        if (run_dir / name).exists():
            raise RunDirError(
                f"{run_dir} already holds a run ({name}); continue it with resume={run_dir}, "
                "or choose another directory with hydra.run.dir=..."
            )


def write_hydra_files(run_dir: Path, files: Mapping[str, Any]) -> None:
    """Write the composed config files (``config.yaml``, ``hydra.yaml``, ``overrides.yaml``).

    ``cl-run`` writes them itself, under the lock, instead of letting Hydra write them before
    the run starts: a second run aimed at a directory in use must not overwrite them.
    """
    from cl.logging.files import atomic_write_text

    folder = run_dir / HYDRA_SUBDIR
    folder.mkdir(parents=True, exist_ok=True)
    for name, node in files.items():
        atomic_write_text(folder / name, OmegaConf.to_yaml(node))


def _override_key(override: Any) -> str:
    key = str(override.key_or_group)
    return f"{override.package}.{key}" if override.package else key


def _is_safe(key: str) -> bool:
    return any(key == s or key.startswith(f"{s}.") for s in SAFE_ON_RESUME)


_ABSENT = object()


def _value(cfg: DictConfig, key: str) -> Any:
    node = OmegaConf.select(cfg, key, default=_ABSENT)
    if OmegaConf.is_config(node):
        return OmegaConf.to_container(node, resolve=True)
    return node


def apply_resume_overrides(
    saved: DictConfig, composed: DictConfig, overrides: Sequence[str]
) -> tuple[DictConfig, list[str]]:
    """The saved config of a run with the user's safe overrides applied.

    Args:
        saved: The config the run was started with.
        composed: The config ``cl-run`` composed for this invocation (defaults + overrides).
        overrides: The user's command-line overrides (``hydra.overrides.task``).

    Returns:
        The config to resume with, and the overrides applied to it.

    Raises:
        RunDirError: An override would change what the run trains or measures; an override
            that repeats the saved value is accepted.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides([str(o) for o in overrides])
    out = OmegaConf.create(OmegaConf.to_container(saved, resolve=False))
    assert isinstance(out, DictConfig)
    applied: list[str] = []
    unsafe: list[str] = []
    for text, ov in zip(overrides, parsed, strict=True):
        key = _override_key(ov)
        if key == "resume" or key.startswith(("hydra.", "hydra/")):
            continue
        new = _value(composed, key)
        if ov.is_delete() or new is _ABSENT:
            unsafe.append(str(text))
        elif _is_safe(key):
            OmegaConf.update(out, key, OmegaConf.select(composed, key), merge=False)
            applied.append(str(text))
        elif new != _value(saved, key):
            unsafe.append(str(text))
    if unsafe:
        raise RunDirError(
            "resume= continues a run with its saved config; these overrides would change it: "
            f"{' '.join(unsafe)} (allowed on resume: {', '.join(SAFE_ON_RESUME)} and the keys "
            "under them, or a value equal to the saved one)"
        )
    return out, applied
