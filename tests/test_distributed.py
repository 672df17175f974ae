"""Distributed runs (gloo, 2 processes on CPU): every strategy's state is identical on all ranks
after each experience; naive, ewc, replay, lwf and l2p with a per-rank batch of B/2 give the
one-process matrix with batch B; a run killed on all ranks resumes to the uninterrupted matrix;
the closed-form strategies (SimpleCIL, RanPAC: their own loops) sum their statistics over the
ranks; the hypernetwork's look-ahead previews the global gradient's step; a Dataset stream
(image files) is loaded shard by shard in the one-process batch order.

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
from distributed_worker import EQUIVALENCE, extra_runs, image_folder_args  # noqa: E402

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
def images(tmp_path_factory) -> str:
    """A tiny ImageNet-R folder: 4 classes of 16 PNG files, 8x8, a colour per class + noise."""
    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp("images")
    rng = np.random.RandomState(0)
    for c in range(4):
        folder = root / "imagenet-r" / f"n0000000{c}"
        folder.mkdir(parents=True)
        colour = rng.randint(0, 256, size=3)
        for i in range(16):
            noise = rng.randint(-60, 61, size=(8, 8, 3))
            pixels = np.clip(colour + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i:02d}.png")
    return str(root)


@pytest.fixture(scope="module")
def worker(tmp_path_factory, images) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("dist")
    proc = torchrun(str(HERE / "distributed_worker.py"), str(out), str(BATCH), images)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {**json.loads((out / "results.json").read_text()), "dir": out}


@pytest.mark.parametrize("name", list_strategies())
def test_state_is_identical_on_every_rank_after_each_experience(worker, name):
    res = worker["contracts"][name]
    if "refused" in res:  # only the Avalanche bridge cannot run distributed, and says why
        assert name == "avalanche", res["refused"]
        assert "cannot run distributed (Avalanche 0.6" in res["refused"], res["refused"]
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


@pytest.fixture(scope="module")
def more_references(tmp_path_factory, images) -> dict[str, Any]:
    """One-process runs of the worker's extra setups, and their run directories."""
    out = {}
    for name, overrides in extra_runs(images, BATCH).items():
        run_dir = tmp_path_factory.mktemp(f"ref-{name}")
        out[name] = (run_experiment(compose(overrides), run_dir), run_dir)
    return out


def _last_state(run_dir: Path) -> dict[str, Any]:
    from cl.checkpoint import load_checkpoint

    state = load_checkpoint(run_dir / "checkpoints")
    assert state is not None
    return state["strategy"]


@pytest.mark.parametrize(
    "name", ["simplecil", "ranpac", "hypernet-lookahead", "naive-images", "simplecil-images"]
)
def test_more_setups_on_two_ranks_equal_one_process(worker, more_references, name):
    """Own loops (closed forms), the look-ahead and a Dataset stream: the one-process matrix."""
    got, (ref, _) = worker["more"][name], more_references[name]
    assert got["acc_matrix"] == ref.acc_matrix, name  # identical
    losses = [p["final_loss"] for p in ref.per_experience]
    assert got["losses"] == pytest.approx(losses, abs=LOSS_TOL), name


@pytest.mark.parametrize(
    ("name", "keys"), [("simplecil", ("sums", "counts")), ("ranpac", ("gram", "q", "w_out"))]
)
def test_closed_form_statistics_are_summed_over_ranks(worker, more_references, name, keys):
    """Prototype sums and counts, RanPAC's Gram matrix, class sums and solution after the last
    experience: the one-process values within float64 summation order (relative 1e-10)."""
    got = _last_state(worker["dir"] / f"run-{name}")
    ref = _last_state(more_references[name][1])
    for k in keys:
        scale = float(ref[k].abs().max())
        assert scale > 0, k
        err = float((got[k] - ref[k]).abs().max())
        assert err <= 1e-10 * scale, (name, k, err, scale)
    if name == "ranpac":
        assert float(got["lam"]) == float(ref["lam"])


def test_each_rank_loads_only_its_shard_of_a_dataset_stream(worker, images):
    """Image files (a Dataset): rank r loads rows r, r + 2, ... of every global batch of the
    one-process order, nothing else (batches of B/2, their share of the global batch)."""
    from cl.config import build

    built = build(compose(setup_overrides("naive", *image_folder_args(images))))
    whole = list(built.strategy.train_batches(built.stream[0], 0))
    per_rank = worker["loaded"]
    assert [len(r) for r in per_rank] == [len(whole)] * 2 and len(whole) >= 3
    for k, b in enumerate(whole):
        assert b.share is None
        sums = b.x.flatten(1).sum(1).tolist()
        for rank, batches in enumerate(per_rank):
            share, ys, xs = batches[k]
            assert ys == b.y.tolist()[rank::2] and xs == sums[rank::2]
            assert share == len(ys) / len(b.y)


def test_fsdp_with_float64_closed_form_features_is_a_one_line_refusal(worker):
    msg = worker["fsdp_refusal"]
    assert "train.distributed=fsdp needs strategy.feature_dtype=float32" in msg, msg
    assert "\n" not in msg


def test_fsdp_sharded_frozen_blocks_give_the_same_matrix(worker, references):
    assert worker["runs"]["fsdp"]["acc_matrix"] == references["l2p"].acc_matrix


def test_killed_on_all_ranks_resumes_to_the_uninterrupted_matrix(worker):
    assert worker["runs"]["resume"]["acc_matrix"] == worker["runs"]["replay"]["acc_matrix"]


def cl_run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> Any:
    """``python -m cl.run <args>`` with this checkout's code, outside any launcher."""
    full = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        full.pop(var, None)
    cmd = [sys.executable, "-m", "cl.run", *args]
    return subprocess.run(cmd, env=full, capture_output=True, text=True, timeout=600, cwd=cwd)


@pytest.mark.slow
def test_sigkilled_rank_stops_the_run_and_resume_completes_it(tmp_path):
    """SIGKILL of rank 1 inside experience 1 (cl-run under torchrun) ends the run non-zero
    within 120 s; ``resume=`` completes it with the matrix of an uninterrupted run. The
    uninterrupted run and the resume start through ``cl-run dist.nproc_per_node=2`` (cl-run
    starts torchrun itself): one run directory each, ``run.world_size`` 2."""
    args = [
        "-m",
        "cl.run",
        "logger=none",
        "device=cpu",
        "strategy=replay",
        "train.epochs=1",
        *setup_overrides("replay")[3:],
    ]
    launch = "dist.nproc_per_node=2"
    ref = cl_run(*args[2:], launch, f"hydra.run.dir={tmp_path / 'ref'}", cwd=tmp_path)
    assert ref.returncode == 0, ref.stderr[-3000:]
    t0 = time.monotonic()
    env = {"CL_KILL_AT_STEP": "1:2", "CL_KILL_RANK": "1"}
    dead = torchrun(*args, f"hydra.run.dir={tmp_path / 'run'}", env=env)
    assert dead.returncode != 0
    assert time.monotonic() - t0 < 120
    assert str(-signal.SIGKILL) in dead.stderr or "SIGKILL" in dead.stderr
    partial = json.loads((tmp_path / "run" / "results.json").read_text())
    assert partial["run"]["status"] == "partial"
    done = cl_run(f"resume={tmp_path / 'run'}", launch, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    a = json.loads((tmp_path / "ref" / "results.json").read_text())
    b = json.loads((tmp_path / "run" / "results.json").read_text())
    assert b["run"]["status"] == "complete" and b["run"]["world_size"] == 2
    assert (a["run"]["world_size"], a["run"]["backend"]) == (2, "gloo")
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


# ------------------------------------------------------- cl-run dist.nproc_per_node=N (launcher)
@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["-m", "seed=0,1"], {}, "starts the processes of one run; sweep with one process"),
        ([], {"LOCAL_WORLD_SIZE": "4"}, "but the launcher started 4 processes on this node"),
        (["dist.nproc_per_node=0"], {}, "dist.nproc_per_node must be a positive integer, got 0"),
    ],
)
def test_nproc_per_node_mistakes_are_one_line_errors(monkeypatch, capsys, argv, env, message):
    from cl.run import cli

    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    args = (
        ["logger=none", "device=cpu", "dist.nproc_per_node=2"] if "dist." not in str(argv) else []
    )
    assert cli([*args, *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
