"""Registry-driven tests every strategy gets: trains, finite loss, frozen parameters stay
frozen, state round-trips, and an interrupted run resumes to the uninterrupted result."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

import cl.run as run_mod
from cl.config import build
from cl.run import run_experiment
from cl.strategy import list_strategies

# Strategy-specific setups; default: split_digits + mlp, shrunk.
VISION = [
    "stream.max_train_per_experience=120",
    "stream.max_test_per_experience=60",
    "stream.n_experiences=3",
    "train.epochs=1",
]
TEXT = [
    "stream=text_offline",
    "model=hf_encoder",
    "stream.max_len=16",
    "stream.k_shot=2",
    "stream.max_test_per_class=3",
    "train.epochs=1",
    "train.optimizer=adam",
]
TINY_VIT = [
    "model=vit",
    "model.img_size=8",
    "model.patch_size=4",
    "model.depth=1",
    "model.embed_dim=32",
    "model.num_heads=2",
]
SETUP: dict[str, list[str]] = {
    "l2p": [*VISION, *TINY_VIT],
    "prompt_tuning": TEXT,
    "progprompt": TEXT,
    "qtuning": [*TEXT, "strategy.capacity=2"],
}


def overrides(name: str) -> list[str]:
    return [f"strategy={name}", *SETUP.get(name, VISION)]


@pytest.fixture(params=list_strategies())
def strategy_name(request) -> str:
    return request.param


def test_trains_with_finite_loss_and_frozen_params_stay_frozen(strategy_name, make_cfg):
    built = build(make_cfg(*overrides(strategy_name)))
    strat, stream = built.strategy, built.stream
    before = {n: p.detach().clone() for n, p in built.model.named_parameters()}
    trained: set[int] = set()
    for exp in list(stream)[:2]:
        stats = strat.train_experience(exp)
        trained |= {id(p) for p in strat.trainable_parameters()}
        assert math.isfinite(stats.final_loss) and stats.steps > 0
    changed = False
    for n, p in built.model.named_parameters():
        if id(p) not in trained:
            assert torch.equal(p, before[n]), f"frozen parameter {n} changed"
        elif not torch.equal(p, before[n]):
            changed = True
    assert changed or not any(id(p) in trained for p in built.model.parameters())


def test_state_round_trips(strategy_name, make_cfg):
    cfg = make_cfg(*overrides(strategy_name))
    a = build(cfg)
    a.strategy.train_experience(a.stream[0])
    b = build(cfg)
    b.strategy.load_state_dict(a.strategy.state_dict())
    x = a.stream[1].test.x[:16]
    t = a.stream[1].test.t[:16]
    a.model.eval()
    b.model.eval()
    with torch.inference_mode():
        assert torch.equal(a.strategy.predict(x, t), b.strategy.predict(x, t))
        assert torch.equal(a.strategy.predict(x, None), b.strategy.predict(x, None)) or (
            a.strategy.needs_task_id_at_test
        )


def test_interrupted_run_resumes_to_same_result(strategy_name, make_cfg, tmp_path, monkeypatch):
    cfg = make_cfg(*overrides(strategy_name))
    ref = run_experiment(cfg, tmp_path / "ref")

    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    real_save = run_mod.save_checkpoint

    def save_then_die(folder, payload, *, index, keep_all):
        out = real_save(folder, payload, index=index, keep_all=keep_all)
        if index == 1:
            raise KeyboardInterrupt("simulated crash")
        return out

    monkeypatch.setattr(run_mod, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, run_dir)
    monkeypatch.setattr(run_mod, "save_checkpoint", real_save)
    resumed_cfg = OmegaConf.merge(cfg, {"resume": str(run_dir)})
    rec = run_experiment(resumed_cfg, run_dir)
    assert rec.status == "complete"
    assert rec.acc_matrix == ref.acc_matrix
    assert [p["final_loss"] for p in rec.per_experience] == [
        p["final_loss"] for p in ref.per_experience
    ]
