"""Strategies that read the learning rate use the optimiser's effective one: ``train.lr``
scaled by ``batch_size / train.lr_scale_batch`` when the linear scaling rule is on."""

from __future__ import annotations

import warnings

import pytest

from cl.config import build
from tests.conftest import DIGITS_1EPOCH, compose_cfg

SCALED = ("train.lr=0.01", "train.batch_size=32", "train.lr_scale_batch=4")  # effective 0.08


def test_hypernet_optimizer_uses_the_scaled_lr() -> None:
    b = build(
        compose_cfg(
            ["logger=none", *DIGITS_1EPOCH, "strategy=hypernet", "train.optimizer=adam", *SCALED]
        )
    )
    s = b.strategy
    assert s.context.train.effective_lr == pytest.approx(0.08)
    opt = s.build_optimizer(s.trainable_parameters())
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.08] * len(opt.param_groups))


def test_ewc_stability_warning_uses_the_scaled_lr() -> None:
    """lr * lambda * max(F) > 2 warns: with the lr SGD really uses, not the nominal one."""
    cfg = compose_cfg(
        [
            "logger=none",
            *DIGITS_1EPOCH,
            "strategy=ewc",
            "model.hidden_sizes=[16]",
            "train.optimizer=sgd",
            "train.momentum=0",
            "strategy.penalty_step=explicit",
            *SCALED,
        ]
    )
    b = build(cfg)
    strat, stream = b.strategy, b.stream
    strat.train_experience(stream[0])
    assert strat.optimizer is not None and strat.optimizer.param_groups[0]["lr"] == 0.08
    f_max = max(float(a.max()) for a in strat.importance.values())
    # 3/(0.08 f): past the bound at the effective lr (curvature 3), inside it at 0.01 (0.375).
    strat.config.ewc_lambda = 3.0 / (0.08 * f_max)
    with pytest.warns(RuntimeWarning, match="exceeds 2"):
        strat.before_experience(stream[1])
    strat._remove_hooks()
    strat.config.ewc_lambda = 1.5 / (0.08 * f_max)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        strat.before_experience(stream[1])
    strat._remove_hooks()
