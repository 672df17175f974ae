"""Runs and sweeps as a pandas DataFrame: one row per run, and aggregates over seeds.

Example::

    from cl import results

    df = results.load("multirun/2026-12-01/10-00-00")   # a sweep; or run dirs, globs, a list
    df[["strategy", "seed", "status", "avg_acc", "task_aware/avg_acc"]]
    results.aggregate(df, by=["strategy", "config.strategy.ewc_lambda"])

Columns of :func:`load`:

- ``run_dir``, ``name``, ``status`` (``complete``; ``partial``: died or still running, keeps
  what it finished; ``failed``: stopped before its first experience, or a run directory with
  a ``.hydra/`` config but no ``results.json``; ``unreadable``), ``error``;
- ``evaluation`` (the protocol of the metrics: ``task_agnostic`` or ``task_aware``),
  ``stream``, ``scenario``, ``strategy``, ``model``, ``seed``, ``device``, ``started``,
  ``finished``, ``overrides`` (the job's command-line overrides, one string);
- every metric (``avg_acc``, ``avg_incremental_acc``, ``forgetting``, ``bwt``, ``fwt``; NaN
  when undefined under the protocol, the reason in ``metrics_undefined``), the task-aware ones
  as ``task_aware/<metric>`` (streams with task ids), the ledger as ``budget/<key>``;
- the config, flattened: ``config.<dotted key>`` (``config.train.lr``,
  ``config.strategy.ewc_lambda``; lists as tuples);
- object columns: ``acc_matrix``, ``acc_matrix_task_aware``, ``baseline_acc``,
  ``per_experience``, ``metrics_undefined``.
"""

from __future__ import annotations

import glob
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cl.metrics import METRICS

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "METRIC_COLUMNS",
    "aggregate",
    "load",
    "metric_columns",
    "run_dirs",
    "saved_config",
]

# The final metrics, task-agnostic (or the run's protocol) and task-aware.
METRIC_COLUMNS = (*METRICS, *(f"task_aware/{m}" for m in METRICS))
# Config keys that differ between runs without making them different configurations.
_NOT_A_SETTING = ("config.seed", "config.name", "config.resume", "config.device")


def run_dirs(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    """The run directories under ``paths`` (run dirs, sweep dirs, ``results.json`` files, globs).

    A run directory holds a ``results.json`` or a ``.hydra/config.yaml`` (a run that died
    before writing results).

    Raises:
        FileNotFoundError: A literal path does not exist.
    """
    specs = [paths] if isinstance(paths, str | Path) else list(paths)
    found: dict[Path, None] = {}
    for spec in map(str, specs):
        matches = sorted(glob.glob(spec)) if glob.has_magic(spec) else [spec]
        for p in map(Path, matches):
            if not p.exists():
                raise FileNotFoundError(f"no such run, sweep or results file: {p}")
            if p.is_file():
                found[p.parent.resolve()] = None
                continue
            markers = [*p.rglob("results.json"), *p.rglob(".hydra/config.yaml")]
            for m in sorted(markers):
                d = m.parent if m.name == "results.json" else m.parent.parent
                found[d.resolve()] = None
    return sorted(found)


def load(paths: str | Path | Iterable[str | Path]) -> pd.DataFrame:
    """One row per run under ``paths`` (see the module docstring for the columns).

    Args:
        paths: A run directory, a sweep (multirun) directory, a ``results.json``, a glob, or
            a list of them.

    Returns:
        The runs, in path order; failed and partial runs are rows too, marked by ``status``.
    """
    import pandas as pd

    rows = [_row(d) for d in run_dirs(paths)]
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=["run_dir", "name", "status", "evaluation", *METRICS])
    for col in METRIC_COLUMNS:
        if col in df:
            df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    return df


def _row(run_dir: Path) -> dict[str, Any]:
    row: dict[str, Any] = {"run_dir": str(run_dir)}
    results = run_dir / "results.json"
    data: dict[str, Any] | None = None
    problem = "no results.json: the run died before writing it"
    status = "failed"
    if results.is_file():
        try:
            from cl.reports.runs import check_results

            data = json.loads(results.read_text())
            check_results(data)
        except (OSError, ValueError, TypeError, AttributeError) as e:
            data, status, problem = None, "unreadable", f"results.json: {e}"
    config = dict(data.get("config") or {}) if data else saved_config(run_dir)
    row.update(_summary(data or {}, config))
    if data is None:
        row.update(status=status, error=problem)
    row["overrides"] = " ".join(_overrides(run_dir))
    row.update(_flatten(config, "config"))
    return row


def _summary(data: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    from cl.reports.runs import protocol_of

    info = data.get("run") or {}
    stream = data.get("stream") or {}
    out: dict[str, Any] = {
        "name": info.get("name") or config.get("name"),
        "status": info.get("status"),
        "error": info.get("error"),
        "evaluation": None,
        "stream": stream.get("name") or _get(config, "stream", "name"),
        "scenario": stream.get("scenario") or _get(config, "stream", "scenario"),
        "strategy": _get(config, "strategy", "name"),
        "model": _get(config, "model", "name"),
        "seed": info.get("seed", config.get("seed")),
        "device": info.get("device"),
        "started": info.get("started"),
        "finished": info.get("finished"),
    }
    out = {k: v for k, v in out.items() if v is not None or k in ("status", "error")}
    out.setdefault("evaluation", None)
    if data:
        out["evaluation"] = protocol_of(data)[0]
    metrics = data.get("metrics") or {}
    aware = data.get("metrics_task_aware") or {}
    for m in METRICS:
        out[m] = _num(metrics.get(m))
        out[f"task_aware/{m}"] = _num(aware.get(m))
    for k, v in (data.get("budget") or {}).items():
        out[f"budget/{k}"] = _num(v)
    out["acc_matrix"] = data.get("acc_matrix")
    out["acc_matrix_task_aware"] = data.get("acc_matrix_task_aware")
    out["baseline_acc"] = data.get("baseline_acc")
    out["per_experience"] = data.get("per_experience")
    out["metrics_undefined"] = data.get("metrics_undefined") or {}
    return out


def _get(config: dict[str, Any], group: str, key: str) -> Any:
    node = config.get(group)
    return node.get(key) if isinstance(node, dict) else None


def _num(v: Any) -> float:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else math.nan


def _flatten(node: Any, prefix: str) -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}.{k}"))
        return out
    if isinstance(node, list):
        return {prefix: tuple(_hashable(v) for v in node)}
    return {prefix: node}


def _hashable(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(_hashable(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((k, _hashable(x)) for k, x in v.items()))
    return v


def saved_config(run_dir: Path) -> dict[str, Any]:
    """The config saved in ``run_dir/.hydra/config.yaml`` as a dict (empty when unreadable)."""
    from omegaconf import OmegaConf

    path = run_dir / ".hydra" / "config.yaml"
    try:
        cfg = OmegaConf.load(path)
        try:
            return dict(OmegaConf.to_container(cfg, resolve=True))  # type: ignore[arg-type]
        except Exception:  # an interpolation of Hydra's (${now:...}) outside Hydra
            return dict(OmegaConf.to_container(cfg, resolve=False))  # type: ignore[arg-type]
    except Exception:
        return {}


def _overrides(run_dir: Path) -> list[str]:
    from omegaconf import OmegaConf

    try:
        return [str(o) for o in OmegaConf.load(run_dir / ".hydra" / "overrides.yaml")]
    except Exception:  # none recorded (a run not started by cl-run)
        return []


def metric_columns(df: pd.DataFrame) -> list[str]:
    """The numeric result columns of ``df``: metrics, task-aware metrics, the ledger."""
    return [c for c in df.columns if c in METRIC_COLUMNS or str(c).startswith("budget/")]


def aggregate(
    df: pd.DataFrame,
    by: str | Sequence[str] | None = None,
    *,
    metrics: Sequence[str] | None = None,
    include_incomplete: bool = False,
) -> pd.DataFrame:
    """Mean and standard deviation (over seeds) of each metric, per configuration.

    Runs of different evaluation protocols are never averaged together (``evaluation`` is
    always a group key). Only complete runs are averaged unless ``include_incomplete``; the
    runs left out are counted, per group, in ``n_incomplete``.

    Args:
        df: Runs from :func:`load`.
        by: Columns that name a configuration. Default: ``stream``, ``strategy`` and every
            ``config.`` column whose value differs between runs (except the seed, name,
            device and resume directory).
        metrics: Columns to aggregate (default: :func:`metric_columns`).
        include_incomplete: Average partial and failed runs too.

    Returns:
        One row per configuration: the ``by`` columns, ``n_runs`` (averaged), ``seeds``,
        ``n_incomplete``, and ``<metric>/mean`` and ``<metric>/std`` (sample std, NaN for a
        single run).
    """
    import pandas as pd

    keys = _group_keys(df, by)
    metrics = list(metrics) if metrics is not None else metric_columns(df)
    done = df["status"] == "complete"
    used = df if include_incomplete else df[done]
    left_out = df[~done] if not include_incomplete else df.iloc[0:0]
    rows = []
    groups = used.groupby(keys, dropna=False, sort=True) if len(used) else []
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        row: dict[str, Any] = dict(zip(keys, key, strict=True))
        row["n_runs"] = len(g)
        row["seeds"] = tuple(sorted(g["seed"].dropna().tolist())) if "seed" in g else ()
        row["n_incomplete"] = int(_matching(left_out, keys, key).sum())
        for m in metrics:
            values = pd.to_numeric(g[m], errors="coerce")
            row[f"{m}/mean"] = values.mean()
            row[f"{m}/std"] = values.std(ddof=1) if values.count() > 1 else math.nan
        rows.append(row)
    columns = [*keys, "n_runs", "seeds", "n_incomplete"]
    columns += [f"{m}/{s}" for m in metrics for s in ("mean", "std")]
    return pd.DataFrame(rows, columns=columns)


def _group_keys(df: pd.DataFrame, by: str | Sequence[str] | None) -> list[str]:
    if isinstance(by, str):
        keys = [by]
    elif by is not None:
        keys = list(by)
    else:
        keys = [c for c in ("stream", "strategy") if c in df]
        for c in df.columns:
            setting = str(c).startswith("config.") and c not in _NOT_A_SETTING
            if setting and c not in keys and df[c].map(repr).nunique() > 1:
                keys.append(c)
    missing = [k for k in keys if k not in df]
    if missing:
        raise KeyError(f"no column {', '.join(missing)}; columns: {', '.join(map(str, df))}")
    return ["evaluation", *[k for k in keys if k != "evaluation"]]


def _matching(df: pd.DataFrame, keys: list[str], key: tuple[Any, ...]) -> Any:
    import pandas as pd

    mask = pd.Series(True, index=df.index)
    for k, v in zip(keys, key, strict=True):
        if k not in df:
            continue
        col = df[k]
        same = col.isna() if _isnan(v) else col == v
        if k == "evaluation":  # a run that died before recording its protocol
            same |= col.isna()
        mask &= same
    return mask


def _isnan(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))
