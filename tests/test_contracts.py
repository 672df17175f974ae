"""Contracts every registered strategy keeps, run on the small setup each declares
(``Strategy.test_setup``) through the kit in :mod:`cl.testing`: training stays finite and leaves
frozen parameters bit-identical, the ledger covers every tensor kept beyond the model's own,
state round-trips, and a run killed after experience 2 or at a random step inside an experience
resumes to the identical accuracy matrix. A new strategy gets all of them by registering."""

from __future__ import annotations

import zlib
from typing import Any

import pytest

from cl.config import build
from cl.strategy import list_strategies
from cl.testing import (
    check_resume,
    check_state_round_trip,
    check_trains,
    compose,
    random_kill_step,
    run_uninterrupted,
    setup_overrides,
)

STRATEGIES = list_strategies()


@pytest.fixture(scope="module")
def references(tmp_path_factory) -> dict[str, Any]:
    """Uninterrupted runs, one per strategy, shared by the resume tests."""
    return {}


def reference(name: str, references: dict[str, Any], tmp_path_factory) -> Any:
    if name not in references:
        cfg = compose(setup_overrides(name))
        references[name] = run_uninterrupted(cfg, tmp_path_factory.mktemp(f"ref-{name}"))
    return references[name]


@pytest.mark.parametrize("name", STRATEGIES)
def test_trains_finite_keeps_frozen_params_and_ledger_covers_state(name):
    check_trains(compose(setup_overrides(name)))


@pytest.mark.parametrize("name", STRATEGIES)
def test_state_round_trips(name):
    check_state_round_trip(compose(setup_overrides(name)))


@pytest.mark.parametrize("name", STRATEGIES)
def test_kill_after_experience_2_resumes_identically(name, references, tmp_path, tmp_path_factory):
    ref = reference(name, references, tmp_path_factory)
    assert len(ref.acc_matrix) >= 3, "the setup needs at least 3 experiences"
    check_resume(compose(setup_overrides(name)), tmp_path / "run", reference=ref, kill_after=1)


@pytest.mark.parametrize("name", STRATEGIES)
def test_kill_inside_an_experience_resumes_identically(
    name, references, tmp_path, tmp_path_factory
):
    ref = reference(name, references, tmp_path_factory)
    exp, step = random_kill_step(ref, seed=zlib.crc32(name.encode()))
    cfg = compose(setup_overrides(name))
    check_resume(cfg, tmp_path / "run", reference=ref, kill_step=(exp, step))


def test_hypernet_ledger_counts_the_hypernetwork():
    b = build(compose(setup_overrides("hypernet")))
    b.strategy.train_experience(b.stream[0])
    n_hnet = sum(p.numel() for p in b.strategy.hnet.parameters())
    assert b.strategy.extra_state_bytes() >= 4 * n_hnet
