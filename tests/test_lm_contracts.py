"""The strategy contracts on a tiny causal LM (cl.testing.LM_SETUP: a random Llama on the
memorisation stream) for every strategy that supports language models: training stays finite
with frozen parameters untouched and the ledger covering the state, state round-trips, and a run
killed inside an experience resumes to the identical matrix."""

from __future__ import annotations

import zlib

import pytest

from cl.strategy import get_strategy, list_strategies
from cl.testing import (
    check_resume,
    check_state_round_trip,
    check_trains,
    compose,
    lm_setup_overrides,
    random_kill_step,
    run_uninterrupted,
)

LM_STRATEGIES = [n for n in list_strategies() if "text2text" in get_strategy(n).modalities]
# Strategy settings the LM setup needs (EWC's per-sample Fishers do not apply to LMs).
EXTRA = {"ewc": ("strategy.estimator=batched",)}
# Strategies that read task ids at test time run with them (results labelled task_aware).
TASK_IDS = ("stream.task_labels=true", "allow_task_oracle=true")


def lm_overrides(name: str) -> list[str]:
    """The LM contract setup of strategy ``name``, with what it needs (task ids, settings)."""
    ids = TASK_IDS if get_strategy(name).needs_task_id_at_test else ()
    return lm_setup_overrides(name, *EXTRA.get(name, ()), *ids)


def test_the_baselines_support_language_models():
    assert {"naive", "joint", "replay", "ewc", "lwf"} <= set(LM_STRATEGIES)


@pytest.mark.parametrize("name", LM_STRATEGIES)
def test_lm_contracts(name, tmp_path):
    cfg = compose(lm_overrides(name))
    check_trains(cfg)
    check_state_round_trip(cfg)
    ref = run_uninterrupted(cfg, tmp_path / "ref")
    exp, step = random_kill_step(ref, seed=zlib.crc32(name.encode()))
    check_resume(cfg, tmp_path / "run", reference=ref, kill_step=(exp, step))
