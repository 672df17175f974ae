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


def test_report_of_the_sweep_plots_the_swept_value_marks_the_best_and_shows_failed_runs(
    sweep, tmp_path
):
    from dataclasses import replace

    import matplotlib.pyplot as plt

    from cl.reports.definition import ReportDefinition
    from cl.reports.render import build_sections, write_report
    from cl.reports.runs import load_runs
    from cl.reports.sweep import shared_core_warning, spread_labels, swept_params

    runs = load_runs([str(sweep)])
    assert sorted(r.state for r in runs) == ["complete"] * 3 + ["failed"] * 2
    assert swept_params([r for r in runs if r.complete]) == ["train.lr"]
    defn = ReportDefinition(panels=["metrics_table", "metric_vs_param", "provenance"])
    (sec,) = build_sections(runs, defn)
    assert "metric_vs_param" in sec.figures
    best = [row for row in sec.rows if row["best"]]
    assert len(best) == 1 and best[0]["avg_acc"][0] == max(r["avg_acc"][0] for r in sec.rows)
    # The failed and the killed run are named in the table's notes and under every figure.
    assert sorted(r.seed for r in sec.left_out) == [2, 3]
    runs[0].versions["plugin:my_cl"] = "git 0123abcd"
    out = write_report(runs, defn, tmp_path / "report")
    md = out["markdown"].read_text()
    assert "★" in md and "Not in this table or its figures: naive seed 2 (failed)" in md
    assert "plugin:my_cl (git 0123abcd)" in md
    assert (out["figures"] / "split_digits_metric_vs_param.png").stat().st_size > 10_000

    # Parallel jobs on one host with more threads than cores: the timings are flagged.
    done = [r for r in runs if r.complete]
    t = ["2026-12-01T10:00:00+00:00", "2026-12-01T10:01:00+00:00", "2026-12-01T10:02:00+00:00"]
    host = {"host": "h", "cpu_count": "2", "torch_threads": "2"}
    overlapping = [
        replace(r, started=t[0], finished=t[2], versions={**r.versions, **host}) for r in done
    ]
    warning = shared_core_warning(overlapping)
    assert warning is not None and "up to 3 runs at once on host h (6 torch threads" in warning
    alone = [replace(r, started=t[i], finished=t[i + 1]) for i, r in enumerate(overlapping[:2])]
    assert shared_core_warning(alone) is None
    roomy = [replace(r, versions={**r.versions, "cpu_count": "64"}) for r in overlapping]
    assert shared_core_warning(roomy) is None

    # Labels of points at the same place are moved apart until none overlap.
    fig, ax = plt.subplots()
    notes = [ax.annotate(f"label {i}", (0.5, 0.5), textcoords="offset points", xytext=(5, 5))
             for i in range(4)]  # fmt: skip
    spread_labels(ax, notes)
    boxes = [n.get_window_extent() for n in notes]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
    plt.close(fig)
