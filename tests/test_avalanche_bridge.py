"""The ``avalanche`` bridge runs Avalanche strategies to complete results under our loop, and
our EWC, LwF and replay match Avalanche's on the same stream where the definitions agree."""

from __future__ import annotations

import json

import pytest
import torch

from cl.errors import ConfigError
from cl.run import run_experiment
from tests.conftest import needs_fmnist

DIGITS = ("stream=split_digits", "train.epochs=2", "device=cpu")


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("SynapticIntelligence", ["+strategy.kwargs.si_lambda=1.0"]),
        ("AGEM", ["+strategy.kwargs.patterns_per_exp=50"]),
        ("DER", ["+strategy.kwargs.mem_size=200"]),
        ("GDumb", ["+strategy.kwargs.mem_size=500"]),
    ],
)
def test_bridge_runs_to_complete_results(make_cfg, tmp_path, name, kwargs):
    cfg = make_cfg(*DIGITS, "strategy=avalanche", f"strategy.strategy_name={name}", *kwargs)
    rec = run_experiment(cfg, tmp_path)
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["run"]["status"] == "complete"
    assert len(res["acc_matrix"]) == 5 and all(len(r) == 5 for r in res["acc_matrix"])
    assert res["acc_matrix"][-1][-1] > 0.7  # it learned the last experience
    assert rec.per_experience[0]["steps"] > 0
    assert (tmp_path / "checkpoints" / "last.pt").exists()
    if name in ("DER", "GDumb", "AGEM"):
        assert res["budget"]["extra_state_bytes"] > 0


def test_unknown_avalanche_strategy_lists_choices(make_cfg, tmp_path):
    cfg = make_cfg(*DIGITS, "strategy=avalanche", "strategy.strategy_name=NoSuchThing")
    with pytest.raises(ConfigError, match="SynapticIntelligence"):
        run_experiment(cfg, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lwf", "replay"])
def test_ours_match_avalanche_on_digits(method):
    """Same stream, model init, optimiser and hyperparameters: mean accuracies within 0.03."""
    from benchmarks.compare_avalanche import compare

    rows = compare(
        stream="permuted_digits",
        max_test=None,
        epochs=3,
        batch_size=32,
        lr=0.1,
        seed=0,
        repeats=3,  # shuffling and buffer sampling differ: compare means over seeds
        hp={"mem": 200},
        methods=(method,),
        verbose=False,
    )
    for r in rows:
        assert abs(r["ours"]["avg_acc"] - r["avalanche"]["avg_acc"]) <= 0.03, r


@pytest.mark.slow
@pytest.mark.heavy
@needs_fmnist
def test_our_ewc_matches_avalanche_on_permuted_fmnist():
    """Batched Fisher, same lambda (mapped for the 1/2), init, optimiser and data: mean
    accuracies within 0.03. Measured over seeds 0-2: ours 0.768, Avalanche's 0.769.

    Not on permuted_digits: there one run's accuracy moves by up to 0.08 with the shuffling
    seed (naive too), so three seeds cannot resolve 0.03."""
    from benchmarks.compare_avalanche import compare

    rows = compare(
        stream="permuted_fmnist",
        max_train=10000,
        max_test=2000,
        epochs=1,
        batch_size=32,
        lr=0.05,
        seed=0,
        repeats=3,
        hp={"ewc": 100.0},
        methods=("ewc",),
        verbose=False,
    )
    (r,) = rows
    assert abs(r["ours"]["avg_acc"] - r["avalanche"]["avg_acc"]) <= 0.03, r
    assert r["ours"]["forgetting"] <= r["avalanche"]["forgetting"] + 0.02, r


BRIDGE_STATEFUL = [
    ("Replay", ["+strategy.kwargs.mem_size=100"]),
    ("EWC", ["+strategy.kwargs.ewc_lambda=10.0"]),
    ("LwF", ["+strategy.kwargs.alpha=1.0", "+strategy.kwargs.temperature=2.0"]),
]


def _bridge_cfg(name: str, kwargs: list[str]):
    from cl.testing import compose, setup_overrides

    # Adam: the optimizer's moments are state too (Avalanche keeps them across experiences).
    extra = ["train.optimizer=adam", "train.lr=0.001"]
    return compose(setup_overrides("avalanche", f"strategy.strategy_name={name}", *kwargs, *extra))


@pytest.mark.parametrize(("name", "kwargs"), BRIDGE_STATEFUL)
def test_bridge_resumes_its_strategy_state_identically(tmp_path, name, kwargs):
    from cl.testing import check_resume, run_uninterrupted

    cfg = _bridge_cfg(name, kwargs)
    ref = run_uninterrupted(cfg, tmp_path / "ref")
    check_resume(cfg, tmp_path / "after", reference=ref, kill_after=1)
    if name == "Replay":  # the buffer is counted at the size of its samples (8x8 floats + 16)
        assert ref.budget.extra_state_bytes >= 100 * (64 * 4 + 16)
        check_resume(cfg, tmp_path / "inside", reference=ref, kill_step=(2, 3))


def test_bridge_refuses_a_checkpoint_without_strategy_state():
    from cl.config import build

    b = build(_bridge_cfg(*BRIDGE_STATEFUL[0]))
    state = {"model": b.model.state_dict()}  # as written before the strategy state was saved
    with pytest.raises(ConfigError, match="cannot resume Avalanche Replay"):
        b.strategy.load_state_dict(state)
    with pytest.raises(ConfigError, match="not saved \\(TypeError: boom\\)"):
        b.strategy.load_state_dict({**state, "avalanche": None, "unresumable": "TypeError: boom"})


def test_bridge_refuses_to_resume_a_strategy_whose_state_cannot_be_saved():
    from cl.config import build

    cfg = _bridge_cfg("AGEM", ["+strategy.kwargs.patterns_per_exp=20"])
    a = build(cfg)
    a.strategy.train_experience(a.stream[0])
    state = a.strategy.state_dict()  # AGEM keeps a live data-loader iterator: not picklable
    assert "unresumable" in state
    with pytest.raises(ConfigError, match="cannot resume Avalanche AGEM: its state was not saved"):
        build(cfg).strategy.load_state_dict(state)


# Tiny MLP on split_digits, SGD with momentum: the optimizer's state matters across experiences.
BRIDGE_VS_AVALANCHE = (
    "stream=split_digits",
    "model.hidden_sizes=[32]",
    "train.epochs=2",
    "train.batch_size=32",
    "train.lr=0.01",
    "train.momentum=0.9",
)


@pytest.mark.parametrize("method", ["naive", "replay"])
def test_bridge_gives_avalanches_own_accuracy_matrix(method):
    """Naive and Replay through the bridge and directly in Avalanche (same seed, stream,
    initial weights, optimizer kept across experiences as Avalanche 0.6 does): the same
    accuracy matrix within 0.01."""
    from benchmarks.compare_avalanche import bridge_vs_avalanche

    bridge, direct = bridge_vs_avalanche(method, list(BRIDGE_VS_AVALANCHE))
    assert len(bridge) == len(direct) == 5
    pairs = zip(bridge, direct, strict=True)
    diff = max(abs(a - b) for ra, rb in pairs for a, b in zip(ra, rb, strict=True))
    assert diff <= 0.01, (bridge, direct)
    assert sum(bridge[i][i] for i in range(5)) / 5 > 0.4  # it learned (chance: 0.1-0.5)


def test_bridge_keeps_or_resets_the_optimizer_state(make_cfg):
    """Momentum buffers survive the experience boundary (Avalanche's default); with
    reset_optimizer_state=true they restart; train.reset_optimizer=false is accepted."""
    from cl.config import build

    def momentum_after(*extra):
        b = build(make_cfg(*BRIDGE_VS_AVALANCHE, "device=cpu", "strategy=avalanche", *extra))
        b.strategy.train_experience(b.stream[0])
        opt = b.strategy._av.optimizer
        before = {id(p): opt.state[p]["momentum_buffer"].clone() for p in opt.state}
        b.strategy._av.train_epochs = 0  # enter the next experience without a step
        b.strategy.train_experience(b.stream[1])
        params = [p for g in opt.param_groups for p in g["params"]]
        return before, {id(p): opt.state.get(p, {}).get("momentum_buffer") for p in params}

    before, kept = momentum_after("train.reset_optimizer=false")
    assert before and all(torch.equal(before[k], kept[k]) for k in before)
    _, reset = momentum_after("strategy.reset_optimizer_state=true")
    assert reset and all(v is None for v in reset.values())
    with pytest.raises(ConfigError, match="contradicts"):
        build(
            make_cfg(
                *DIGITS,
                "strategy=avalanche",
                "train.reset_optimizer=false",
                "strategy.reset_optimizer_state=true",
            )
        )


def test_bridge_clips_gradients_and_reports_the_last_epochs_loss(make_cfg):
    """train.grad_clip bounds every update's gradient norm; final_loss is the mean loss of
    the last epoch (as in the native loop), not of the whole experience."""
    from avalanche.training.plugins import SupervisedPlugin

    from cl.config import build

    b = build(
        make_cfg(*BRIDGE_VS_AVALANCHE, "device=cpu", "strategy=avalanche", "train.grad_clip=0.01")
    )
    norms, losses = [], []

    class Probe(SupervisedPlugin):  # what the optimizer is about to apply, each step's loss
        def before_update(self, strategy, **kwargs):
            grads = [p.grad for g in strategy.optimizer.param_groups for p in g["params"]]
            norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))

        def after_training_iteration(self, strategy, **kwargs):
            losses.append(float(strategy.loss))

    b.strategy._av = b.strategy._build()
    b.strategy._av.plugins.append(Probe())  # after the bridge's plugin: sees clipped gradients
    stats = b.strategy.train_experience(b.stream[0])
    assert norms and max(norms) <= 0.01 * 1.001
    per_epoch = len(losses) // 2
    assert stats.final_loss == pytest.approx(sum(losses[per_epoch:]) / per_epoch, rel=1e-5)
    assert stats.final_loss != pytest.approx(sum(losses) / len(losses), rel=1e-3)


def test_bridge_compiles_the_model_in_place(make_cfg):
    from cl.config import build

    b = build(make_cfg(*DIGITS, "strategy=avalanche", "train.compile=true"))
    av = b.strategy._av = b.strategy._build()
    assert av.model is b.model and b.model._compiled_call_impl is not None
    assert set(b.model.state_dict()) == set(b.strategy.model_tensors())  # names unchanged
