"""A progress line for a sweep as a whole: jobs done / running / failed.

A Hydra callback (``hydra.callbacks.progress._target_=cl.reports.progress.SweepProgress``).
Launchers such as joblib, submitit or Ray run jobs in other processes (or machines), so the
jobs share their state through small marker files in ``<sweep dir>/.progress/`` rather than
through memory; every job end prints the line, and the sweep's end prints the final one.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

PROGRESS_DIR = ".progress"


def _write(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)  # atomic: readers in other processes never see half a file


def sweep_size(config: DictConfig) -> int | None:
    """Number of jobs the sweep will launch, when it can be known up front."""
    sweeper = config.hydra.sweeper
    if "n_trials" in sweeper:  # Optuna and other samplers: a trial budget
        return int(sweeper.n_trials)
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = sweeper.get("params") or {}
    args = [f"{k}={v}" for k, v in params.items()] + list(config.hydra.overrides.task)
    try:
        parsed = OverridesParser.create().parse_overrides(args)
        sizes = {o.get_key_element(): 1 for o in parsed}
        for o in parsed:  # later overrides win, as in Hydra's basic sweeper
            key = o.get_key_element()
            sizes[key] = len(list(o.sweep_string_iterator())) if o.is_sweep_override() else 1
    except Exception:  # glob sweeps and the like need the config loader: unknown
        return None
    return math.prod(sizes.values())


def read_progress(sweep_dir: Path) -> dict[str, Any]:
    """Counts of the sweep's jobs: total (or None), done, running, failed, and the jobs."""
    folder = Path(sweep_dir) / PROGRESS_DIR
    jobs: list[dict[str, Any]] = []
    total = None
    if folder.is_dir():
        for f in sorted(folder.glob("job-*.json")):
            try:
                jobs.append(json.loads(f.read_text()))
            except (OSError, ValueError):
                continue
        meta = folder / "sweep.json"
        if meta.exists():
            total = json.loads(meta.read_text()).get("total")
    done = sum(j.get("status") == "complete" for j in jobs)
    failed = sum(j.get("status") == "failed" for j in jobs)
    running = sum(j.get("status") == "running" for j in jobs)
    return {"total": total, "done": done, "running": running, "failed": failed, "jobs": jobs}


def progress_line(sweep_dir: Path) -> str:
    p = read_progress(sweep_dir)
    of = f"/{p['total']}" if p["total"] is not None else ""
    return (
        f"[sweep] {p['done'] + p['failed']}{of} jobs finished: {p['done']} done, "
        f"{p['running']} running, {p['failed']} failed ({sweep_dir})"
    )


def _job_sweep_dir(config: DictConfig) -> tuple[Path, Path]:
    """(sweep dir, job dir) of a job; the sweep dir is the job dir less the sweep subdir."""
    out = Path(str(config.hydra.runtime.output_dir))
    depth = len(Path(str(config.hydra.sweep.subdir)).parts)
    return out.parents[depth - 1], out


def _is_multirun(config: DictConfig) -> bool:
    from hydra.types import RunMode

    return config.hydra.get("mode") == RunMode.MULTIRUN


class SweepProgress(Callback):
    """Prints ``[sweep] k/n jobs finished: d done, r running, f failed`` as jobs end."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        folder = Path(str(config.hydra.sweep.dir)) / PROGRESS_DIR
        folder.mkdir(parents=True, exist_ok=True)
        _write(folder / "sweep.json", {"total": sweep_size(config), "start": time.time()})

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not _is_multirun(config):
            return
        sweep_dir, job_dir = _job_sweep_dir(config)
        folder = sweep_dir / PROGRESS_DIR
        folder.mkdir(parents=True, exist_ok=True)
        num = int(config.hydra.job.num)
        _write(
            folder / f"job-{num:05d}.json",
            {
                "num": num,
                "dir": str(job_dir),
                "pid": os.getpid(),
                "host": os.uname().nodename,
                "start": time.time(),
                "status": "running",
                "overrides": list(config.hydra.overrides.task),
            },
        )

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if not _is_multirun(config):
            return
        from hydra.core.utils import JobStatus

        sweep_dir, job_dir = _job_sweep_dir(config)
        path = sweep_dir / PROGRESS_DIR / f"job-{int(config.hydra.job.num):05d}.json"
        try:
            entry = json.loads(path.read_text())
        except (OSError, ValueError):
            entry = {"num": int(config.hydra.job.num), "dir": str(job_dir)}
        ok = job_return.status == JobStatus.COMPLETED and _run_complete(job_dir)
        entry.update(end=time.time(), status="complete" if ok else "failed")
        _write(path, entry)
        print(progress_line(sweep_dir), flush=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        print(progress_line(Path(str(config.hydra.sweep.dir))), flush=True)


def _run_complete(job_dir: Path) -> bool:
    """A job succeeded when its results.json says complete (failed jobs return NaN)."""
    try:
        return json.loads((job_dir / "results.json").read_text())["run"]["status"] == "complete"
    except (OSError, ValueError, KeyError):
        return False
