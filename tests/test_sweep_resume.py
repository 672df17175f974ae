"""Multirun with offline W&B, and SIGKILL + resume giving the uninterrupted result."""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import OmegaConf

from cl.logging.wandb_offline import offline_runs, read_offline_run
from cl.run import KILL_AFTER_ENV
from tests.test_cli import cl_run


def test_multirun_four_jobs_four_wandb_runs(tmp_path):
    p = cl_run(
        "-m",
        "strategy=naive,joint",
        "seed=0,1",
        "train.epochs=2",
        "hydra.sweep.dir=sweep",
        "logger.wandb.log_every_n_steps=5",
        cwd=tmp_path,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    results = sorted((tmp_path / "sweep").glob("*/results.json"))
    assert len(results) == 4
    seen = set()
    ids = set()
    for f in results:
        r = json.loads(f.read_text())
        assert r["run"]["status"] == "complete"
        seen.add((r["config"]["strategy"]["name"], r["run"]["seed"]))
        runs = offline_runs(f.parent)
        assert len(runs) == 1, runs
        w = read_offline_run(runs[0])
        ids.add(w.run_id)
        assert w.run_id == r["run"]["wandb_id"]
        assert w.config["strategy"]["name"] == r["config"]["strategy"]["name"]
        # The logged metrics are those of results.json.
        assert w.summary["cl/avg_acc"] == r["metrics"]["avg_acc"]
        assert w.summary["cl/forgetting"] == r["metrics"]["forgetting"]
        evals = [h for h in w.history if "eval/acc_exp0" in h]
        assert [h["eval/acc_exp0"] for h in evals] == [row[0] for row in r["acc_matrix"]]
        assert any("train/loss" in h for h in w.history)
        # Matrix as a Table, heatmap image, per-task curves.
        assert w.summary["eval/acc_matrix/_type"] == "table-file"
        assert w.summary["eval/acc_matrix_heatmap/_type"] == "image-file"
        assert w.summary["eval/acc_matrix_curves_table/_type"] == "table-file"
        assert w.exit_code == 0
    assert seen == {("naive", 0), ("naive", 1), ("joint", 0), ("joint", 1)}
    assert len(ids) == 4


def test_sigkill_after_second_experience_then_resume(tmp_path):
    args = ["strategy=joint", "train.epochs=2", "logger.console=false", "seed=7"]
    ref = cl_run(*args, "logger=none", "hydra.run.dir=ref", cwd=tmp_path)
    assert ref.returncode == 0, ref.stderr[-2000:]

    killed = cl_run(*args, "hydra.run.dir=run", cwd=tmp_path, env_extra={KILL_AFTER_ENV: "1"})
    assert killed.returncode == -9  # SIGKILL
    run = tmp_path / "run"
    partial = json.loads((run / "results.json").read_text())
    assert partial["run"]["status"] == "partial" and len(partial["acc_matrix"]) == 2
    first_id = partial["run"]["wandb_id"]
    assert first_id

    resumed = cl_run(f"resume={run}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    final = json.loads((run / "results.json").read_text())
    expected = json.loads((tmp_path / "ref" / "results.json").read_text())
    assert final["run"]["status"] == "complete"
    assert final["acc_matrix"] == expected["acc_matrix"]
    assert final["acc_matrix_task_aware"] == expected["acc_matrix_task_aware"]
    assert final["metrics"] == expected["metrics"]
    assert [p["final_loss"] for p in final["per_experience"]] == [
        p["final_loss"] for p in expected["per_experience"]
    ]
    # W&B continues the same run: both attempts log under one id (the killed attempt's log
    # holds what was flushed before SIGKILL), and the resumed one logs the remaining experiences.
    dirs = offline_runs(run)
    assert len(dirs) == 2 and all(d.name.endswith(first_id) for d in dirs)
    last = read_offline_run(dirs[-1])
    assert last.run_id == first_id and final["run"]["wandb_id"] == first_id
    assert [h["experience"] for h in last.history if "eval/acc_exp0" in h] == [3, 4, 5]
    assert last.summary["cl/avg_acc"] == final["metrics"]["avg_acc"]
    # The original composed config is kept.
    kept = OmegaConf.load(Path(run / ".hydra" / "config.yaml"))
    assert kept.strategy.name == "joint" and kept.resume is None and kept.seed == 7
