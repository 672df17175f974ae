"""The cl-run command: bad inputs give one readable message and a non-zero exit code.

One test runs the real ``python -m cl.run`` process (a run that fails during training: exit code
3 from inside the Hydra job, partial results on disk); the others call :func:`cl.run.cli`, the
whole command (preflight, Hydra, the job's error handling) minus the process start, in a temp
working directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cl.report import main as report_main
from cl.run import cli


def cl_run(*args: str, cwd, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "cl.run", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


class Result:
    """Exit code and output of one in-process ``cl-run``."""

    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def cl_run_here(tmp_path, monkeypatch, capsys):
    """``cl-run`` in this process, with tmp_path as the working directory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)

    def run(*args: str) -> Result:
        capsys.readouterr()
        rc = cli(list(args))
        out = capsys.readouterr()
        return Result(rc, out.out, out.err)

    return run


def _no_traceback(p: subprocess.CompletedProcess | Result) -> None:
    assert "Traceback (most recent call last)" not in p.stderr + p.stdout


@pytest.mark.parametrize(
    ("group", "names"),
    [
        (
            "stream",
            ["split_digits", "permuted_digits", "split_fmnist", "permuted_fmnist", "split_mnist"],
        ),
        ("strategy", ["naive", "joint"]),
        ("model", ["mlp", "cnn"]),
    ],
)
def test_unknown_choice_lists_valid_names(group, names, cl_run_here):
    p = cl_run_here(f"{group}=nope")
    assert p.returncode != 0
    assert f"Could not find '{group}/nope'" in p.stderr
    for n in names:
        assert n in p.stderr
    _no_traceback(p)


def test_wrong_type(cl_run_here):
    p = cl_run_here("train.epochs=abc")
    assert p.returncode != 0
    assert "train.epochs" in p.stderr and "could not be converted to Integer" in p.stderr
    _no_traceback(p)


@pytest.mark.parametrize("arg", ["train.epochs=0", "train.batch_size=0", "train.batch_size=-5"])
def test_non_positive_epochs_or_batch_size(arg, cl_run_here):
    p = cl_run_here(arg, "logger=none")
    assert p.returncode == 2
    key = arg.split("=")[0]
    assert f"error: {key} must be a positive integer" in p.stderr
    _no_traceback(p)


def test_missing_offline_data(tmp_path, cl_run_here):
    p = cl_run_here(
        "stream=split_fmnist",
        f"stream.data_root={tmp_path}",
        "stream.download=false",
        "logger=none",
    )
    assert p.returncode == 2
    assert (
        "Fashion-MNIST not found" in p.stderr
        and "apt-get install dataset-fashion-mnist" in p.stderr
    )
    _no_traceback(p)


def test_nan_loss_stops_with_partial_results(tmp_path):
    p = cl_run("train.lr=1e6", "logger=none", "hydra.run.dir=run", cwd=tmp_path)
    assert p.returncode == 3
    assert "error: loss became non-finite" in p.stderr
    _no_traceback(p)
    r = json.loads((tmp_path / "run" / "results.json").read_text())
    assert r["run"]["status"] == "partial"


def test_unknown_key_and_typo(cl_run_here):
    p = cl_run_here("strategy.ewc_lambdaa=1")
    assert p.returncode != 0 and "Key 'ewc_lambdaa' not in" in p.stderr
    _no_traceback(p)


def test_report_without_runs(tmp_path, capsys):
    assert report_main([str(tmp_path)]) == 0
    assert "no runs" in capsys.readouterr().out


def test_composing_a_config_imports_no_heavy_library():
    """Strategy/model/stream modules keep peft, transformers, timm and avalanche imports lazy,
    so cl-run starts (and reports config errors) quickly."""
    code = (
        "import sys; from cl.config import register_configs; register_configs(); "
        "heavy = [m for m in ('peft', 'transformers', 'timm', 'avalanche') if m in sys.modules]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
