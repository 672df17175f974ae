"""The contract kit: checks every strategy must pass, reusable on your own strategies.

Each check builds a small run from config overrides (the strategy's own
:attr:`~cl.strategy.Strategy.test_setup`, or :data:`DEFAULT_SETUP`) and raises
``AssertionError`` with a message when the contract is broken:

- :func:`check_trains`: training stays finite, frozen parameters stay bit-identical, the ledger
  counts what the optimizer updates and every tensor kept beyond the model's own.
- :func:`check_state_round_trip`: a fresh strategy loaded with ``state_dict()`` predicts alike.
- :func:`check_resume`: a run killed after an experience, or at a step inside one, and resumed
  from its checkpoint gives the identical accuracy matrix and losses as an uninterrupted run.

The run-level checks use the testing hooks of :mod:`cl.run` (``CL_KILL_AFTER_EXPERIENCE`` and
``CL_KILL_AT_STEP``, here in their in-process ``:raise`` form).

Example (in a pytest file)::

    from cl.testing import check_resume, check_trains, compose, run_uninterrupted
    from cl.testing import setup_overrides

    def test_my_strategy(tmp_path):
        cfg = compose(setup_overrides("my_strategy"))
        check_trains(cfg)
        ref = run_uninterrupted(cfg, tmp_path / "ref")
        check_resume(cfg, tmp_path / "run", reference=ref, kill_step=(1, 3))
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from cl.budget import count_parameters, state_extra_bytes

# The small setup of a strategy that declares none: split_digits with the default MLP, shrunk.
DEFAULT_SETUP: tuple[str, ...] = (
    "stream.max_train_per_experience=120",
    "stream.max_test_per_experience=60",
    "stream.n_experiences=3",
    "train.epochs=1",
)
# A tiny timm ViT on the same digits.
TINY_VIT_SETUP: tuple[str, ...] = (
    *DEFAULT_SETUP,
    "model=vit",
    "model.img_size=8",
    "model.patch_size=4",
    "model.depth=1",
    "model.embed_dim=32",
    "model.num_heads=2",
)
# The offline text stream (3 tasks) on the offline MiniLM encoder, few shots, short inputs.
TEXT_SETUP: tuple[str, ...] = (
    "stream=text_offline",
    "model=hf_encoder",
    "stream.max_len=16",
    "stream.k_shot=2",
    "stream.max_test_per_class=3",
    "train.epochs=1",
    "train.optimizer=adam",
)
# A tiny random Llama on the memorisation stream (text-to-text; byte-level tokens), for the
# strategies that support language models (``"text2text"`` in their ``modalities``).
LM_SETUP: tuple[str, ...] = (
    "stream=memorize",
    "model=hf_causal_lm",
    "stream.size=8",
    "stream.key_len=4",
    "stream.value_len=4",
    "model.hidden_size=32",
    "model.intermediate_size=64",
    "model.num_layers=1",
    "train.epochs=2",
    "train.batch_size=4",
    "train.optimizer=adam",
    "train.lr=0.005",
)
QUIET: tuple[str, ...] = ("logger=none", "device=cpu")


def setup_overrides(name: str, *extra: str) -> list[str]:
    """Overrides of strategy ``name``'s contract setup (its ``test_setup`` or the default)."""
    from cl.strategy import get_strategy

    own = get_strategy(name).test_setup
    return [*QUIET, f"strategy={name}", *(own or DEFAULT_SETUP), *extra]


def lm_setup_overrides(name: str, *extra: str) -> list[str]:
    """Overrides of strategy ``name`` on :data:`LM_SETUP` (a tiny causal LM)."""
    return [*QUIET, f"strategy={name}", *LM_SETUP, *extra]


def compose(overrides: Sequence[str]) -> DictConfig:
    """The run config of ``overrides``, composed in-process as ``cl-run`` would."""
    from cl.config import compose_config

    return compose_config(list(overrides))


def ledger_floor(strategy: Any) -> int:
    """Bytes of every tensor in ``strategy.state_dict()`` beyond the model's original ones."""
    return state_extra_bytes(strategy.state_dict(), strategy.model_tensors())


def check_trains(cfg: DictConfig, *, n_experiences: int = 2) -> Any:
    """Train the first experiences in-process and check the training contracts.

    Checks: steps ran and the loss is finite; model parameters the optimizer does not update
    stay bit-identical and some trained parameter changed; ``trainable_params`` is the number of
    elements the optimizer updates; ``extra_state_bytes()`` covers every tensor of
    ``state_dict()`` beyond the model's own (:func:`ledger_floor`).

    Returns:
        The built run (``cl.config.Built``) after training.
    """
    from cl.config import build

    built = build(cfg)
    strat = built.strategy
    before = {n: p.detach().clone() for n, p in built.model.named_parameters()}
    trained: set[int] = set()
    for exp in list(built.stream)[:n_experiences]:
        stats = strat.train_experience(exp)
        assert stats.steps > 0, f"{strat.name}: no training step on experience {exp.index}"
        assert math.isfinite(stats.final_loss), f"{strat.name}: loss {stats.final_loss}"
        params = [p for p in strat.trainable_parameters() if p.requires_grad]
        trained |= {id(p) for p in params}
        assert stats.trainable_params == count_parameters(params), (
            f"{strat.name}: trainable_params {stats.trainable_params} != "
            f"{count_parameters(params)} elements the optimizer updates"
        )
        floor = ledger_floor(strat)
        assert strat.extra_state_bytes() >= floor, (
            f"{strat.name}: extra_state_bytes {strat.extra_state_bytes()} < {floor} bytes of "
            "tensors in state_dict() beyond the model's own"
        )
    changed = False
    for n, p in strat.model.named_parameters():
        if n not in before:
            continue
        if id(p) not in trained:
            assert torch.equal(p, before[n]), f"{strat.name}: frozen parameter {n} changed"
        elif not torch.equal(p, before[n]):
            changed = True
    in_model = any(id(p) in trained for p in strat.model.parameters())
    assert changed or not in_model, f"{strat.name}: no trained model parameter changed"
    return built


def check_state_round_trip(cfg: DictConfig) -> None:
    """A fresh strategy loaded with the state of a trained one predicts identically."""
    from cl.config import build

    a = build(cfg)
    a.strategy.train_experience(a.stream[0])
    b = build(cfg)
    b.strategy.load_state_dict(a.strategy.state_dict())
    test = a.stream[1].test
    x, t = test.x[:16], test.t[:16]
    a.strategy.model.eval()
    b.strategy.model.eval()
    with torch.inference_mode():
        assert torch.equal(a.strategy.predict(x, t), b.strategy.predict(x, t))
        if not a.strategy.needs_task_id_at_test:
            assert torch.equal(a.strategy.predict(x, None), b.strategy.predict(x, None))


@contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def random_kill_step(reference: Any, seed: int) -> tuple[int, int]:
    """A reproducible (experience, step) inside a run, drawn from ``seed``.

    Args:
        reference: Record of the uninterrupted run (its per-experience step counts).
        seed: Seed of the draw (e.g. derived from the strategy's name).

    Returns:
        The experience index and a 1-based step of it.
    """
    rng = random.Random(seed)
    i = rng.randrange(len(reference.per_experience))
    return i, rng.randint(1, int(reference.per_experience[i]["steps"]))


def run_uninterrupted(cfg: DictConfig, run_dir: Path) -> Any:
    """The reference: ``cfg`` run start to end in ``run_dir``."""
    from cl.run import run_experiment

    return run_experiment(cfg, run_dir)


def check_resume(
    cfg: DictConfig,
    run_dir: Path,
    *,
    reference: Any,
    kill_after: int | None = None,
    kill_step: tuple[int, int] | None = None,
) -> Any:
    """Kill a run (after experience ``kill_after``, or at ``kill_step`` = (experience, step)),
    resume it from its checkpoint and compare with ``reference`` (an uninterrupted run's record).

    Returns:
        The resumed run's record.
    """
    from cl.run import KILL_AFTER_ENV, KILL_AT_STEP_ENV, run_experiment

    if (kill_after is None) == (kill_step is None):
        raise ValueError("give exactly one of kill_after and kill_step")
    (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    if kill_after is not None:
        env, spec = KILL_AFTER_ENV, f"{kill_after}:raise"
    else:
        assert kill_step is not None
        env, spec = KILL_AT_STEP_ENV, f"{kill_step[0]}:{kill_step[1]}:raise"
    with _env(env, spec):
        try:
            run_experiment(cfg, run_dir)
        except KeyboardInterrupt:
            pass
        else:
            raise AssertionError(f"the run was not killed ({env}={spec})")
    resumed = OmegaConf.merge(cfg, {"resume": str(run_dir)})
    assert isinstance(resumed, DictConfig)
    rec = run_experiment(resumed, run_dir)
    where = f"killed with {env}={spec}"
    assert rec.status == "complete", f"resumed run ({where}) is {rec.status}"
    assert rec.acc_matrix == reference.acc_matrix, (
        f"resumed run ({where}) differs: {rec.acc_matrix} != {reference.acc_matrix}"
    )
    losses = [p["final_loss"] for p in rec.per_experience]
    assert losses == [p["final_loss"] for p in reference.per_experience], where
    return rec
