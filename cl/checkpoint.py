"""Per-experience checkpoints, written atomically, and loading them for ``resume=``."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cl.errors import ConfigError
from cl.logging.files import temp_name

LAST = "last.pt"


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(folder: Path, payload: dict[str, Any], *, index: int, keep_all: bool) -> Path:
    """Write ``payload`` to ``folder/last.pt`` via a temp file and rename (never half-written).

    The temp file's name is unique to the process and the call, and it is removed when the
    write fails; ``keep_all`` adds ``exp<index>.pt``, a hard link swapped in the same way.
    """
    folder.mkdir(parents=True, exist_ok=True)
    last = folder / LAST
    tmp = temp_name(last)
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, last)
        if keep_all:
            per_exp = folder / f"exp{index}.pt"
            tmp = temp_name(per_exp)
            os.link(last, tmp)
            os.replace(tmp, per_exp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return last


def load_checkpoint(folder: Path) -> dict[str, Any] | None:
    path = folder / LAST
    if not path.exists():
        return None
    try:
        state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
        return state
    except Exception as e:  # a torn file cannot happen (atomic rename), but a foreign one can
        raise ConfigError(f"cannot read checkpoint {path}: {e}") from None
