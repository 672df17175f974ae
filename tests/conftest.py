"""Shared fixtures: compose configs in-process and run experiments in a temp dir."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from omegaconf import DictConfig

from cl.config import compose_config

FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
needs_fmnist = pytest.mark.skipif(
    not FMNIST.exists(), reason="needs the Debian package dataset-fashion-mnist"
)

# Override sets the strategy tests share: one epoch on split_digits (seconds), and the loop of
# the Fashion-MNIST tests (one epoch of Adam 0.001, batch 32).
DIGITS_1EPOCH = ("stream=split_digits", "train.epochs=1", "checkpoint.enabled=false", "device=cpu")
ADAM_1EPOCH = (
    "train.epochs=1",
    "train.batch_size=32",
    "train.optimizer=adam",
    "train.lr=0.001",
    "checkpoint.enabled=false",
    "device=cpu",
)


# Tests import it under this name.
compose_cfg = compose_config


@pytest.fixture
def make_cfg() -> Callable[..., DictConfig]:
    """Compose the run config with quiet defaults (no console, no W&B) plus ``overrides``."""

    def make(*overrides: str, quiet: bool = True) -> DictConfig:
        base = ["logger=none"] if quiet else []
        return compose_cfg([*base, *overrides])

    return make
