"""Replay: a zero buffer is naive, buffers respect their size and policy, the reservoir is
uniform, state round-trips, and on Fashion-MNIST replay(1000) clears the issue's bars."""

from __future__ import annotations

import pytest
import torch

from cl.run import run_experiment
from cl.strategies.replay import _reservoir
from cl.streams.base import TensorData
from tests.conftest import ADAM_1EPOCH, DIGITS_1EPOCH, needs_fmnist

DIGITS = DIGITS_1EPOCH
FMNIST = (
    "stream.max_test_per_experience=2000",
    *ADAM_1EPOCH,
)


def test_zero_buffer_reproduces_naive(make_cfg, tmp_path):
    naive = run_experiment(make_cfg(*DIGITS, "strategy=naive"), tmp_path / "n")
    rep = run_experiment(
        make_cfg(*DIGITS, "strategy=replay", "strategy.buffer_size=0"), tmp_path / "r"
    )
    assert rep.acc_matrix == naive.acc_matrix
    assert rep.budget.extra_state_bytes == 0


@pytest.mark.parametrize("policy", ["reservoir", "class_balanced", "experience_balanced"])
def test_buffer_size_policy_and_bytes(make_cfg, policy):
    from cl.config import build

    b = build(
        make_cfg(
            *DIGITS, "strategy=replay", "strategy.buffer_size=101", f"strategy.policy={policy}"
        )
    )
    s = b.strategy
    for i in range(3):
        s.train_experience(b.stream[i])
        mem = s.memory
        assert len(mem) == 101
        assert mem.x.device == b.stream[i].train.x.device
        assert s.extra_state_bytes() == mem.nbytes
        seen = sorted({c for e in b.stream.experiences[: i + 1] for c in e.classes})
        counts = torch.bincount(mem.y, minlength=10)[seen]
        if policy == "class_balanced":
            assert counts.max() - counts.min() <= 1
        if policy == "experience_balanced":
            per_exp = torch.bincount(mem.t, minlength=i + 1)
            assert per_exp.max() - per_exp.min() <= 1
    # Each batch mixes as many buffer samples as current ones (replay_ratio=1).
    batch = next(iter(s.train_batches(b.stream[3], 0)))
    assert len(batch.y) == 2 * b.context.train.batch_size
    assert set(batch.y[b.context.train.batch_size :].tolist()) <= set(range(6))


def test_reservoir_is_uniform_over_everything_seen():
    hits = torch.zeros(300)
    gen = torch.Generator().manual_seed(0)
    for _ in range(400):
        cur, seen = None, 0
        for part in torch.arange(300).split(100):  # three "experiences" of 100 samples
            data = TensorData(part.float()[:, None], part, torch.zeros_like(part))
            cur = _reservoir(cur, seen, data, 30, gen)
            seen += 100
        hits[cur.y] += 1
    rate = hits / 400  # each sample should be kept with probability 30/300
    assert abs(rate[:100].mean() - 0.1) < 0.01
    assert abs(rate[200:].mean() - 0.1) < 0.01
    assert len(set(cur.y.tolist())) == 30


def test_state_round_trip(make_cfg):
    from cl.config import build

    b = build(make_cfg(*DIGITS, "strategy=replay", "strategy.buffer_size=50"))
    b.strategy.train_experience(b.stream[0])
    other = build(make_cfg(*DIGITS, "strategy=replay", "strategy.buffer_size=50")).strategy
    other.load_state_dict(b.strategy.state_dict())
    assert torch.equal(other.memory.x, b.strategy.memory.x)
    assert other.seen == b.strategy.seen


@needs_fmnist
@pytest.mark.slow
def test_permuted_fmnist_replay_beats_naive(make_cfg, tmp_path):
    p = ("stream=permuted_fmnist", "stream.max_train_per_experience=10000", *FMNIST)
    naive = run_experiment(make_cfg(*p, "strategy=naive"), tmp_path / "n")
    rep = run_experiment(
        make_cfg(*p, "strategy=replay", "strategy.buffer_size=1000"), tmp_path / "r"
    )
    assert rep.metrics()["avg_acc"] >= naive.metrics()["avg_acc"] + 0.10, (
        rep.metrics()["avg_acc"],
        naive.metrics()["avg_acc"],
    )


@needs_fmnist
def test_split_fmnist_class_il_replay_reaches_070(make_cfg, tmp_path):
    p = ("stream=split_fmnist", "stream.max_train_per_experience=4000", *FMNIST)
    rep = run_experiment(
        make_cfg(*p, "strategy=replay", "strategy.buffer_size=1000"), tmp_path / "r"
    )
    assert rep.metrics()["avg_acc"] >= 0.70, rep.metrics()["avg_acc"]
