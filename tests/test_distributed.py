"""Distributed runs (gloo, 2 processes on CPU): every strategy's state is identical on all ranks
after each experience; naive, ewc, replay, lwf and l2p with a per-rank batch of B/2 give the
one-process matrix with batch B; a run killed on all ranks resumes to the uninterrupted matrix.

All distributed work runs in ONE ``torchrun`` (tests/distributed_worker.py) shared by the tests
of this module; the one-process references run here, in-process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from cl.run import run_experiment
from cl.strategy import list_strategies
from cl.testing import compose, setup_overrides

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from distributed_worker import EQUIVALENCE  # noqa: E402

BATCH = 32
# Losses are summed over ranks in another order than one process sums a batch: they agree to
# float32 rounding; the accuracy matrices are compared exactly.
LOSS_TOL = 1e-4


def torchrun(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> Any:
    """``torchrun --standalone --nproc_per_node=2 <args>`` with this checkout's code."""
    full = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "offline",
        **(env or {}),
    }
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    return subprocess.run(
        [*cmd, *args], env=full, capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


@pytest.fixture(scope="module")
def worker(tmp_path_factory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("dist")
    proc = torchrun(str(HERE / "distributed_worker.py"), str(out), str(BATCH))
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((out / "results.json").read_text())


@pytest.mark.parametrize("name", list_strategies())
def test_state_is_identical_on_every_rank_after_each_experience(worker, name):
    res = worker["contracts"][name]
    if "refused" in res:  # a strategy with its own loop must say it cannot run distributed
        assert "cannot run distributed" in res["refused"], res["refused"]
        return
    hashes = res["hashes"]
    assert len(hashes) >= 3, "built + at least two experiences"
    for i, per_rank in enumerate(hashes):
        assert len(per_rank) == 2
        assert per_rank[0] == per_rank[1], f"{name}: ranks differ after experience {i - 1}"


@pytest.fixture(scope="module")
def references(tmp_path_factory) -> dict[str, Any]:
    """One-process runs with the global batch B."""
    out = {}
    for name in EQUIVALENCE:
        cfg = compose(setup_overrides(name, f"train.batch_size={BATCH}"))
        out[name] = run_experiment(cfg, tmp_path_factory.mktemp(f"ref-{name}"))
    return out


@pytest.mark.parametrize("name", EQUIVALENCE)
def test_two_ranks_with_half_batches_equal_one_process(worker, references, name):
    got, ref = worker["runs"][name], references[name]
    assert (got["world_size"], got["backend"]) == (2, "gloo")
    assert (ref.world_size, ref.backend) == (1, None)
    assert got["acc_matrix"] == ref.acc_matrix, name  # identical
    losses = [p["final_loss"] for p in ref.per_experience]
    assert got["losses"] == pytest.approx(losses, abs=LOSS_TOL), name


def test_fsdp_sharded_frozen_blocks_give_the_same_matrix(worker, references):
    assert worker["runs"]["fsdp"]["acc_matrix"] == references["l2p"].acc_matrix


def test_killed_on_all_ranks_resumes_to_the_uninterrupted_matrix(worker):
    assert worker["runs"]["resume"]["acc_matrix"] == worker["runs"]["replay"]["acc_matrix"]


@pytest.mark.slow
def test_sigkilled_rank_stops_the_run_and_resume_completes_it(tmp_path):
    """cl-run under torchrun: SIGKILL of rank 1 inside experience 1 ends the run non-zero
    within 120 s; ``resume=`` completes it with the matrix of an uninterrupted run."""
    args = [
        "-m",
        "cl.run",
        "logger=none",
        "device=cpu",
        "strategy=replay",
        "train.epochs=1",
        *setup_overrides("replay")[3:],
    ]
    ref = torchrun(*args, f"hydra.run.dir={tmp_path / 'ref'}")
    assert ref.returncode == 0, ref.stderr[-3000:]
    t0 = time.monotonic()
    env = {"CL_KILL_AT_STEP": "1:2", "CL_KILL_RANK": "1"}
    dead = torchrun(*args, f"hydra.run.dir={tmp_path / 'run'}", env=env)
    assert dead.returncode != 0
    assert time.monotonic() - t0 < 120
    assert str(-signal.SIGKILL) in dead.stderr or "SIGKILL" in dead.stderr
    partial = json.loads((tmp_path / "run" / "results.json").read_text())
    assert partial["run"]["status"] == "partial"
    done = torchrun("-m", "cl.run", f"resume={tmp_path / 'run'}")
    assert done.returncode == 0, done.stderr[-3000:]
    a = json.loads((tmp_path / "ref" / "results.json").read_text())
    b = json.loads((tmp_path / "run" / "results.json").read_text())
    assert b["run"]["status"] == "complete" and b["run"]["world_size"] == 2
    assert a["acc_matrix"] == b["acc_matrix"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref", "run"]


# ------------------------------------------------------------- one-line errors (no torchrun)
@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' is not an integer"),
        ({"WORLD_SIZE": "2", "RANK": "2"}, "RANK=2 is outside the world size WORLD_SIZE=2"),
        ({"WORLD_SIZE": "2", "RANK": "0"}, "MASTER_ADDR is not set"),
        ({"WORLD_SIZE": "2"}, "RANK is not set"),
    ],
)
def test_bad_launcher_environment_is_one_line_error(monkeypatch, capsys, env, message):
    from cl.run import cli

    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert cli(["logger=none", "device=cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1


def test_world_size_must_divide_the_global_batch_and_sweeps_are_refused():
    from cl.distributed import DistInfo, check_batch
    from cl.errors import ConfigError
    from cl.run import _distributed_argv

    check_batch(32, DistInfo(rank=0, world_size=4))
    with pytest.raises(ConfigError, match=r"must be a multiple of the world size 3"):
        check_batch(32, DistInfo(rank=0, world_size=3))
    with pytest.raises(ConfigError, match="runs one job"):
        _distributed_argv(["-m", "seed=0,1"], DistInfo(rank=0, world_size=2))


def test_fsdp_refuses_a_model_without_frozen_blocks_and_typos_are_refused():
    from cl.config import build
    from cl.distributed import SINGLE, shard_frozen
    from cl.errors import ConfigError

    built = build(compose(setup_overrides("naive")))
    with pytest.raises(ConfigError, match=r"use train\.distributed=ddp"):
        shard_frozen(built.model, SINGLE)
    with pytest.raises(ConfigError, match=r"unknown train\.distributed 'fdsp'; valid: ddp, fsdp"):
        build(compose(setup_overrides("naive", "train.distributed=fdsp")))


def test_one_process_run_records_world_size_1_and_no_backend(references):
    rec = references["naive"]
    results = rec.to_results()["run"]
    assert (results["world_size"], results["backend"]) == (1, None)
