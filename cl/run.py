"""The ``cl-run`` entry point: compose -> build -> train/evaluate loop -> sinks -> checkpoint."""

from __future__ import annotations

import contextlib
import os
import platform
import random
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterator, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from cl import distributed
from cl.budget import count_parameters, timer, warm_up
from cl.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from cl.config import (
    CONF_DIR,
    build,
    default_run_name,
    load_run_config,
    now_iso,
    register_configs,
)
from cl.determinism import deterministic_mode
from cl.errors import CLError, ConfigError, NonFiniteLossError
from cl.evaluate import evaluate_row, primary, protocol
from cl.evaluate_lm import extra_rows
from cl.logging.base import RunRecord, Sink
from cl.logging.console import ConsoleSink
from cl.logging.files import FileSink
from cl.rundir import (
    RunDirError,
    apply_resume_overrides,
    check_fresh,
    run_dir_lock,
    write_hydra_files,
)

# Testing hooks: SIGKILL the process right after experience N (0-based) is checkpointed, or at
# training step K (1-based) of experience N ("N:K"); a ":raise" suffix raises KeyboardInterrupt
# instead, for in-process tests (see cl.testing).
KILL_AFTER_ENV = "CL_KILL_AFTER_EXPERIENCE"
KILL_AT_STEP_ENV = "CL_KILL_AT_STEP"
# In a distributed run, only this rank is killed by the hooks above (default: every rank).
KILL_RANK_ENV = "CL_KILL_RANK"


def _simulated_kill(where: str, spec: str) -> None:
    only = os.environ.get(KILL_RANK_ENV)
    if only is not None and int(only) != distributed.current(torch.device("cpu")).rank:
        return
    if spec.endswith(":raise"):
        raise KeyboardInterrupt(f"simulated kill {where}")
    os.kill(os.getpid(), signal.SIGKILL)


def _kill_hook(i: int, on_step: Any) -> Any:
    """``on_step`` wrapped to die at the step named by ``CL_KILL_AT_STEP`` (testing only)."""
    spec = os.environ.get(KILL_AT_STEP_ENV, "")
    parts = spec.split(":")
    if len(parts) < 2 or parts[0] != str(i):
        return on_step
    at = int(parts[1])

    def step(n: int, size: int, loss: Any) -> None:
        on_step(n, size, loss)
        if n == at:
            _simulated_kill(f"at step {n} of experience {i}", spec)

    return step


def _versions(cfg: DictConfig | None = None) -> dict[str, str]:
    """Package versions, the user's plugin packages (version, git commit), and the host's
    cores and torch threads (reports warn when parallel jobs shared them)."""
    from cl.plugins import plugin_versions

    out = {"python": platform.python_version()}
    for pkg in ("cl-platform", "torch", "torchvision", "avalanche-lib", "hydra-core", "wandb"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[pkg] = metadata.version(pkg)
    out.update(plugin_versions(cfg))
    out.update(host=platform.node(), cpu_count=str(os.cpu_count() or ""))
    out["torch_threads"] = str(torch.get_num_threads())
    return out


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def experience_seed(seed: int, index: int) -> int:
    """Seed of experience ``index``: training randomness does not depend on earlier RNG use."""
    return (seed * 7919 + index * 104_729 + 1) % 2**31


def make_sinks(cfg: DictConfig, run_dir: Path, record: RunRecord) -> list[Sink]:
    """The run's sinks; the file sink comes last, so it writes what the others added."""
    sinks: list[Sink] = []
    if cfg.logger.console:
        sinks.append(ConsoleSink())
    wb = cfg.logger.wandb
    if wb.enabled:
        from cl.logging.wandb_sink import WandbSink, new_run_id

        sink = WandbSink(
            run_dir=run_dir,
            project=wb.project,
            entity=wb.entity,
            group=wb.group,
            tags=list(wb.tags),
            mode=wb.mode,
            log_every_n_steps=wb.log_every_n_steps,
        )
        if record.wandb_id is None and sink.mode != "disabled":
            # Known before W&B starts, so results.json names it from the first write and a
            # run killed before its first checkpoint resumes into the same W&B run.
            record.wandb_id = new_run_id()
        sinks.append(sink)
    sinks.append(FileSink(run_dir))
    return sinks


class _Fanout:
    """Calls every sink in turn; one sink's failure does not keep the later ones from running."""

    def __init__(self, sinks: list[Sink]) -> None:
        self.sinks = sinks

    def __getattr__(self, name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> None:
            failure: Exception | None = None
            for s in self.sinks:
                try:
                    getattr(s, name)(*args, **kwargs)
                except Exception as e:
                    failure = failure or e
            if failure is not None:
                raise failure

        return call


class Terminated(BaseException):
    """SIGTERM arrived: the run stops like an interrupted one and keeps what it finished."""


@contextlib.contextmanager
def _sigterm_records() -> Iterator[None]:
    """Turn SIGTERM into :class:`Terminated` so the run records its error, then die of it.

    Only where nobody else handles SIGTERM (a launcher may), and only in the main thread.
    """
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    ):
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Terminated("received SIGTERM")

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    except Terminated:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)  # exit status: killed by SIGTERM, as before
        raise
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def run_experiment(
    cfg: DictConfig,
    run_dir: Path,
    *,
    overrides: Sequence[str] = (),
    hydra_files: Mapping[str, Any] | None = None,
) -> RunRecord:
    """Run (or resume) one experiment in ``run_dir`` and return its record.

    The run holds the directory's lock throughout: a second run aimed at it fails at once
    and leaves every file alone.

    Args:
        cfg: The composed config. With ``resume`` set, the run in that directory continues
            from its last checkpoint with its saved config.
        run_dir: Where a new run writes (a resumed run writes into ``cfg.resume``).
        overrides: The user's command-line overrides: on resume, those listed in
            ``cl.rundir.SAFE_ON_RESUME`` apply and any other that changes a value is refused.
        hydra_files: Composed-config files written to ``.hydra/`` of a new run under the lock.

    Raises:
        RunDirError: The directory is in use, a new run would overwrite an earlier one, or
            an override cannot change on resume.
    """
    info = distributed.current(torch.device("cpu"))
    resume = cfg.get("resume")
    saved = None
    if resume:
        run_dir = Path(str(resume))
    with contextlib.ExitStack() as stack:
        error: CLError | None = None
        try:  # rank 0 alone holds the lock and writes; every rank learns whether it could
            if resume:
                saved = load_run_config(run_dir)
            if info.is_main:
                stack.enter_context(run_dir_lock(run_dir))
                if saved is None:
                    check_fresh(run_dir)
                    if hydra_files:
                        write_hydra_files(run_dir, hydra_files)
        except CLError as e:
            error = e
        distributed.agree(error, info)
        stack.enter_context(_sigterm_records())
        if saved is None:
            return _run(cfg, run_dir, None, resumed=False)
        cfg, applied = apply_resume_overrides(saved, cfg, overrides)
        finished = _finished_record(run_dir)
        if finished is not None:
            if info.is_main:
                print(f"run {finished.name} in {run_dir} is already complete; nothing to do")
            return finished
        if applied and info.is_main:
            print(f"resuming with {' '.join(applied)}", file=sys.stderr)
        return _run(cfg, run_dir, load_checkpoint(run_dir / "checkpoints"), resumed=True)


def _run(
    cfg: DictConfig, run_dir: Path, checkpoint: dict[str, Any] | None, *, resumed: bool
) -> RunRecord:
    with deterministic_mode(bool(cfg.get("deterministic", False))):
        return _run_body(cfg, run_dir, checkpoint, resumed=resumed)


def _run_body(
    cfg: DictConfig, run_dir: Path, checkpoint: dict[str, Any] | None, *, resumed: bool
) -> RunRecord:
    t_start = time.perf_counter()
    seed = int(cfg.seed)
    seed_all(seed)
    built = build(cfg)
    stream, strategy = built.stream, built.strategy
    n_exp = len(stream)

    if checkpoint is not None:
        record = RunRecord.from_state(checkpoint["record"])
        record.status = "partial"
        record.evaluation = record.evaluation or protocol(strategy, stream.scenario)
        strategy.load_state_dict(checkpoint["strategy"])
        strategy.load_optimizer_state(checkpoint.get("optimizer"))
        set_rng_state(checkpoint["rng"])
        start = int(checkpoint["next"])
    else:
        record = RunRecord(
            name=default_run_name(cfg),
            seed=seed,
            device=str(built.context.device),
            started=now_iso(),
            config=OmegaConf.to_container(cfg, resolve=True),  # type: ignore[arg-type]
            stream={
                "name": stream.name,
                "scenario": stream.scenario,
                "n_experiences": n_exp,
                "n_classes": stream.n_classes,
                "classes": stream.classes,
                "has_task_ids": stream.has_task_ids,
                # Text-to-text streams name each task and its metric.
                **(
                    {k: stream.extra[k] for k in ("tasks", "task_metrics")}
                    if "task_metrics" in stream.extra
                    else {}
                ),
            },
            scenario=stream.scenario,
            versions=_versions(cfg),
            evaluation=protocol(strategy, stream.scenario),
        )
        if resumed:  # died before its first checkpoint: keep the W&B run going
            record.wandb_id = _previous_wandb_id(run_dir)
        start = 0
    warm_up(built.context.device)  # draws no random numbers: every RNG stream is unchanged
    record.budget.startup_seconds += time.perf_counter() - t_start

    info = built.context.dist
    record.world_size, record.backend = info.world_size, info.backend
    # Only rank 0 writes (files, console, W&B); the other ranks train and evaluate their shards.
    out = _Fanout(make_sinks(cfg, run_dir, record) if info.is_main else [])
    try:
        out.start(record, resumed=checkpoint is not None)
        if start == 0:
            with timer(built.context.device) as t:
                agn, aware = evaluate_row(
                    strategy, stream, trained_upto=-1, batch_size=built.train.eval_batch_size
                )
                extra = extra_rows(strategy, stream, batch_size=built.train.eval_batch_size)
            record.baseline = primary(stream.scenario, agn, aware)
            record.baseline_task_aware = aware
            record.add_rows(extra, baseline=True)
            record.budget.eval_seconds += t[0]
        for i in range(start, n_exp):
            _train_one(cfg, run_dir, record, built, i, out)
        record.status = "complete"
    except NonFiniteLossError as e:
        record.error = str(e)
        raise
    except BaseException as e:
        record.error = f"{type(e).__name__}: {e}"
        raise
    finally:
        record.finished = now_iso()
        if record.status != "complete":
            record.status = "partial"
        out.finish(record)
    return record


def _finished_record(run_dir: Path) -> RunRecord | None:
    """The record of a run whose results.json says it is complete, else None."""
    import json

    try:
        results = json.loads((run_dir / "results.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(results, dict) or results.get("run", {}).get("status") != "complete":
        return None
    return RunRecord.from_results(results)


def _previous_wandb_id(run_dir: Path) -> str | None:
    import json

    try:
        return json.loads((run_dir / "results.json").read_text())["run"].get("wandb_id")
    except (OSError, ValueError, KeyError):
        return None


def _train_one(
    cfg: DictConfig, run_dir: Path, record: RunRecord, built: Any, i: int, out: Any
) -> None:
    stream, strategy, device = built.stream, built.strategy, built.context.device
    exp = stream[i]
    es = experience_seed(record.seed, i)
    random.seed(es)
    np.random.seed(es)
    torch.manual_seed(es)
    n_train = len(exp.train)
    out.start_experience(i, built.train.epochs * -(-n_train // built.train.batch_size))
    with timer(device) as t_train:
        stats = strategy.train_experience(exp, on_step=_kill_hook(i, out.step))
    with timer(device) as t_eval:
        agn, aware = evaluate_row(
            strategy, stream, trained_upto=i, batch_size=built.train.eval_batch_size
        )
        extra = extra_rows(strategy, stream, batch_size=built.train.eval_batch_size)
    row = primary(stream.scenario, agn, aware)
    record.acc_matrix.append(row)
    record.add_rows(extra)
    if aware is not None:
        record.acc_matrix_task_aware = (record.acc_matrix_task_aware or []) + [aware]
    b = record.budget
    b.add_train(t_train[0], stats.samples)
    b.eval_seconds += t_eval[0]
    b.trainable_params = max(b.trainable_params, stats.trainable_params)
    b.extra_state_bytes = int(strategy.extra_state_bytes())
    b.update_memory(device)
    record.per_experience.append(
        {
            "index": i,
            "train_seconds": t_train[0],
            "eval_seconds": t_eval[0],
            "final_loss": stats.final_loss,
            "steps": stats.steps,
            "samples": stats.samples,
            "trainable_params": stats.trainable_params,
            "extra_state_bytes": b.extra_state_bytes,
            "model_params": count_parameters(built.model.parameters()),
            "metrics": record.metrics(),
        }
    )
    if cfg.checkpoint.enabled and built.context.dist.is_main:
        save_checkpoint(
            run_dir / "checkpoints",
            {
                "next": i + 1,
                "strategy": strategy.state_dict(),
                "optimizer": strategy.optimizer_state(),
                "record": record.state(),
                "rng": rng_state(),
            },
            index=i,
            keep_all=bool(cfg.checkpoint.keep_all),
        )
    out.end_experience(record)
    kill_after = os.environ.get(KILL_AFTER_ENV, "")
    if kill_after.split(":")[0] == str(i):
        _simulated_kill(f"after experience {i}", kill_after)


def _hydra_entry(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    # Hydra does not write .hydra/ itself (hydra.output_subdir is null): the run writes it
    # under the directory's lock, so a second cl-run aimed at a directory in use cannot
    # overwrite the first run's config. The same three files Hydra would write.
    hydra_files = {
        "config.yaml": cfg,
        "hydra.yaml": HydraConfig.instance().cfg,
        "overrides.yaml": hc.overrides.task,
    }
    overrides = [str(o) for o in hc.overrides.task]
    joined = False
    try:
        _, joined = distributed.init_for_job()  # a submitit SLURM job of several tasks
        record = run_experiment(cfg, run_dir, overrides=overrides, hydra_files=hydra_files)
    except CLError as e:
        if distributed.current(torch.device("cpu")).is_main:
            print(f"error: {e}", file=sys.stderr)
        if multirun:
            return _job_failed(cfg, run_dir, e)
        sys.exit(e.exit_code)
    except Exception as e:
        if not multirun:
            raise
        traceback.print_exc()
        return _job_failed(cfg, run_dir, e)
    finally:
        if joined:
            distributed.shutdown()
    value = record.metrics()["avg_acc"]
    return None if value is None else float(value)


def _job_failed(cfg: DictConfig, run_dir: Path, e: Exception) -> float:
    """A failed sweep job: keep the sweep going, leave a results.json that says why.

    Failures during training already left a partial results.json with the error; a job that
    failed before (bad config value, missing data) gets a minimal one with status "failed",
    unless the directory belongs to another run. NaN tells the Optuna sweeper the trial failed.
    """
    if not distributed.current(torch.device("cpu")).is_main:
        return float("nan")  # rank 0 records it
    if not isinstance(e, RunDirError) and not (run_dir / "results.json").exists():
        try:
            config = OmegaConf.to_container(cfg, resolve=True)
        except Exception:  # an interpolation may be what failed
            config = OmegaConf.to_container(cfg, resolve=False)
        record = RunRecord(
            name=default_run_name(cfg),
            seed=int(cfg.seed),
            device=str(cfg.device),
            started=now_iso(),
            config=config,  # type: ignore[arg-type]
            stream={"name": str(cfg.stream.name), "scenario": cfg.stream.get("scenario")},
            scenario=str(cfg.stream.get("scenario")),
            versions=_versions(cfg),
            status="failed",
            finished=now_iso(),
            error=f"{type(e).__name__}: {e}",
        )
        run_dir.mkdir(parents=True, exist_ok=True)
        FileSink(run_dir).finish(record)
    return float("nan")


def cli(argv: list[str] | None = None) -> int:
    """``cl-run`` on ``argv`` (default: the command line) in this process; the exit code.

    The command line is checked before Hydra starts (:func:`cl.preflight.preflight`), so a bad
    input is one ``error:`` line, exit code 2, and creates no run directory.
    """
    from cl.plugins import prepare_overrides
    from cl.preflight import preflight

    argv = sys.argv[1:] if argv is None else list(argv)
    given = list(argv)
    info = distributed.SINGLE
    nproc = 1
    try:
        info = distributed.init_from_env()
        error: CLError | None = None
        try:
            argv = prepare_overrides(argv)  # plugins first: their schemas and conf/ folders
            preflight(argv)
            nproc = distributed.requested_procs(argv)
        except CLError as e:
            error = e
        distributed.agree(error, info)  # a problem of one rank stops all; rank 0 says it
        if nproc > 1 and not info.enabled:  # dist.nproc_per_node=N: start N processes
            return distributed.launch(given, nproc)
        argv = _distributed_argv(argv, info)
    except CLError as e:
        if info.is_main:  # every rank found the same problem: rank 0 says it
            print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    try:
        return _cli_hydra(argv)
    finally:
        if info.enabled:
            distributed.shutdown()


def _distributed_argv(argv: list[str], info: distributed.DistInfo) -> list[str]:
    """Every rank of a distributed run gets rank 0's run directory (its timestamp)."""
    if not info.enabled:
        return argv
    if any(a in ("-m", "--multirun") or a.startswith("--multirun") for a in argv):
        raise ConfigError(
            "a distributed run (WORLD_SIZE > 1) runs one job; start sweeps without torchrun"
        )
    if not info.is_main:  # Hydra's job log file is rank 0's too; other ranks log to stdout
        argv = [*argv, "hydra/job_logging=stdout"]
    if any(a.startswith(("hydra.run.dir=", "+hydra.run.dir=")) for a in argv):
        return argv
    import datetime as dt

    stamp = distributed.broadcast(dt.datetime.now().strftime("%Y-%m-%d/%H-%M-%S"), info)
    return [*argv, f"hydra.run.dir='${{cl_run_dir:${{resume}},outputs/{stamp}}}'"]


def _cli_hydra(argv: list[str]) -> int:
    import hydra

    register_configs()
    entry = hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")(
        _hydra_entry
    )
    saved = sys.argv
    sys.argv = [saved[0] if saved else "cl-run", *argv]
    try:
        entry()
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        print(e.code, file=sys.stderr)
        return 1
    finally:
        sys.argv = saved
    return 0


def main() -> None:
    """Console script ``cl-run``."""
    sys.exit(cli())


if __name__ == "__main__":
    main()
