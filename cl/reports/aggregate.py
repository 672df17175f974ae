"""Group runs that differ only by seed, and summarise each group (mean +- std over seeds).

A group is (stream, evaluation, strategy, variant): the variant names the config values that
differ between runs of the same stream and strategy other than the seed (say
``train.lr=0.01``), so a sweep over a hyperparameter gives one row per value instead of mixing
them. The evaluation protocol (``task_agnostic`` / ``task_aware``) is part of the key: runs
that were given task ids at test time are never averaged or ranked with runs that were not.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from cl.reports.runs import METRICS, Run

# Config keys that do not make runs different experiments.
IGNORED_KEYS = ("seed", "name", "resume", "logger", "checkpoint", "device")


@dataclass
class Group:
    """Runs of one stream, protocol and strategy (and variant) that differ only by seed."""

    stream: str
    strategy: str
    variant: str
    runs: list[Run]
    evaluation: str = "task_agnostic"

    @property
    def label(self) -> str:
        return f"{self.strategy} [{self.variant}]" if self.variant else self.strategy


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists stay values)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def _varying(runs: list[Run]) -> dict[int, str]:
    """Per run (by position), the ``key=value`` list of config values not shared by all."""
    flats = [
        {k: v for k, v in flatten(r.config).items() if k.split(".")[0] not in IGNORED_KEYS}
        for r in runs
    ]
    keys = sorted(set().union(*flats)) if flats else []
    varying = [k for k in keys if len({repr(f.get(k)) for f in flats}) > 1]
    return {i: ", ".join(f"{k}={_short(f.get(k))}" for k in varying) for i, f in enumerate(flats)}


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def group_runs(runs: list[Run]) -> list[Group]:
    """Group the complete runs by (stream, evaluation, strategy, variant), in a stable order."""
    by_pair: dict[tuple[str, str, str], list[Run]] = defaultdict(list)
    for r in runs:
        if r.complete:
            by_pair[(r.stream, r.evaluation, r.strategy)].append(r)
    groups: list[Group] = []
    for (stream, evaluation, strategy), members in sorted(by_pair.items()):
        variants = _varying(members)
        by_variant: dict[str, list[Run]] = defaultdict(list)
        for i, r in enumerate(members):
            by_variant[variants[i]].append(r)
        for variant, rs in sorted(by_variant.items()):
            rs.sort(key=lambda r: (r.seed is None, r.seed))
            groups.append(Group(stream, strategy, variant, rs, evaluation))
    return groups


def mean_std(values: list[float | None]) -> tuple[float, float, int]:
    """Mean and sample standard deviation (ddof=1; 0 for one value) of the non-missing values."""
    xs = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not xs:
        return math.nan, math.nan, 0
    a = np.asarray(xs)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0, len(a)


def summary_row(g: Group) -> dict[str, Any]:
    """Final metrics and budget of a group: ``{metric: (mean, std, n)}`` plus labels."""
    row: dict[str, Any] = {"stream": g.stream, "strategy": g.strategy, "variant": g.variant}
    row["evaluation"] = g.evaluation
    row["label"] = g.label
    row["seeds"] = [r.seed for r in g.runs]
    for m in METRICS:
        row[m] = mean_std([r.metrics.get(m) for r in g.runs])
    for b in ("extra_state_bytes", "train_seconds", "trainable_params", "peak_memory_bytes"):
        row[b] = mean_std([r.budget.get(b) for r in g.runs])
    return row


def mean_matrix(g: Group) -> np.ndarray:
    """Mean accuracy matrix over the group's runs (runs of another shape are left out)."""
    mats = [np.asarray(r.acc_matrix, dtype=float) for r in g.runs if r.acc_matrix]
    if not mats:
        return np.zeros((0, 0))
    shape = mats[0].shape
    return np.mean([m for m in mats if m.shape == shape], axis=0)


def time_per_experience(g: Group) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std over seeds of the training seconds of each experience."""
    rows = [[float(p.get("train_seconds") or 0.0) for p in r.per_experience] for r in g.runs]
    n = min((len(r) for r in rows), default=0)
    if n == 0:
        return np.zeros(0), np.zeros(0)
    a = np.asarray([r[:n] for r in rows])
    std = a.std(axis=0, ddof=1) if len(a) > 1 else np.zeros(n)
    return a.mean(axis=0), std
