"""Honest timing and a fast start: one-time costs stay out of ``train_seconds`` (recorded as
``startup_seconds``), and the default run loads the digits without scikit-learn."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import torch

from cl.run import run_experiment
from cl.streams.vision import DIGITS_FILE, load_digits_arrays
from tests.conftest import compose_cfg

ROOT = Path(__file__).resolve().parent.parent


def test_digits_ship_with_the_package() -> None:
    """The 8x8 digits' fixed stratified 70/30 split, as package data."""
    xtr, ytr, xte, yte = load_digits_arrays()
    assert xtr.shape == (1257, 1, 8, 8) and xte.shape == (540, 1, 8, 8)
    assert xtr.dtype == torch.float32 and ytr.dtype == torch.long
    assert xtr.min() == -1.0 and xtr.max() == 1.0  # 0..16 pixel counts scaled to [-1, 1]
    for y, n in ((ytr, 1257), (yte, 540)):  # stratified: every class at its share, +-1
        counts = torch.bincount(y, minlength=10).float()
        assert (counts - n / 10).abs().max() <= 0.1 * n / 10 + 1
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = setup["package-data"]["cl.streams"]
    assert any(DIGITS_FILE in (ROOT / "cl" / "streams").glob(p) for p in patterns)


def test_fresh_process_warm_up_without_sklearn() -> None:
    """A fresh process builds the default run and warms up: torch._dynamo is imported by the
    warm-up (before any timer), scikit-learn never."""
    code = (
        "import sys, torch\n"
        "from cl.budget import warm_up\n"
        "from cl.config import build, compose_config\n"
        "build(compose_config(['logger=none']))\n"
        "warm_up(torch.device('cpu'))\n"
        "print(sorted(m for m in ('sklearn', 'torch._dynamo') if m in sys.modules))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "['torch._dynamo']"


def test_startup_seconds_in_the_ledger(tmp_path: Path) -> None:
    cfg = compose_cfg(["logger=none", "stream.n_experiences=2", "train.epochs=1"])
    rec = run_experiment(cfg, tmp_path)
    budget = json.loads((tmp_path / "results.json").read_text())["budget"]
    assert budget["startup_seconds"] == rec.budget.startup_seconds > 0
    # train_seconds is the sum of the experiences' training, nothing before them.
    per = sum(e["train_seconds"] for e in rec.per_experience)
    assert abs(budget["train_seconds"] - per) < 1e-9
