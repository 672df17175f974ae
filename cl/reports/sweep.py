"""What a sweep's report needs beyond per-strategy summaries: each metric against a swept
hyperparameter (best configuration marked), the runs a panel leaves out, labels that do not
overlap, and a warning when timings come from parallel jobs that shared the cores.
"""

from __future__ import annotations

import datetime as _dt
import math
import textwrap
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from cl.reports.aggregate import IGNORED_KEYS, Group, flatten, mean_std
from cl.reports.runs import Run

SWEEP_METRICS = ("avg_acc", "forgetting")
MAX_PARAMS = 4


def wrap(label: str, width: int = 28) -> str:
    """A long label broken into lines (subplot titles and legends stay inside their box)."""
    return "\n".join(textwrap.wrap(label, width, break_on_hyphens=False)) or label


def swept_params(runs: list[Run]) -> list[str]:
    """Numeric config keys (dotted) that take two or more values among ``runs`` (the seed and
    settings that do not change the experiment excluded), at most :data:`MAX_PARAMS`."""
    values: dict[str, set[float]] = defaultdict(set)
    for r in runs:
        for k, v in flatten(r.config).items():
            if k.split(".")[0] in IGNORED_KEYS:
                continue
            if isinstance(v, int | float) and not isinstance(v, bool):
                values[k].add(float(v))
    return sorted(k for k, vs in values.items() if len(vs) > 1)[:MAX_PARAMS]


def param_value(r: Run, key: str) -> float | None:
    v = flatten(r.config).get(key)
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def best_group(groups: list[Group], metric: str = "avg_acc") -> Group | None:
    """The group with the highest mean ``metric`` (None when no group has it)."""
    scored = [
        (mean_std([r.metrics.get(metric) for r in g.runs])[0], i) for i, g in enumerate(groups)
    ]
    scored = [(m, i) for m, i in scored if not math.isnan(m)]
    return groups[max(scored)[1]] if scored else None


def note_left_out(fig: Figure, left_out: Sequence[Run]) -> None:
    """Name, under the figure, the failed and incomplete runs it would have included."""
    if not left_out:
        return
    items = [f"{r.strategy} seed {r.seed} ({r.state})" for r in left_out[:6]]
    more = f" and {len(left_out) - 6} more" if len(left_out) > 6 else ""
    text = f"Not shown: {len(left_out)} failed/incomplete run(s): {', '.join(items)}{more}."
    fig.text(0.01, -0.02, wrap(text, 110), ha="left", va="top", fontsize=7, color="#c0392b")


def spread_labels(ax: Axes, texts: list[Any], pad: float = 2.0) -> None:
    """Move annotations up (in offset points) until no two bounding boxes overlap."""
    if len(texts) < 2:
        return
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    placed: list[Any] = []
    for t in sorted(texts, key=lambda t: t.get_window_extent(renderer).y0):
        for _ in range(50):
            box = t.get_window_extent(renderer).expanded(1.0, 1.0)
            hit = next((p for p in placed if box.overlaps(p)), None)
            if hit is None:
                break
            dx, dy = t.xyann
            step = (hit.y1 - box.y0) * 72.0 / fig.dpi + pad
            t.xyann = (dx, dy + step)
        placed.append(t.get_window_extent(renderer))


def metric_vs_param(groups: list[Group], title: str, left_out: Sequence[Run] = ()) -> bytes | None:
    """Each metric against each swept hyperparameter: one line per strategy (mean +- std over
    seeds), the best configuration (highest final average accuracy) starred, failed and
    incomplete runs as red crosses on the axis at their value. None when no numeric
    hyperparameter varies between the complete runs."""
    from cl.reports.figures import _grid, to_png

    runs = [r for g in groups for r in g.runs]
    params = swept_params(runs)
    if not params:
        return None
    fig, axes = _grid(len(params) * len(SWEEP_METRICS), width=4.2, height=3.4)
    best = best_group(groups)
    for k, (param, metric) in enumerate((p, m) for p in params for m in SWEEP_METRICS):
        ax = axes[k]
        by_strategy: dict[str, list[tuple[float, float, float, Group]]] = defaultdict(list)
        for g in groups:
            x = param_value(g.runs[0], param)
            mean, std, count = mean_std([r.metrics.get(metric) for r in g.runs])
            if x is not None and count:
                by_strategy[g.strategy].append((x, mean, std, g))
        for strategy, pts in sorted(by_strategy.items()):
            pts.sort(key=lambda p: p[0])
            xs, ys, es = (np.array([p[i] for p in pts]) for i in range(3))
            ax.errorbar(xs, ys, yerr=es, marker="o", markersize=4, capsize=3, label=wrap(strategy))
            for x, y, _, g in pts:
                if g is best:
                    ax.plot([x], [y], marker="*", markersize=15, color="gold", mec="black",
                            zorder=5, label="best (avg acc)")  # fmt: skip
        xs_bad = [x for r in left_out if (x := param_value(r, param)) is not None]
        if xs_bad:
            ax.plot(xs_bad, [0.0] * len(xs_bad), "x", color="#c0392b", markersize=8, mew=2,
                    clip_on=False, label="failed/incomplete run")  # fmt: skip
        values = sorted(v for r in [*runs, *left_out] if (v := param_value(r, param)) is not None)
        if values and values[0] > 0 and values[-1] / values[0] >= 100:
            ax.set_xscale("log")
        ax.set_xlabel(param)
        ax.set_ylabel(metric.replace("_", " "))
        ax.set_ylim(min(0.0, ax.get_ylim()[0]), max(1.02, ax.get_ylim()[1]))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="best")
    fig.suptitle(title)
    note_left_out(fig, list(left_out))
    return to_png(fig)


def _interval(r: Run) -> tuple[float, float] | None:
    try:
        a = _dt.datetime.fromisoformat(str(r.started)).timestamp()
        b = _dt.datetime.fromisoformat(str(r.finished)).timestamp()
    except ValueError:
        return None
    return (a, b) if b > a else None


def shared_core_warning(runs: list[Run]) -> str | None:
    """A warning when runs on one host overlapped in time with more threads than cores (or
    on a host of unknown size): their timings come from jobs that shared the cores."""
    by_host: dict[str, list[tuple[float, float, Run]]] = defaultdict(list)
    for r in runs:
        iv = _interval(r)
        if iv is not None and not str(r.device or "cpu").startswith("cuda"):
            by_host[r.versions.get("host", "?")].append((*iv, r))
    notes = []
    for host, spans in sorted(by_host.items()):
        events = sorted([(a, 1, r) for a, _, r in spans] + [(b, -1, r) for _, b, r in spans],
                        key=lambda e: (e[0], e[1]))  # fmt: skip
        live: list[Run] = []
        worst: list[Run] = []
        for _, kind, r in events:
            if kind == 1:
                live.append(r)
                if len(live) > len(worst):
                    worst = list(live)
            else:
                live.remove(r)
        if len(worst) < 2:
            continue
        threads = sum(int(r.versions.get("torch_threads") or 0) for r in worst)
        cores = int(worst[0].versions.get("cpu_count") or 0)
        if cores and threads and threads <= cores:
            continue
        size = f"{threads} torch threads on {cores} cores" if cores and threads else "cores"
        notes.append(f"up to {len(worst)} runs at once on host {host} ({size})")
    if not notes:
        return None
    return (
        "Timings come from parallel jobs that shared the cores ("
        + "; ".join(notes)
        + "): training seconds and samples per second are not comparable with runs alone."
    )
