"""End-to-end runs through the composed config: results.json contract, metrics, ledger."""

import csv
import json

import pytest

from cl import metrics as M
from cl.errors import NonFiniteLossError
from cl.run import run_experiment
from cl.strategy import Strategy

RUN_KEYS = {"name", "seed", "started", "finished", "device", "versions", "status"}
BUDGET_KEYS = {
    "trainable_params",
    "extra_state_bytes",
    "train_seconds",
    "eval_seconds",
    "samples_per_second",
    "peak_memory_bytes",
}


def test_default_run_writes_results_schema(make_cfg, tmp_path):
    rec = run_experiment(make_cfg(), tmp_path)
    r = json.loads((tmp_path / "results.json").read_text())
    assert r["schema"] == 1
    assert set(r["run"]) >= RUN_KEYS and r["run"]["status"] == "complete"
    assert r["stream"]["name"] == "split_digits" and r["stream"]["n_experiences"] == 5
    assert r["stream"]["scenario"] == "class_il"
    assert r["stream"]["classes"] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    assert set(r["metrics"]) == {"avg_acc", "avg_incremental_acc", "forgetting", "bwt", "fwt"}
    assert set(r["budget"]) >= BUDGET_KEYS
    assert r["config"]["strategy"]["name"] == "naive"
    a = r["acc_matrix"]
    assert len(a) == 5 and all(len(row) == 5 for row in a)
    # class_il task-agnostic matrix: future experiences have unseen classes -> 0.
    assert all(a[i][j] == 0.0 for i in range(5) for j in range(i + 1, 5))
    # Each experience is learned when trained on.
    assert min(a[i][i] for i in range(5)) > 0.9
    assert r["metrics"]["avg_acc"] == pytest.approx(M.avg_acc(a))
    assert r["metrics"]["forgetting"] == pytest.approx(M.forgetting(a))
    # Task-agnostic class_il: R[j-1][j] is 0 by construction, so FWT is null with its reason;
    # the task-aware FWT (task-aware matrix and baseline) is reported instead.
    assert r["evaluation"] == r["stream"]["evaluation"] == "task_agnostic"
    assert r["metrics"]["fwt"] is None and "class_il" in r["metrics_undefined"]["fwt"]
    ta_fwt = M.fwt(r["acc_matrix_task_aware"], r["baseline_acc_task_aware"])
    assert r["metrics_task_aware"]["fwt"] == pytest.approx(ta_fwt)
    # Task-aware matrix exists (split_digits has task ids) and is >= the agnostic one.
    ta = r["acc_matrix_task_aware"]
    assert len(ta) == 5 and all(ta[i][j] >= a[i][j] for i in range(5) for j in range(5))
    assert r["budget"]["trainable_params"] == 64 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10
    assert len(r["per_experience"]) == 5 and r["per_experience"][4]["index"] == 4
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert len(rows) == 5 and float(rows[4]["avg_acc"]) == pytest.approx(r["metrics"]["avg_acc"])
    # Interim avg_acc: the experiences seen so far (row 0: R[0][0], not a mean with 0s).
    assert float(rows[0]["avg_acc"]) == pytest.approx(a[0][0])
    assert float(rows[2]["avg_acc"]) == pytest.approx(sum(a[2][:3]) / 3)
    assert rows[0]["evaluation"] == "task_agnostic" and rows[4]["fwt"] == ""
    assert (tmp_path / "checkpoints" / "last.pt").exists()
    assert rec.status == "complete"


def test_eval_batch_size_does_not_change_results(make_cfg, tmp_path):
    a = run_experiment(make_cfg("train.eval_batch_size=1", "train.epochs=1"), tmp_path / "a")
    b = run_experiment(make_cfg("train.eval_batch_size=4096", "train.epochs=1"), tmp_path / "b")
    assert a.acc_matrix == b.acc_matrix


def test_same_seed_same_matrix_other_seed_differs(make_cfg, tmp_path):
    a = run_experiment(make_cfg("seed=3", "train.epochs=1"), tmp_path / "a")
    b = run_experiment(make_cfg("seed=3", "train.epochs=1"), tmp_path / "b")
    c = run_experiment(make_cfg("seed=4", "train.epochs=1"), tmp_path / "c")
    assert a.acc_matrix == b.acc_matrix
    assert a.acc_matrix != c.acc_matrix


def test_task_il_multi_head_primary_matrix_is_task_aware(make_cfg, tmp_path):
    rec = run_experiment(make_cfg("stream.scenario=task_il", "model.multi_head=true"), tmp_path)
    assert rec.acc_matrix == rec.acc_matrix_task_aware
    # Multi-head with task ids: learned tasks stay well above chance.
    assert min(rec.acc_matrix[4]) > 0.6


def test_domain_il_permuted_digits(make_cfg, tmp_path):
    rec = run_experiment(make_cfg("stream=permuted_digits", "train.epochs=3"), tmp_path)
    r = rec.acc_matrix
    assert len(r) == 5 and min(r[i][i] for i in range(5)) > 0.8
    assert rec.to_results()["stream"]["scenario"] == "domain_il"


def test_joint_is_an_upper_bound_on_digits(make_cfg, tmp_path):
    naive = run_experiment(make_cfg(), tmp_path / "n")
    joint = run_experiment(make_cfg("strategy=joint"), tmp_path / "j")
    assert joint.metrics()["avg_acc"] > 0.9 > 0.3 > naive.metrics()["avg_acc"]
    assert joint.metrics()["forgetting"] < 0.05 < 0.9 < naive.metrics()["forgetting"]
    # Joint keeps the data of the experiences it has seen: the ledger says so.
    assert joint.budget.extra_state_bytes > 0 and naive.budget.extra_state_bytes == 0


def test_nan_loss_keeps_finished_experiences(make_cfg, tmp_path, monkeypatch):
    """A loss that turns NaN in experience 2 stops the run; experiences 0-1 are kept."""
    import torch

    from cl.strategies.naive import Naive

    def extra_loss(self, batch, logits):
        if self._exp == 2:
            return torch.tensor(float("nan"))
        return None

    def before_experience(self, exp):
        self._exp = exp.index

    monkeypatch.setattr(Naive, "extra_loss", extra_loss)
    monkeypatch.setattr(Naive, "before_experience", before_experience)
    with pytest.raises(NonFiniteLossError):
        run_experiment(make_cfg("train.epochs=1"), tmp_path)
    r = json.loads((tmp_path / "results.json").read_text())
    assert r["run"]["status"] == "partial"
    assert len(r["acc_matrix"]) == 2
    assert "non-finite" in r["run"]["error"]
    assert r["metrics"]["avg_acc"] is not None
    assert issubclass(Naive, Strategy)


def test_task_il_permuted_multi_head_naive(make_cfg, tmp_path):
    """Heads over tasks that share classes: evaluation uses task ids only."""
    rec = run_experiment(
        make_cfg(
            "stream=permuted_digits",
            "stream.scenario=task_il",
            "model.multi_head=true",
            "stream.n_experiences=3",
            "train.epochs=2",
        ),
        tmp_path,
    )
    assert rec.acc_matrix == rec.acc_matrix_task_aware
    assert min(rec.acc_matrix[i][i] for i in range(3)) > 0.7
