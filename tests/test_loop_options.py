"""Training-loop options: optimiser reset, lr schedules with warm-up, the class-IL training
logit mask, the after-step hook and deterministic runs (tiny runs on split_digits)."""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf, open_dict
from torch import Tensor, nn

import cl.run as run_mod
from cl.config import build
from cl.errors import ConfigError
from cl.run import run_experiment
from cl.strategies.joint import Joint
from cl.strategies.naive import Naive
from cl.strategy import STRATEGIES, Batch, register_strategy
from cl.streams.base import Experience
from tests.conftest import DIGITS_1EPOCH

LR = 0.05


class RecordsLr:
    """Records the learning rate of every step (from ``after_step``)."""

    optimizer: torch.optim.Optimizer | None

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)  # type: ignore[call-arg]
        self.lrs: list[float] = []

    def after_step(self, batch: Batch) -> None:
        assert self.optimizer is not None
        self.lrs.append(self.optimizer.param_groups[0]["lr"])


class RecordingNaive(RecordsLr, Naive):
    """Naive fine-tuning that records its learning rates."""


class RecordingJoint(RecordsLr, Joint):
    """Joint training that records its learning rates."""


class SwapsOffset(Naive):
    """Adds a fresh logit offset parameter every experience (the old one is folded into a
    frozen buffer): parameters join and leave a kept optimiser."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        n = self.context.stream.n_classes
        self.offset = nn.Parameter(torch.zeros(n))
        self.frozen = torch.zeros(n, device=self.device)
        self.deterministic_seen: list[bool] = []

    def before_experience(self, exp: Experience) -> None:
        self.frozen = self.frozen + self.offset.detach()
        self.offset = nn.Parameter(torch.zeros_like(self.frozen))

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [*self.model.parameters(), self.offset]

    def forward(self, x: Tensor, task_ids: Tensor | None) -> Tensor:
        return super().forward(x, task_ids) + self.frozen + self.offset

    def predict(self, x: Tensor, task_ids: Tensor | None) -> Tensor:
        return super().predict(x, task_ids) + self.frozen + self.offset

    def after_step(self, batch: Batch) -> None:
        self.deterministic_seen.append(torch.are_deterministic_algorithms_enabled())

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "offset": self.offset.detach().clone(),
            "frozen": self.frozen,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.offset = nn.Parameter(state["offset"].clone())
        self.frozen = state["frozen"].clone()


@contextlib.contextmanager
def registered(name: str, cls: type) -> Iterator[None]:
    """Register ``cls`` as ``name`` for the block only (registry-driven tests never see it)."""
    register_strategy(name)(cls)
    try:
        yield
    finally:
        STRATEGIES.unregister(name)


def _strategy(make_cfg, cls: type, *overrides: str) -> Any:
    b = build(make_cfg(*DIGITS_1EPOCH, f"train.lr={LR}", *overrides))
    return cls(config=b.strategy.config, model=b.model, context=b.context), b.stream


def _head(model: nn.Module) -> Tensor:
    w = [p for p in model.parameters() if p.dim() == 2 and p.shape[0] == 10][-1]
    return w.detach().clone()


# ------------------------------------------------------------------ validation
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lr_schedule=linear", "valid: constant, cosine, step"),
        ("train.logit_mask=old", "valid: none, seen, current"),
        ("train.warmup_steps=-1", "train.warmup_steps must be >= 0"),
        ("train.lr_step_size=0", "train.lr_step_size must be a positive integer"),
        ("train.lr_gamma=0", "train.lr_gamma must be positive"),
    ],
)
def test_bad_loop_values_are_refused(make_cfg, override, message):
    with pytest.raises(ConfigError, match=message) as e:
        build(make_cfg(override))
    assert "\n" not in str(e.value)


def test_a_strategy_with_its_own_loop_refuses_loop_options(make_cfg):
    cfg = make_cfg(*DIGITS_1EPOCH, "strategy=avalanche", "train.lr_schedule=cosine")
    with pytest.raises(ConfigError, match=r"own training loop .* train.lr_schedule=cosine"):
        build(cfg)


# ------------------------------------------------------------- lr schedules
def test_constant_default_and_after_step_runs_once_per_step(make_cfg):
    s, stream = _strategy(make_cfg, RecordingNaive)
    stats = s.train_experience(stream[0])
    assert len(s.lrs) == stats.steps > 5
    assert set(s.lrs) == {LR}


def test_cosine_decays_to_zero_and_restarts_every_experience(make_cfg):
    s, stream = _strategy(make_cfg, RecordingNaive, "train.lr_schedule=cosine", "train.epochs=2")
    stats = s.train_experience(stream[0])
    lrs = s.lrs
    assert len(lrs) == stats.steps and lrs[0] == pytest.approx(LR)
    assert all(a > b for a, b in itertools.pairwise(lrs))  # strictly decreasing
    n = stats.steps
    assert lrs[n // 2] == pytest.approx(LR * 0.5 * (1 + math.cos(math.pi * (n // 2) / n)))
    assert 0 < lrs[-1] < 0.01 * LR  # the last step's lr is ~0 ...
    assert s.optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)  # ... and then 0
    s.lrs = []
    s.train_experience(stream[1])
    assert s.lrs[0] == pytest.approx(LR) and s.lrs[-1] < 0.01 * LR


def test_cosine_horizon_follows_joints_growing_epochs(make_cfg):
    s, stream = _strategy(make_cfg, RecordingJoint, "strategy=joint", "train.lr_schedule=cosine")
    s.train_experience(stream[0])
    s.lrs = []
    stats = s.train_experience(stream[1])  # the union of two experiences: twice the steps
    assert len(s.lrs) == stats.steps and s.lrs[-1] < 0.01 * LR
    assert s.optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_step_schedule_multiplies_by_gamma_every_step_size_epochs(make_cfg):
    s, stream = _strategy(
        make_cfg,
        RecordingNaive,
        "train.lr_schedule=step",
        "train.lr_gamma=0.5",
        "train.lr_step_size=1",
        "train.epochs=3",
    )
    stats = s.train_experience(stream[0])
    per_epoch = stats.steps // 3
    for e in range(3):
        got = s.lrs[e * per_epoch : (e + 1) * per_epoch]
        assert got == pytest.approx([LR * 0.5**e] * per_epoch)
    s.lrs = []
    s.train_experience(stream[1])
    assert s.lrs[0] == pytest.approx(LR)  # restarts


def test_warmup_rises_linearly_then_cosine(make_cfg):
    s, stream = _strategy(
        make_cfg, RecordingNaive, "train.warmup_steps=4", "train.lr_schedule=cosine"
    )
    n = s.train_experience(stream[0]).steps
    assert s.lrs[:5] == pytest.approx([LR * k / 5 for k in (1, 2, 3, 4, 5)])
    # Cosine over the remaining n - 4 steps.
    assert s.lrs[5:] == pytest.approx(
        [LR * 0.5 * (1 + math.cos(math.pi * (t - 4) / (n - 4))) for t in range(5, n)]
    )
    assert s.optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


# -------------------------------------------------------------- logit mask
@pytest.mark.parametrize(
    ("mask", "changed"),
    [("current", {2, 3}), ("seen", {0, 1, 2, 3}), ("none", set(range(10)))],
)
def test_logit_mask_gives_no_gradient_to_masked_classes(make_cfg, mask, changed):
    s, stream = _strategy(make_cfg, Naive, f"train.logit_mask={mask}")
    s.train_experience(stream[0])
    before = _head(s.model)
    s.train_experience(stream[1])  # classes 2, 3
    after = _head(s.model)
    moved = {c for c in range(10) if not torch.equal(before[c], after[c])}
    assert moved == changed


def test_logit_mask_current_keeps_replayed_labels_and_distillation_finite(make_cfg, tmp_path):
    rec = run_experiment(
        make_cfg(*DIGITS_1EPOCH, "strategy=replay", "train.logit_mask=current"), tmp_path / "r"
    )
    a = rec.acc_matrix
    assert all(math.isfinite(p["final_loss"]) for p in rec.per_experience)
    assert a[4][0] > 0.3  # replayed classes are trained on (their labels stay unmasked)
    rec = run_experiment(
        make_cfg(*DIGITS_1EPOCH, "strategy=lwf", "train.logit_mask=current"), tmp_path / "l"
    )
    assert all(math.isfinite(p["final_loss"]) for p in rec.per_experience)
    assert rec.metrics()["avg_acc"] > 0.4  # distillation on unmasked logits; 0.72 measured


def test_labels_trick_reduces_class_il_recency_bias(make_cfg, tmp_path):
    # Naive fine-tuning forgets everything in class-IL (the new classes' logits win); training
    # each experience only among its own classes keeps old classes reachable.
    none = run_experiment(make_cfg(*DIGITS_1EPOCH), tmp_path / "none")
    cur = run_experiment(make_cfg(*DIGITS_1EPOCH, "train.logit_mask=current"), tmp_path / "cur")
    assert none.acc_matrix[4][:4] == [0.0] * 4
    assert min(cur.acc_matrix[4][:4]) > 0.1
    assert cur.metrics()["avg_acc"] > none.metrics()["avg_acc"] + 0.3  # 0.72 vs 0.18 measured


# ------------------------------------------------------- reset_optimizer
def test_kept_optimizer_carries_adam_state_and_swaps_parameters(make_cfg):
    adam = ("train.optimizer=adam", "train.lr=0.001")
    s, stream = _strategy(make_cfg, SwapsOffset, *adam, "train.reset_optimizer=false")
    steps = [s.train_experience(stream[i]).steps for i in range(3)]
    opt = s.optimizer
    first = next(iter(s.model.parameters()))
    assert int(opt.state[first]["step"]) == sum(steps)  # one Adam across experiences
    assert int(opt.state[s.offset]["step"]) == steps[2]  # the new parameter starts fresh
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert in_opt == {id(p) for p in s.trainable_parameters()}  # the old offsets left it
    assert len(opt.state) == len(in_opt)

    r, _ = _strategy(make_cfg, SwapsOffset, *adam)  # default: rebuilt per experience
    steps_r = [r.train_experience(stream[i]).steps for i in range(3)]
    assert int(r.optimizer.state[next(iter(r.model.parameters()))]["step"]) == steps_r[2]
    assert not torch.equal(_head(r.model), _head(s.model))


def test_kept_optimizer_resumes_to_the_uninterrupted_result(make_cfg, tmp_path, monkeypatch):
    name = "test_swaps_offset"
    with registered(name, SwapsOffset):
        cfg = make_cfg(
            "stream=split_digits",
            "train.epochs=1",
            "device=cpu",
            "train.optimizer=adam",
            "train.lr=0.001",
            "train.reset_optimizer=false",
            "train.lr_schedule=cosine",
            "train.warmup_steps=2",
        )
        with open_dict(cfg):
            cfg.strategy.name = name
        ref = run_experiment(cfg, tmp_path / "ref")
        reset = OmegaConf.merge(cfg, {"train": {"reset_optimizer": True}})
        other = run_experiment(reset, tmp_path / "reset")
        assert other.acc_matrix != ref.acc_matrix  # the option changes the run

        run_dir = tmp_path / "run"
        (run_dir / ".hydra").mkdir(parents=True)
        OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
        real_save = run_mod.save_checkpoint

        def save_then_die(folder, payload, *, index, keep_all):
            out = real_save(folder, payload, index=index, keep_all=keep_all)
            if index == 1:
                assert payload["optimizer"]["state"]  # Adam's moments go into the checkpoint
                raise KeyboardInterrupt("simulated crash")
            return out

        monkeypatch.setattr(run_mod, "save_checkpoint", save_then_die)
        with pytest.raises(KeyboardInterrupt):
            run_experiment(cfg, run_dir)
        monkeypatch.setattr(run_mod, "save_checkpoint", real_save)
        rec = run_experiment(OmegaConf.merge(cfg, {"resume": str(run_dir)}), run_dir)
    assert rec.status == "complete"
    assert rec.acc_matrix == ref.acc_matrix
    assert [p["final_loss"] for p in rec.per_experience] == [
        p["final_loss"] for p in ref.per_experience
    ]


# ------------------------------------------------------------ deterministic
def test_deterministic_run_sets_and_restores_the_flags(make_cfg, tmp_path):
    name = "test_det_offset"
    strategies: list[SwapsOffset] = []

    class Spy(SwapsOffset):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            strategies.append(self)

    with registered(name, Spy):
        cfg = make_cfg(*DIGITS_1EPOCH, "deterministic=true")
        with open_dict(cfg):
            cfg.strategy.name = name
        assert not torch.are_deterministic_algorithms_enabled()
        rec = run_experiment(cfg, tmp_path)
    assert rec.status == "complete"
    assert strategies[0].deterministic_seen and all(strategies[0].deterministic_seen)
    assert strategies[0].context.deterministic
    assert not torch.are_deterministic_algorithms_enabled()  # restored after the run
    r = json.loads((tmp_path / "results.json").read_text())
    assert r["config"]["deterministic"] is True
    assert min(r["acc_matrix"][i][i] for i in range(5)) > 0.9


def test_deterministic_evaluation_is_fp32(make_cfg):
    b = build(make_cfg(*DIGITS_1EPOCH, "deterministic=true"))
    s = b.strategy
    s.context.device = torch.device("cuda")  # autocast would be bf16 on CUDA with train.amp
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "CUDA is not available" on CPU machines
        assert isinstance(s.autocast(), torch.autocast)
        assert isinstance(s.autocast(evaluation=True), contextlib.nullcontext)
        s.context.deterministic = False
        assert isinstance(s.autocast(evaluation=True), torch.autocast)
