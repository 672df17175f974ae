"""A run directory is never corrupted, and W&B failures never lose a run.

Covers the run-directory lock (two concurrent cl-run into one directory), unique checkpoint
temp files, resuming a finished run, overrides on resume, the W&B fallback (unwritable
directory, bad mode, no network) and a kill before the first checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from cl.checkpoint import LAST, save_checkpoint
from cl.logging.base import RunRecord
from cl.logging.files import temp_name
from cl.logging.wandb_offline import offline_runs, read_offline_run
from cl.logging.wandb_sink import WandbSink
from cl.run import KILL_AFTER_ENV, run_experiment
from cl.rundir import LOCK_NAME, RunDirError, apply_resume_overrides, run_dir_lock
from tests.conftest import compose_cfg

FAST = ("debug=fast", "device=cpu")


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", **extra}
    env.pop("WANDB_SERVICE", None)  # each cl-run starts its own W&B service, as from a shell
    return env


def cl_run(*args: str, cwd: Path, env_extra: dict[str, str] | None = None):
    return subprocess.run(
        [sys.executable, "-m", "cl.run", *args],
        cwd=cwd,
        env=_env(**(env_extra or {})),
        capture_output=True,
        text=True,
        timeout=300,
    )


def _popen(*args: str, cwd: Path) -> subprocess.Popen:
    env = _env()
    return subprocess.Popen(
        [sys.executable, "-m", "cl.run", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240.0) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < end, f"{path} did not appear"
        time.sleep(0.05)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def _no_traceback(text: str) -> None:
    assert "Traceback (most recent call last)" not in text


@pytest.mark.slow  # two cl-run processes: ~20 s on a quiet 2-core machine
def test_second_cl_run_into_a_directory_in_use_fails_and_the_first_completes_intact(tmp_path):
    run = tmp_path / "run"
    first = _popen(*FAST, "seed=1", "logger=none", "hydra.run.dir=run", cwd=tmp_path)
    try:
        _wait_for(run / "results.json", first)  # locked, config written, training started
        os.kill(first.pid, signal.SIGSTOP)  # hold it mid-run, deterministically
        before = _snapshot(run)
        second = cl_run(*FAST, "seed=2", "train.lr=0.5", "hydra.run.dir=run", cwd=tmp_path)
        # Resuming it is refused the same way (in-process: the same lock).
        with pytest.raises(RunDirError, match="in use by another cl-run"):
            run_experiment(compose_cfg([*FAST, "logger=none", f"resume={run}"]), run)
        after = _snapshot(run)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    _, err = first.communicate(timeout=240)
    assert second.returncode == 2
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: run directory"), second.stderr
    assert f"pid {first.pid}" in lines[0] and "in use by another cl-run" in lines[0]
    _no_traceback(second.stderr + second.stdout)
    assert after == before  # the second run touched nothing (config, log, results, lock)
    assert first.returncode == 0, err[-2000:]
    r = _results(run)
    assert r["run"]["status"] == "complete" and r["config"]["seed"] == 1
    assert len(r["acc_matrix"]) == 5
    assert OmegaConf.load(run / ".hydra" / "config.yaml").seed == 1
    assert OmegaConf.load(run / ".hydra" / "overrides.yaml") == [*FAST, "seed=1", "logger=none"]
    # A new run over a finished one is refused too; only the lock file names its last holder.
    done = _snapshot(run)
    with pytest.raises(RunDirError, match="already holds a run"):
        run_experiment(compose_cfg([*FAST, "logger=none"]), run)
    assert _snapshot(run) | {LOCK_NAME: b""} == done | {LOCK_NAME: b""}


def test_lock_is_exclusive_and_released_when_the_holder_ends(tmp_path):
    with run_dir_lock(tmp_path):
        assert f"pid {os.getpid()}" in (tmp_path / LOCK_NAME).read_text()
        with pytest.raises(RunDirError, match=f"pid {os.getpid()}"), run_dir_lock(tmp_path):
            pass
    with run_dir_lock(tmp_path):  # released: the next holder gets it at once
        pass
    (tmp_path / "file").write_text("")
    with (
        pytest.raises(RunDirError, match=r"cannot write to run directory .*Not a directory"),
        run_dir_lock(tmp_path / "file" / "run"),
    ):
        pass


def test_checkpoint_temp_files_are_unique_and_never_left_behind(tmp_path):
    folder = tmp_path / "checkpoints"
    a, b = temp_name(folder / LAST), temp_name(folder / LAST)
    assert a != b and f".{os.getpid()}." in a.name and a.parent == folder
    save_checkpoint(folder, {"next": 1, "w": torch.ones(3)}, index=0, keep_all=True)
    good = (folder / LAST).read_bytes()
    with pytest.raises(Exception, match=r"pickle|lambda"):
        save_checkpoint(folder, {"next": 2, "bad": lambda: 0}, index=1, keep_all=True)
    assert sorted(p.name for p in folder.iterdir()) == ["exp0.pt", LAST]  # no temp file left
    assert (folder / LAST).read_bytes() == good  # the last good checkpoint is intact
    save_checkpoint(folder, {"next": 2, "w": torch.zeros(3)}, index=1, keep_all=True)
    assert sorted(p.name for p in folder.iterdir()) == ["exp0.pt", "exp1.pt", LAST]
    assert torch.load(folder / "exp0.pt")["next"] == 1  # the per-experience link is its own


def _save_run_config(cfg, run_dir: Path) -> None:
    """What cl-run writes before a run starts: the composed config, for resume=."""
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")


def test_resuming_a_finished_run_says_so_and_changes_nothing(tmp_path, capsys):
    cfg = compose_cfg([*FAST, "logger=none", "logger.wandb.enabled=true"])
    run = tmp_path / "run"
    _save_run_config(cfg, run)
    first = run_experiment(cfg, run)
    assert first.status == "complete" and first.wandb_id
    capsys.readouterr()
    before = _snapshot(run)
    again = run_experiment(OmegaConf.merge(cfg, {"resume": str(run)}), run)
    out = capsys.readouterr().out
    assert "already complete; nothing to do" in out
    assert again.status == "complete" and again.acc_matrix == first.acc_matrix
    assert again.finished == first.finished and again.wandb_id == first.wandb_id
    assert _snapshot(run) == before  # no rewritten times or results, no second W&B run
    assert len(offline_runs(run)) == 1


def test_resume_overrides_apply_when_safe_and_are_refused_otherwise():
    saved = compose_cfg(["seed=1", "train.lr=0.05"])
    composed = compose_cfg(["resume=x", "seed=2", "train.lr=0.05", "device=cpu"])
    with pytest.raises(RunDirError) as e:
        apply_resume_overrides(saved, composed, ["resume=x", "seed=2", "train.lr=0.05"])
    msg = str(e.value)
    assert "seed=2" in msg and "train.lr" not in msg.split("(")[0]  # an unchanged value is fine
    assert "\n" not in msg and "device" in msg  # one line naming what is allowed
    for bad in (["debug=fast"], ["stream=permuted_digits"], ["model.hidden_sizes=[8]"]):
        with pytest.raises(RunDirError, match="would change it"):
            apply_resume_overrides(saved, compose_cfg(["resume=x", *bad]), ["resume=x", *bad])
    safe = [
        "resume=x",
        "device=cpu",
        "logger=console",
        "logger.wandb.mode=disabled",
        "train.eval_batch_size=7",
        "checkpoint.keep_all=true",
        "seed=1",
        "hydra.verbose=true",
    ]
    cfg, applied = apply_resume_overrides(saved, compose_cfg(safe[:-1]), safe)
    assert applied == safe[1:6]
    assert cfg.device == "cpu" and cfg.train.eval_batch_size == 7 and cfg.checkpoint.keep_all
    assert cfg.logger.wandb.enabled is False and cfg.logger.wandb.mode == "disabled"
    assert cfg.seed == 1 and cfg.train.lr == 0.05 and cfg.resume is None  # the rest is saved


def test_unwritable_wandb_dir_completes_with_the_error_recorded(tmp_path, capfd):
    run = tmp_path / "run"
    run.mkdir()
    (run / "wandb").write_text("a regular file: nothing can be created under it\n")
    cfg = compose_cfg([*FAST, "logger=none", "logger.wandb.enabled=true"])
    rec = run_experiment(cfg, run)
    err = capfd.readouterr().err
    r = _results(run)
    assert r["run"]["status"] == "complete" and rec.status == "complete"
    assert r["run"]["error"] is None and len(r["acc_matrix"]) == 5
    assert "Not a directory" in r["run"]["wandb_error"]
    warnings = [line for line in err.splitlines() if "W&B" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: W&B could not start")
    _no_traceback(err)
    # The next run in the same process (a multirun's next job) logs to W&B as usual.
    ok = tmp_path / "ok"
    rec2 = run_experiment(cfg, ok)
    (w,) = offline_runs(ok)
    assert rec2.wandb_error is None and read_offline_run(w).run_id == rec2.wandb_id


def test_wandb_with_a_bad_mode_warns_once_and_records_why(tmp_path, capfd):
    sink = WandbSink(
        run_dir=tmp_path,
        project="p",
        entity=None,
        group=None,
        tags=[],
        mode="bogus",
        log_every_n_steps=1,
    )
    rec = RunRecord(
        name="r",
        seed=0,
        device="cpu",
        started="t",
        config={},
        stream={},
        scenario="class_il",
        versions={},
    )
    sink.start(rec, resumed=False)
    for step in range(3):
        sink.step(step, 8, torch.tensor(1.0))
    sink.end_experience(rec)
    sink.finish(rec)
    assert rec.wandb_error is not None and "ValidationError" in rec.wandb_error
    assert "mode" in rec.wandb_error and "\n" not in rec.wandb_error
    err = capfd.readouterr().err
    assert len([line for line in err.splitlines() if line.startswith("warning: W&B")]) == 1
    _no_traceback(err)


# W&B reads its environment once per process: this case runs the sink in a fresh one.
NO_NETWORK = """
import sys, torch
from pathlib import Path
from cl.logging.base import RunRecord
from cl.logging.wandb_sink import WandbSink
rec = RunRecord(name="r", seed=0, device="cpu", started="t", config={}, stream={},
                scenario="class_il", versions={})
sink = WandbSink(run_dir=Path(sys.argv[1]), project="p", entity=None, group=None, tags=[],
                 mode="online", log_every_n_steps=1)
sink.start(rec, resumed=False)
for step in range(3):
    sink.step(step, 8, torch.tensor(1.0))
sink.finish(rec)
print(rec.wandb_error)
"""


def test_wandb_without_network_warns_once_and_records_why(tmp_path):
    no_network = {  # nothing listens on the discard port
        "WANDB_API_KEY": "x" * 40,
        "WANDB_BASE_URL": "http://127.0.0.1:9",
        "WANDB_INIT_TIMEOUT": "5",
    }
    p = subprocess.run(
        [sys.executable, "-c", NO_NETWORK, str(tmp_path)],
        env=_env(**no_network),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    (error,) = p.stdout.strip().splitlines()  # recorded, on one line
    assert "CommError" in error
    assert len([line for line in p.stderr.splitlines() if line.startswith("warning: W&B")]) == 1
    _no_traceback(p.stderr)


@pytest.mark.slow  # two cl-run processes with W&B: ~25 s on a quiet 2-core machine
def test_kill_before_first_checkpoint_resumes_into_the_same_wandb_run(tmp_path):
    args = [*FAST, "logger.wandb.enabled=true", "checkpoint.enabled=false", "seed=3"]
    killed = cl_run(*args, "hydra.run.dir=run", cwd=tmp_path, env_extra={KILL_AFTER_ENV: "0"})
    assert killed.returncode == -9  # SIGKILL after the first experience, no checkpoint
    run = tmp_path / "run"
    partial = _results(run)
    wandb_id = partial["run"]["wandb_id"]
    assert partial["run"]["status"] == "partial" and wandb_id
    assert not (run / "checkpoints").exists()
    # The dead run's lock does not block; a safe override applies, an equal value is accepted.
    resumed = cl_run(f"resume={run}", "train.eval_batch_size=64", "seed=3", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming with train.eval_batch_size=64" in resumed.stderr
    final = _results(run)
    assert final["run"]["wandb_error"] is None, final["run"]["wandb_error"]
    assert final["run"]["status"] == "complete" and final["run"]["wandb_id"] == wandb_id
    assert final["config"]["train"]["eval_batch_size"] == 64
    dirs = offline_runs(run)
    assert len(dirs) == 2 and all(d.name.endswith(wandb_id) for d in dirs)
    assert read_offline_run(dirs[-1]).summary["cl/avg_acc"] == final["metrics"]["avg_acc"]


def test_sigterm_records_the_error_and_keeps_what_finished(tmp_path):
    run = tmp_path / "run"
    proc = _popen("train.epochs=30", "device=cpu", "logger=none", "hydra.run.dir=run", cwd=tmp_path)
    _wait_for(run / "results.json", proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGTERM, err[-2000:]
    r = _results(run)
    assert r["run"]["status"] == "partial" and r["run"]["finished"]
    assert r["run"]["error"] == "Terminated: received SIGTERM"
