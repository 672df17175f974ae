"""Runs as reports see them: loaded from ``results.json`` files, or from a W&B project online.

A run is one Hydra job. Its ``results.json`` (written by the file sink, see ``cl/logging``)
is the source of truth; its ``.hydra/overrides.yaml`` says how it was launched.
"""

from __future__ import annotations

import glob
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cl.errors import CLError, reason
from cl.metrics import METRICS, evaluation_protocol, undefined_metrics

__all__ = ["METRICS", "Run", "find_results", "load_runs", "load_wandb_runs", "run_from_results"]


@dataclass
class Run:
    """One run's results, whatever it was read from.

    Attributes:
        source: Where it was read from (a results.json path or a W&B run path).
        name: Run name.
        stream: Stream name.
        strategy: Strategy name.
        seed: Run seed.
        status: ``complete``, ``partial`` (died or still running) or ``failed`` (died
            before its first experience).
        error: The error that stopped it, if any.
        metrics: Final metrics (``avg_acc``, ``forgetting``, ...).
        acc_matrix: R[i][j], accuracy on experience j after training on experience i.
        budget: The budget ledger (``extra_state_bytes``, ``train_seconds``, ...).
        per_experience: One record per trained experience (``train_seconds``, ...).
        config: The resolved config.
        versions: Package versions.
        device: Device it ran on.
        started: Start time (ISO).
        finished: End time (ISO).
        overrides: Command-line overrides of its job.
        evaluation: ``task_agnostic`` or ``task_aware``: the protocol of ``acc_matrix`` and
            ``metrics`` (runs of different protocols are never ranked together).
        undefined: Metrics that are null under the protocol -> the reason.
    """

    source: str
    name: str
    stream: str
    strategy: str
    seed: int | None
    status: str
    error: str | None = None
    metrics: dict[str, float | None] = field(default_factory=dict)
    acc_matrix: list[list[float]] = field(default_factory=list)
    budget: dict[str, Any] = field(default_factory=dict)
    per_experience: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    device: str | None = None
    started: str | None = None
    finished: str | None = None
    overrides: list[str] = field(default_factory=list)
    evaluation: str = "task_agnostic"
    undefined: dict[str, str] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return self.status == "complete"

    @property
    def failed(self) -> bool:
        """Failed: never got going, or stopped by an error (a partial run without an error
        may still be running, or was killed: it is reported as incomplete)."""
        return self.status == "failed" or (not self.complete and bool(self.error))

    @property
    def state(self) -> str:
        if self.complete:
            return "complete"
        return "failed" if self.failed else "incomplete"


def find_results(paths: list[str]) -> list[Path]:
    """``results.json`` files under the given files, directories or glob patterns."""
    found: list[Path] = []
    for spec in paths:
        literal = not glob.has_magic(spec)  # a glob may also match other files of a sweep
        matches = [spec] if literal else sorted(glob.glob(spec))
        if not matches:
            print(f"warning: no run matches {spec}", file=sys.stderr)
        for p in map(Path, matches):
            if p.is_dir():
                found.extend(sorted(f for f in p.rglob("results.json") if f.is_file()))
            elif p.is_file() and (p.name == "results.json" or (literal and p.suffix == ".json")):
                found.append(p)
            elif literal and not p.exists():
                raise CLError(f"no such run, sweep or results file: {spec}")
            elif literal:
                raise CLError(f"{spec} is neither a run or sweep directory nor a results .json")
    seen: set[Path] = set()
    unique = []
    for f in found:  # overlapping paths name the same run once
        if f.resolve() not in seen:
            seen.add(f.resolve())
            unique.append(f)
    return unique


def _overrides(run_dir: Path) -> list[str]:
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.exists():
        return []
    from omegaconf import OmegaConf

    return [str(o) for o in OmegaConf.load(path)]


def stream_label(name: str | None, stream_cfg: dict[str, Any]) -> str:
    """The stream's name; a tuning window (validation split, first k experiences) is named
    apart so its validation numbers are never mixed with test numbers of the full stream."""
    label = str(name or stream_cfg.get("name"))
    k = stream_cfg.get("max_experiences")
    if stream_cfg.get("validation"):
        label += " (validation" + (f", first {k} experiences)" if k else ")")
    elif k:
        label += f" (first {k} experiences)"
    return label


def protocol_of(data: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """The evaluation protocol of a ``results.json`` and its undefined metrics.

    Files written before the protocol was recorded: task_aware on task_il streams, else
    task_agnostic, with the metrics undefined under it (fwt in class_il) left out.
    """
    stream = data.get("stream") or {}
    scenario = str(
        stream.get("scenario") or (data.get("config") or {}).get("stream", {}).get("scenario")
    )
    evaluation = data.get("evaluation") or stream.get("evaluation")
    if evaluation is None:
        evaluation = evaluation_protocol(scenario, task_ids_at_test=False)
    undefined = data.get("metrics_undefined")
    if undefined is None:
        undefined = undefined_metrics(scenario, str(evaluation))
    return str(evaluation), dict(undefined)


def run_from_results(data: dict[str, Any], source: str, overrides: list[str]) -> Run:
    """Build a :class:`Run` from the parsed contents of a ``results.json``."""
    info = data.get("run", {})
    config = data.get("config") or {}
    evaluation, undefined = protocol_of(data)
    metrics = dict(data.get("metrics") or {})
    metrics.update(dict.fromkeys(undefined))
    return Run(
        source=source,
        name=str(info.get("name", "?")),
        stream=stream_label(data.get("stream", {}).get("name"), config.get("stream", {})),
        strategy=str(config.get("strategy", {}).get("name", "?")),
        seed=info.get("seed"),
        status=str(info.get("status", "partial")),
        error=info.get("error"),
        metrics=metrics,
        acc_matrix=list(data.get("acc_matrix") or []),
        budget=dict(data.get("budget") or {}),
        per_experience=list(data.get("per_experience") or []),
        config=config,
        versions=dict(info.get("versions") or {}),
        device=info.get("device"),
        started=info.get("started"),
        finished=info.get("finished"),
        overrides=overrides,
        evaluation=evaluation,
        undefined=undefined,
    )


def load_runs(paths: list[str]) -> list[Run]:
    """Every run whose ``results.json`` is under ``paths`` (unreadable files are skipped), and
    as failed runs the run directories that have a ``.hydra/config.yaml`` but no results."""
    runs = []
    for f in find_results(paths):
        try:
            data = json.loads(f.read_text())
            check_results(data)
            runs.append(run_from_results(data, str(f), _overrides(f.parent)))
        except (OSError, ValueError, TypeError, AttributeError) as e:
            print(f"warning: skipping {f}: {reason(e)}", file=sys.stderr)
    return runs + _runs_without_results(paths)


def _runs_without_results(paths: list[str]) -> list[Run]:
    from cl.results import run_dirs, saved_config

    dirs = [p for spec in paths for p in (glob.glob(spec) if glob.has_magic(spec) else [spec])]
    out = []
    for d in run_dirs([p for p in dirs if Path(p).is_dir()]):
        if (d / "results.json").exists():
            continue
        config = saved_config(d)
        data = {"run": {"seed": config.get("seed"), "status": "failed"}, "config": config}
        data["run"]["error"] = "no results.json: the run died before writing it"
        data["run"]["name"] = config.get("name") or d.name
        data["stream"] = {"name": (config.get("stream") or {}).get("name")}
        out.append(run_from_results(data, str(d), _overrides(d)))
    return out


def check_results(data: Any) -> None:
    """Raise ``ValueError`` unless ``data`` has the shape of a cl-run ``results.json``."""
    if not isinstance(data, dict):
        raise ValueError(f"not a cl-run results.json (a JSON {type(data).__name__})")
    kinds = {"run": dict, "config": dict, "stream": dict, "metrics": dict, "budget": dict}
    for key, kind in {**kinds, "acc_matrix": list, "per_experience": list}.items():
        if data.get(key) is not None and not isinstance(data[key], kind):
            raise ValueError(f"'{key}' must be a JSON {kind.__name__}")
    if not isinstance(data.get("run"), dict):
        raise ValueError("not a cl-run results.json (no 'run' record)")
    number = (int, float)
    for row in data.get("acc_matrix") or []:
        if not isinstance(row, list) or not all(isinstance(v, number) for v in row):
            raise ValueError("'acc_matrix' must be a list of rows of numbers")
    for part in ("metrics", "budget"):
        for name, value in (data.get(part) or {}).items():
            if value is not None and not isinstance(value, number):
                raise ValueError(f"{part} {name!r} must be a number or null, got {value!r}")
    for rec in data.get("per_experience") or []:
        if not isinstance(rec, dict) or not isinstance(rec.get("train_seconds", 0), number):
            raise ValueError("'per_experience' must be a list of records with numeric times")


def load_wandb_runs(
    project: str, entity: str | None = None, filters: dict[str, Any] | None = None
) -> list[Run]:
    """Runs of a W&B project (needs network and an API key).

    The final metrics and budget come from each run's summary, the accuracy matrix and the
    per-experience times from its history rows (one per experience, see the W&B sink).
    """
    import wandb

    path = f"{entity}/{project}" if entity else project
    runs = []
    for wr in wandb.Api().runs(path, filters=filters or {}):
        summary = dict(wr.summary)
        rows = [
            h for h in wr.scan_history() if h.get("experience") is not None and "eval/acc_exp0" in h
        ]
        rows.sort(key=lambda h: h["experience"])
        t = len([k for k in rows[0] if k.startswith("eval/acc_exp")]) if rows else 0
        status = summary.get("status") or ("complete" if wr.state == "finished" else "partial")
        scenario = str(wr.config.get("stream", {}).get("scenario"))
        evaluation = str(
            summary.get("evaluation") or evaluation_protocol(scenario, task_ids_at_test=False)
        )
        undefined = {
            k.split("/", 1)[1]: str(v) for k, v in summary.items() if k.startswith("undefined/")
        } or undefined_metrics(scenario, evaluation)
        runs.append(
            Run(
                source=f"wandb:{'/'.join(wr.path)}",
                name=wr.name,
                stream=stream_label(None, dict(wr.config.get("stream", {}))),
                strategy=str(wr.config.get("strategy", {}).get("name", "?")),
                seed=wr.config.get("seed"),
                status=str(status),
                error=None if wr.state in ("finished", "running") else f"W&B state {wr.state}",
                metrics={m: None if m in undefined else summary.get(f"cl/{m}") for m in METRICS},
                acc_matrix=[[float(h[f"eval/acc_exp{j}"]) for j in range(t)] for h in rows],
                budget={
                    k.split("/", 1)[1]: v for k, v in summary.items() if k.startswith("budget/")
                },
                per_experience=[
                    {"index": i, "train_seconds": h.get("budget/train_seconds")}
                    for i, h in enumerate(rows)
                ],
                config=dict(wr.config),
                device=None,
                started=str(wr.created_at),
                evaluation=evaluation,
                undefined=undefined,
            )
        )
    return runs
