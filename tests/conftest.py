"""Shared fixtures: compose configs in-process and run experiments in a temp dir."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from cl.config import register_configs
from cl.run import CONF_DIR

FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
needs_fmnist = pytest.mark.skipif(
    not FMNIST.exists(), reason="needs the Debian package dataset-fashion-mnist"
)


def compose_cfg(overrides: list[str]) -> DictConfig:
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


@pytest.fixture
def make_cfg() -> Callable[..., DictConfig]:
    """Compose the run config with quiet defaults (no console, no W&B) plus ``overrides``."""

    def make(*overrides: str, quiet: bool = True) -> DictConfig:
        base = ["logger=none"] if quiet else []
        return compose_cfg([*base, *overrides])

    return make
