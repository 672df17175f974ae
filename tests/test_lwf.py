"""LwF: alpha=0 is naive, the teacher is a frozen eval-mode copy, distillation follows the
definition, and in task_il on Split Fashion-MNIST LwF forgets less than naive."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from cl.run import run_experiment
from cl.strategy import Batch
from tests.conftest import ADAM_1EPOCH, DIGITS_1EPOCH, needs_fmnist

DIGITS = DIGITS_1EPOCH
SPLIT_TIL = (
    "stream=split_fmnist",
    "stream.scenario=task_il",
    "stream.max_train_per_experience=1500",
    "stream.max_test_per_experience=1000",
    *ADAM_1EPOCH,
)
# 1500 training samples per task (was 3000, half the cost). Forgetting naive / LwF, seeds 0-2:
# single head 0.354/0.104, 0.433/0.053, 0.463/0.193; multi-head 0.121/0.005, 0.185/0.005,
# 0.109/0.012 -- the smallest gap (0.097) is far above the asserted 0.02.


@pytest.mark.parametrize("scenario", ["class_il", "task_il"])
def test_alpha_zero_reproduces_naive(make_cfg, tmp_path, scenario):
    s = f"stream.scenario={scenario}"
    naive = run_experiment(make_cfg(*DIGITS, s, "strategy=naive"), tmp_path / "n")
    lwf = run_experiment(make_cfg(*DIGITS, s, "strategy=lwf", "strategy.alpha=0"), tmp_path / "l")
    assert lwf.acc_matrix == naive.acc_matrix


@pytest.mark.parametrize("multi_head", ["false", "true"])
def test_teacher_frozen_and_loss_matches_definition(make_cfg, multi_head):
    from cl.config import build

    b = build(
        make_cfg(
            *DIGITS,
            "stream.scenario=task_il",
            f"model.multi_head={multi_head}",
            "strategy=lwf",
            "strategy.temperature=3",
            "strategy.t2_scaling=true",
            "model.dropout=0.0",
        )
    )
    s = b.strategy
    s.train_experience(b.stream[0])
    s.train_experience(b.stream[1])
    assert not s.teacher.training
    assert all(not p.requires_grad for p in s.teacher.parameters())
    before = {k: v.clone() for k, v in s.teacher.state_dict().items()}
    x, y, t = b.stream[2].train.x[:64], b.stream[2].train.y[:64], b.stream[2].train.t[:64]
    logits = s.forward(x, t)
    loss = s.extra_loss(Batch(x, y, t), logits)
    # Reference: per old task, KL over that task's classes of the all-heads outputs.
    s.model.train()
    s.teacher.eval()
    with torch.no_grad():
        old = s.teacher(x, None)
    new = s.model(x, None) if multi_head == "true" else logits
    ref = 0.0
    for classes in b.context.stream.task_classes[:2]:
        ref += F.kl_div(
            F.log_softmax(new[:, classes] / 3, 1),
            F.softmax(old[:, classes] / 3, 1),
            reduction="batchmean",
        )
    torch.testing.assert_close(loss, 9 * ref)
    assert all(torch.equal(before[k], v) for k, v in s.teacher.state_dict().items())


def test_state_round_trip(make_cfg):
    from cl.config import build

    b = build(make_cfg(*DIGITS, "strategy=lwf"))
    b.strategy.train_experience(b.stream[0])
    other = build(make_cfg(*DIGITS, "strategy=lwf")).strategy
    other.load_state_dict(b.strategy.state_dict())
    x = b.stream[1].train.x[:32]
    assert torch.equal(other.teacher(x), b.strategy.teacher(x))
    assert other.extra_state_bytes() == b.strategy.extra_state_bytes() > 0


@needs_fmnist
@pytest.mark.parametrize("multi_head", ["false", "true"])
def test_task_il_lwf_forgets_less_than_naive(make_cfg, tmp_path, multi_head):
    m = f"model.multi_head={multi_head}"
    naive = run_experiment(make_cfg(*SPLIT_TIL, m, "strategy=naive"), tmp_path / "n")
    lwf = run_experiment(make_cfg(*SPLIT_TIL, m, "strategy=lwf"), tmp_path / "l")
    f_naive, f_lwf = naive.metrics()["forgetting"], lwf.metrics()["forgetting"]
    assert f_lwf < f_naive - 0.02, (f_lwf, f_naive)


PERMUTED_TIL = (
    "stream=permuted_digits",
    "stream.scenario=task_il",
    "stream.n_experiences=3",
    "train.epochs=1",
    "checkpoint.enabled=false",
    "device=cpu",
    "strategy=lwf",
)


def test_multi_head_over_shared_classes_runs_to_completion(make_cfg, tmp_path):
    # Every permuted task has all 10 classes: heads can only be told apart by task ids.
    rec = run_experiment(make_cfg(*PERMUTED_TIL, "model.multi_head=true"), tmp_path)
    assert rec.status == "complete" and len(rec.acc_matrix) == 3
    assert min(rec.acc_matrix[-1]) > 0.5, rec.acc_matrix


@pytest.mark.parametrize("multi_head", ["false", "true"])
def test_distillation_counts_each_old_task_once_on_shared_classes(make_cfg, multi_head):
    from cl.config import build

    b = build(make_cfg(*PERMUTED_TIL, f"model.multi_head={multi_head}", "model.dropout=0.0"))
    s = b.strategy
    s.train_experience(b.stream[0])
    s.train_experience(b.stream[1])
    assert s.old_tasks == [0, 1]
    torch.manual_seed(0)
    with torch.no_grad():  # move the student away from its teacher: the terms become non-zero
        for p in s.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x, y, t = b.stream[2].train.x[:64], b.stream[2].train.y[:64], b.stream[2].train.t[:64]
    s.model.train()
    logits = s.forward(x, t)
    loss = s.extra_loss(Batch(x, y, t), logits)

    def kl(new, old):
        return F.kl_div(F.log_softmax(new / 2, 1), F.softmax(old / 2, 1), reduction="batchmean")

    with torch.no_grad():
        if multi_head == "true":  # one term per old task, each through its own head
            h_old, h_new = s.teacher.features(x), s.model.features(x)
            ref = sum(
                kl(s.model.head.heads[k](h_new), s.teacher.head.heads[k](h_old)) for k in (0, 1)
            )
        else:  # one shared head over the same 10 classes: a single term, not one per task
            ref = kl(logits, s.teacher(x, t))
    assert ref > 1e-3
    torch.testing.assert_close(loss.detach(), ref)
