"""``cl.results``: a sweep-like folder of real runs (two seeds of one config, one of another, a
run killed after its first experience and one that died before writing results) loads into one
row per run, and aggregates average complete runs only, per configuration and protocol."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from omegaconf import OmegaConf

from cl import results
from cl.run import KILL_AFTER_ENV, run_experiment
from cl.testing import QUIET, compose

SETUP = (
    *QUIET,
    "strategy=naive",
    "stream.n_experiences=2",
    "stream.max_train_per_experience=60",
    "stream.max_test_per_experience=30",
    "train.epochs=1",
)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """``<root>/<n>/``: jobs 0-1 lr=0.1 seeds 0-1 (complete), 2 lr=0.05 (complete),
    3 lr=0.1 seed 2 killed after experience 0 (partial), 4 died before results (failed)."""
    root = tmp_path_factory.mktemp("multirun")
    jobs = [("0.1", 0), ("0.1", 1), ("0.05", 0), ("0.1", 2), ("0.1", 3)]
    for n, (lr, seed) in enumerate(jobs):
        overrides = [f"train.lr={lr}", f"seed={seed}"]
        cfg = compose([*SETUP, *overrides])
        files = {"config.yaml": cfg, "overrides.yaml": OmegaConf.create(overrides)}
        run_dir = root / str(n)
        if n == 4:  # the job died before its first write
            (run_dir / ".hydra").mkdir(parents=True)
            OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
            continue
        if n == 3:
            with pytest.MonkeyPatch.context() as mp:
                mp.setenv(KILL_AFTER_ENV, "0:raise")
                with pytest.raises(KeyboardInterrupt):
                    run_experiment(cfg, run_dir, hydra_files=files)
            continue
        run_experiment(cfg, run_dir, hydra_files=files)
    return root


def test_load_gives_one_row_per_run_with_config_metrics_and_status(sweep):
    df = results.load(sweep)
    assert len(df) == 5
    by_dir = df.set_index(df["run_dir"].map(lambda p: p.rsplit("/", 1)[-1]))
    assert list(by_dir.loc[["0", "1", "2", "3", "4"], "status"]) == [
        "complete",
        "complete",
        "complete",
        "partial",
        "failed",
    ]
    assert "KeyboardInterrupt" in by_dir.loc["3", "error"]
    assert "no results.json" in by_dir.loc["4", "error"]
    assert by_dir.loc["4", "config.train.lr"] == 0.1 and by_dir.loc["4", "seed"] == 3
    assert by_dir.loc["2", "config.train.lr"] == 0.05 and by_dir.loc["2", "overrides"] == (
        "train.lr=0.05 seed=0"
    )
    for col in ("evaluation", "stream", "strategy", "config.model.hidden_sizes", "acc_matrix"):
        assert col in df, col
    assert set(df["evaluation"].dropna()) == {"task_agnostic"}
    # Metrics agree with the results.json they came from, task-aware ones included.
    data = json.loads((sweep / "0" / "results.json").read_text())
    row = by_dir.loc["0"]
    assert row["avg_acc"] == pytest.approx(data["metrics"]["avg_acc"])
    assert row["task_aware/forgetting"] == pytest.approx(data["metrics_task_aware"]["forgetting"])
    assert row["acc_matrix"] == data["acc_matrix"] and len(row["acc_matrix_task_aware"]) == 2
    assert math.isnan(row["fwt"]) and "fwt" in row["metrics_undefined"]
    assert len(by_dir.loc["3", "acc_matrix"]) == 1  # what the killed run finished
    # Globs and single results files name the same runs.
    assert len(results.load(str(sweep / "*"))) == 5
    assert list(results.load(sweep / "2" / "results.json")["seed"]) == [0]


def test_aggregate_averages_complete_runs_over_seeds_and_counts_the_rest(sweep):
    df = results.load(sweep)
    agg = results.aggregate(df)
    assert list(agg.columns[:3]) == ["evaluation", "stream", "strategy"]
    assert "config.train.lr" in agg and "config.seed" not in agg
    assert len(agg) == 2
    main = agg[agg["config.train.lr"] == 0.1].iloc[0]
    done = df[(df["config.train.lr"] == 0.1) & (df["status"] == "complete")]
    assert main["n_runs"] == 2 and main["seeds"] == (0, 1) and main["n_incomplete"] == 2
    assert main["avg_acc/mean"] == pytest.approx(np.mean(done["avg_acc"]))
    assert main["avg_acc/std"] == pytest.approx(np.std(done["avg_acc"], ddof=1))
    assert main["task_aware/avg_acc/mean"] == pytest.approx(np.mean(done["task_aware/avg_acc"]))
    other = agg[agg["config.train.lr"] == 0.05].iloc[0]
    assert other["n_runs"] == 1 and math.isnan(other["avg_acc/std"])
    # Asked for, the partial run joins the mean (the failed one has no metrics to add).
    every = results.aggregate(df, by="config.train.lr", include_incomplete=True)
    row = every[every["config.train.lr"] == 0.1].iloc[0]
    assert row["n_runs"] == 3 and row["n_incomplete"] == 0  # the failed run: no protocol
    with pytest.raises(KeyError, match="no column nope"):
        results.aggregate(df, by=["nope"])
