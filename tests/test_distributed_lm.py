"""Distributed language models (gloo, 2 processes on CPU): every strategy that supports
text-to-text streams keeps identical state on all ranks after each experience, and naive with a
per-rank batch of B/2 gives the one-process matrix with batch B, unpacked and packed.

All distributed work runs in ONE ``torchrun`` (tests/distributed_lm_worker.py); the one-process
references run here, in-process.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from cl.run import run_experiment
from cl.testing import LM_SETUP, QUIET, compose

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from distributed_lm_worker import RUNS  # noqa: E402
from test_distributed import LOSS_TOL, torchrun  # noqa: E402
from test_lm_contracts import LM_STRATEGIES  # noqa: E402


@pytest.fixture(scope="module")
def worker(tmp_path_factory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("dist-lm")
    proc = torchrun(str(HERE / "distributed_lm_worker.py"), str(out))
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((out / "results.json").read_text())


@pytest.mark.parametrize("name", LM_STRATEGIES)
def test_lm_state_is_identical_on_every_rank_after_each_experience(worker, name):
    res = worker["contracts"][name]
    if "refused" in res:  # a strategy with its own loop must say it cannot run distributed
        assert "cannot run distributed" in res["refused"], res["refused"]
        return
    hashes = res["hashes"]
    assert len(hashes) == 3, "built + two experiences"
    for i, per_rank in enumerate(hashes):
        assert len(per_rank) == 2
        assert per_rank[0] == per_rank[1], f"{name}: ranks differ after experience {i - 1}"


@pytest.mark.parametrize("run", list(RUNS))
def test_lm_two_ranks_with_half_batches_equal_one_process(worker, run, tmp_path):
    ref = run_experiment(compose([*QUIET, *LM_SETUP, *RUNS[run]]), tmp_path)
    got = worker["runs"][run]
    assert (got["world_size"], got["backend"], ref.world_size) == (2, "gloo", 1)
    assert got["acc_matrix"] == ref.acc_matrix, run  # identical
    losses = [p["final_loss"] for p in ref.per_experience]
    assert got["losses"] == pytest.approx(losses, abs=LOSS_TOL), run
