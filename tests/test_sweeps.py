"""Checked-in sweeps: joblib runs jobs in parallel, submitit runs the same file, Optuna tunes
only inside its window, the W&B sweep spec drives cl-run, and the progress line counts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from cl.config import register_configs
from cl.reports.progress import read_progress
from cl.run import CONF_DIR
from tests.conftest import require

ROOT = CONF_DIR.parent
SWEEPS = ROOT / "sweeps"
SMALL = ["stream=split_digits", "debug=fast", "logger=none"]


def sweep(name: str, *overrides: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run a checked-in sweep file the way its header says, plus test overrides."""
    cmd = [sys.executable, "-m", "cl.run", "-m", "--config-dir", str(SWEEPS)]
    cmd += ["--config-name", name, "hydra.sweep.dir=sweep", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def compose_sweep(name: str, *overrides: str) -> DictConfig:
    """Compose a sweep file in-process, Hydra node included (as ``--config-dir sweeps``)."""
    register_configs()
    with initialize_config_dir(config_dir=str(SWEEPS), version_base="1.3"):
        return compose(
            config_name=name,
            overrides=[f"hydra.searchpath=[file://{CONF_DIR}]", *overrides],
            return_hydra_config=True,
        )


def results(sweep_dir: Path) -> list[dict]:
    return [json.loads(f.read_text()) for f in sorted(sweep_dir.glob("*/results.json"))]


def test_every_sweep_file_names_its_command():
    for f in sorted(SWEEPS.glob("*.yaml")):
        head = f.read_text().split("\n\n")[0]
        assert ("cl-run -m --config-dir sweeps --config-name " + f.stem) in head or (
            f"wandb sweep sweeps/{f.name}" in head
        ), f"{f} does not start with the command that runs it"


def test_compare_sweep_runs_jobs_in_parallel_with_joblib(tmp_path):
    require("hydra_plugins.hydra_joblib_launcher")
    p = sweep(
        "compare_split_fmnist",
        *SMALL,
        "strategy=naive,replay",
        "seed=0,1",
        "train.epochs=3",
        "hydra.launcher.n_jobs=2",
        cwd=tmp_path,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in p.stdout + p.stderr
    runs = results(tmp_path / "sweep")
    assert sorted((r["config"]["strategy"]["name"], r["run"]["seed"]) for r in runs) == [
        ("naive", 0),
        ("naive", 1),
        ("replay", 0),
        ("replay", 1),
    ]
    assert all(r["run"]["status"] == "complete" for r in runs)
    # Parallel: two worker processes, and some two jobs were running at the same time.
    jobs = read_progress(tmp_path / "sweep")["jobs"]
    assert len(jobs) == 4 and len({j["pid"] for j in jobs}) == 2
    overlaps = [
        (a["num"], b["num"])
        for a in jobs
        for b in jobs
        if a["num"] < b["num"] and a["start"] < b["end"] and b["start"] < a["end"]
    ]
    assert overlaps, jobs
    # The progress line counted every job, and the last one says all are done.
    lines = [s for s in p.stdout.splitlines() if s.startswith("[sweep]")]
    assert len(lines) == 5  # one per job end + the sweep's end
    assert lines[-1].startswith("[sweep] 4/4 jobs finished: 4 done, 0 running, 0 failed")


def test_failed_jobs_do_not_stop_the_sweep(tmp_path):
    # n_experiences=11 > 10 classes fails when the stream is built; lr=1e30 makes the loss
    # non-finite during training. The basic launcher runs the jobs one after another.
    p = sweep(
        "compare_split_fmnist",
        *SMALL,
        "hydra/launcher=basic",
        "strategy=naive",
        "seed=0",
        "stream.n_experiences=11,5",
        "train.optimizer=sgd",
        "train.lr=1e30,0.01",
        cwd=tmp_path,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    by_job = {
        (r["config"]["stream"]["n_experiences"], r["config"]["train"]["lr"]): r
        for r in results(tmp_path / "sweep")
    }
    assert len(by_job) == 4
    ok = by_job[(5, 0.01)]
    assert ok["run"]["status"] == "complete" and len(ok["acc_matrix"]) == 5
    nan = by_job[(5, 1e30)]
    assert nan["run"]["status"] == "partial" and "non-finite" in nan["run"]["error"]
    for lr in (1e30, 0.01):
        bad = by_job[(11, lr)]
        assert bad["run"]["status"] == "failed" and "exceeds 10 classes" in bad["run"]["error"]
    assert "[sweep] 4/4 jobs finished: 1 done, 0 running, 3 failed" in p.stdout


@pytest.mark.slow
def test_same_sweep_file_runs_through_submitit_local(tmp_path):
    require("hydra_plugins.hydra_submitit_launcher")
    p = sweep(
        "compare_split_fmnist",
        *SMALL,
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=5",
        "strategy=naive,replay",
        "seed=0",
        cwd=tmp_path,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    runs = results(tmp_path / "sweep")
    assert sorted(r["config"]["strategy"]["name"] for r in runs) == ["naive", "replay"]
    assert all(r["run"]["status"] == "complete" for r in runs)
    # submitit ran each job in its own process, not in the launching one.
    assert len({j["pid"] for j in read_progress(tmp_path / "sweep")["jobs"]}) == 2
    assert "[sweep] 2/2 jobs finished: 2 done" in p.stdout


@pytest.mark.parametrize(
    ("launcher", "target", "plugin"),
    [
        ("submitit_slurm", "SlurmLauncher", "hydra_plugins.hydra_submitit_launcher"),
        ("ray", "RayLauncher", "hydra_plugins.hydra_ray_launcher"),
    ],
)
def test_cluster_launchers_compose(launcher, target, plugin):
    if launcher == "ray":
        pytest.importorskip(plugin)  # the one optional plugin: `pip install -e .[ray]`
    else:
        require(plugin)
    cfg = compose_sweep("compare_split_fmnist", f"hydra/launcher={launcher}")
    assert cfg.hydra.launcher._target_.endswith(target)
    assert cfg.stream.name == "split_fmnist"
    assert dict(cfg.hydra.sweeper.params) == {
        "strategy": "naive,joint,ewc,lwf,replay",
        "seed": "0,1,2",
    }


def test_optuna_sweep_tunes_only_inside_its_window(tmp_path):
    require("hydra_plugins.hydra_optuna_sweeper")
    p = sweep("hpo_ewc_split_fmnist", *SMALL, "hydra.sweeper.n_trials=3", cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    best = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    assert set(best["best_params"]) == {"train.lr", "strategy.ewc_lambda"}
    trials = results(tmp_path / "sweep")
    assert len(trials) == 3
    assert best["best_value"] == pytest.approx(max(t["metrics"]["avg_acc"] for t in trials))

    from cl.streams import STREAMS, load_builtin_streams
    from cl.streams.vision import load_digits_arrays

    load_builtin_streams()

    xtr, ytr, _, _ = load_digits_arrays()
    trial_dirs = [f.parent for f in sorted((tmp_path / "sweep").glob("*/results.json"))]
    for t, trial_dir in zip(trials, trial_dirs, strict=True):
        # The window comes from the sweep file, not from this test's overrides.
        assert t["config"]["stream"]["max_experiences"] == 2
        assert t["config"]["stream"]["validation"] is True
        # Trained and evaluated on the first two experiences only.
        assert t["stream"]["n_experiences"] == 2
        assert t["stream"]["classes"] == [[0, 1], [2, 3]]
        assert len(t["acc_matrix"]) == 2 and all(len(row) == 2 for row in t["acc_matrix"])
        # Rebuild the stream exactly as the trial did: what it evaluated on is a held-out
        # part of those experiences' training data, never a test set.
        cfg = OmegaConf.load(trial_dir / ".hydra" / "config.yaml")
        entry = STREAMS.get(str(cfg.stream.name))
        stream_cfg = OmegaConf.to_object(OmegaConf.merge(entry.config_cls, cfg.stream))
        stream = entry.builder(stream_cfg)
        assert len(stream) == 2
        for exp in stream:
            val, train = exp.test, exp.train
            assert set(val.y.tolist()) <= set(exp.classes)
            original = xtr[torch.isin(ytr, torch.tensor(exp.classes))]
            # debug=fast subsampled the training data first; val + train partition it.
            assert len(val) + len(train) == min(200, len(original))
            orig_rows = Counter(r.numpy().tobytes() for r in original)
            split_rows = Counter(r.numpy().tobytes() for r in torch.cat([val.x, train.x]))
            assert split_rows <= orig_rows  # as multisets: each row drawn from training data
    assert "[sweep] 3/3 jobs finished" in p.stdout


WANDB_SPEC = SWEEPS / "wandb_ewc_split_fmnist.yaml"


def _agent_command(spec: dict, values: dict) -> list[str]:
    """The command ``wandb agent`` runs for one sampled configuration (its own macro code)."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args

    sweep_vars = create_sweep_command_args({"args": {k: {"value": v} for k, v in values.items()}})
    sweep_vars.update(interpreter=["python"], program=[spec["program"]], env=["/usr/bin/env"])
    out: list[str] = []
    for c in create_sweep_command(list(spec["command"])):
        c = str(c)
        out += sweep_vars.get(c[2:-1]) or [] if c.startswith("${") and c.endswith("}") else [c]
    return out


def _samples(spec: dict) -> list[dict]:
    """Edge values of every parameter: its bounds or each of its listed values."""
    lo, hi = {}, {}
    for k, p in spec["parameters"].items():
        if "value" in p:
            lo[k] = hi[k] = p["value"]
        elif "values" in p:
            lo[k], hi[k] = p["values"][0], p["values"][-1]
        else:
            lo[k], hi[k] = p["min"], p["max"]
    return [lo, hi]


def test_wandb_sweep_spec_drives_cl_run(tmp_path, make_cfg):
    spec = yaml.safe_load(WANDB_SPEC.read_text())
    assert spec["metric"]["name"] == "cl/avg_acc"
    for values in _samples(spec):
        cmd = _agent_command(spec, values)
        assert cmd[:2] == ["/usr/bin/env", "cl-run"]
        cfg = make_cfg(*cmd[2:])  # every key is a valid Hydra override of cl-run
        assert cfg.stream.validation is True and cfg.stream.max_experiences == 2
        for key, v in values.items():
            assert OmegaConf.select(cfg, key) == v
    # One agent job end to end (small data, W&B offline): the metric the sweep optimises is
    # in the run's W&B summary.
    cl_run = str(Path(sys.executable).with_name("cl-run"))
    cmd = [cl_run, *_agent_command(spec, _samples(spec)[0])[2:], "debug=fast"]
    cmd += ["stream=split_digits", "logger.wandb.enabled=true", "hydra.run.dir=run"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    p = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    from cl.logging.wandb_offline import offline_runs, read_offline_run

    (run,) = offline_runs(tmp_path / "run")
    summary = read_offline_run(run).summary
    r = json.loads((tmp_path / "run" / "results.json").read_text())
    assert summary[spec["metric"]["name"]] == r["metrics"]["avg_acc"]


@pytest.mark.parametrize("name", ["split_digits", "permuted_digits"])
def test_tuning_window_holds_out_training_data(name):
    from cl.streams import STREAMS, load_builtin_streams

    load_builtin_streams()
    entry = STREAMS.get(name)
    full = entry.builder(entry.config_cls(name=name))
    window = entry.builder(entry.config_cls(name=name, max_experiences=3, validation=True))
    assert len(full) == 5 and len(window) == 3
    for exp, ref in zip(window, full, strict=False):
        assert exp.classes == ref.classes
        # Validation (the new test data) and the remaining training data split the original
        # training data 20/80, by index: no sample of the test set, none twice.
        n = len(ref.train)
        assert len(exp.test) == round(0.2 * n) and len(exp.train) + len(exp.test) == n
        both = torch.cat([exp.train.x, exp.test.x]).flatten(1)
        assert Counter(map(bytes, both.numpy())) == Counter(
            map(bytes, ref.train.x.flatten(1).numpy())
        )
    # Off by default: the stream is exactly the one built before these options existed.
    same = entry.builder(entry.config_cls(name=name, validation=False))
    assert all(torch.equal(a.test.x, b.test.x) for a, b in zip(same, full, strict=True))
