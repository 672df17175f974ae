"""The report's figures, drawn with matplotlib (Agg) and returned as PNG bytes.

One figure of each kind per stream; every group (strategy, variant) of that stream appears
in it. Values are means over seeds; error bars and bands are one standard deviation.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # no display: reports are rendered headless

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from cl.reports.aggregate import Group, mean_matrix, mean_std, time_per_experience
from cl.reports.runs import Run
from cl.reports.sweep import metric_vs_param, note_left_out, spread_labels, wrap

DPI = 110


def to_png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _grid(n: int, width: float = 3.6, height: float = 3.2) -> tuple[Figure, list]:
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    size = (width * cols, height * rows)
    # Constrained layout keeps titles and axis labels of stacked rows apart.
    fig, axes = plt.subplots(rows, cols, figsize=size, squeeze=False, layout="constrained")
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def metrics_bars(groups: list[Group], title: str, left_out: Sequence[Run] = ()) -> bytes:
    """Final average accuracy and forgetting per group, mean +- std over seeds."""
    labels = [wrap(g.label, 24) for g in groups]
    x = np.arange(len(groups))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(groups) + 2), 3.6))
    for k, (metric, color) in enumerate((("avg_acc", "#3b75af"), ("forgetting", "#d1605e"))):
        stats = [mean_std([r.metrics.get(metric) for r in g.runs]) for g in groups]
        means = [0.0 if math.isnan(s[0]) else s[0] for s in stats]
        ax.bar(
            x + (k - 0.5) * 0.38,
            means,
            0.38,
            yerr=[s[1] for s in stats],
            capsize=3,
            label=metric.replace("_", " "),
            color=color,
        )
    ax.set_xticks(x, labels, rotation=20, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    note_left_out(fig, left_out)
    return to_png(fig)


def acc_matrix_heatmaps(groups: list[Group], title: str, left_out: Sequence[Run] = ()) -> bytes:
    """The mean accuracy matrix of each group: row i = after experience i, column j = task j."""
    fig, axes = _grid(len(groups))
    im = None
    for ax, g in zip(axes, groups, strict=True):
        m = mean_matrix(g)
        im = ax.imshow(m, vmin=0.0, vmax=1.0, cmap="viridis")
        if m.size and m.shape[0] <= 10 and m.shape[1] <= 10:
            for (i, j), v in np.ndenumerate(m):
                ax.text(
                    j,
                    i,
                    f"{v:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if v < 0.6 else "black",
                )
        ax.set_title(wrap(g.label), fontsize=9)
        ax.set_xlabel("evaluated on experience")
        ax.set_ylabel("after training on")
        ax.set_xticks(range(m.shape[1]))
        ax.set_yticks(range(m.shape[0]))
    if im is not None:
        fig.colorbar(im, ax=axes, shrink=0.8, label="accuracy")
    fig.suptitle(title)
    note_left_out(fig, left_out)
    return to_png(fig)


def task_curves(groups: list[Group], title: str, left_out: Sequence[Run] = ()) -> bytes:
    """Accuracy on each task j across the experiences trained after it (R[i][j], i >= j)."""
    fig, axes = _grid(len(groups))
    for ax, g in zip(axes, groups, strict=True):
        m = mean_matrix(g)
        for j in range(m.shape[1] if m.size else 0):
            xs = list(range(j, m.shape[0]))
            if xs:
                ax.plot(xs, m[j:, j], marker="o", markersize=3, label=f"task {j}")
        ax.set_ylim(-0.02, 1.02)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(wrap(g.label), fontsize=9)
        ax.set_xlabel("after training on experience")
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="lower left")
    fig.suptitle(title)
    note_left_out(fig, left_out)
    return to_png(fig)


def acc_vs_memory(groups: list[Group], title: str, left_out: Sequence[Run] = ()) -> bytes:
    """Final average accuracy against the extra state a strategy keeps (the memory-aligned
    comparison: a method that stores more should be compared with one given as much)."""
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    top = 0.0
    notes = []
    for g in groups:
        mem = mean_std([r.budget.get("extra_state_bytes") for r in g.runs])[0]
        acc, std, _ = mean_std([r.metrics.get("avg_acc") for r in g.runs])
        mem = 0.0 if math.isnan(mem) else mem
        top = max(top, mem / 1024)
        ax.errorbar([mem / 1024], [acc], yerr=[std], fmt="o", capsize=3, label=g.label)
        notes.append(
            ax.annotate(
                wrap(g.label), (mem / 1024, acc), textcoords="offset points", xytext=(5, 5),
                fontsize=7, arrowprops={"arrowstyle": "-", "color": "#999999", "lw": 0.5},
            )
        )  # fmt: skip
    ax.set_xscale("symlog", linthresh=1.0)  # naive keeps 0 bytes: a log axis would drop it
    ax.set_xlim(-0.5, max(10.0, top * 4))
    ax.set_xlabel("extra state (KiB, symlog)")
    ax.set_ylabel("final average accuracy")
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    spread_labels(ax, notes)  # labels of runs at the same point never overlap
    note_left_out(fig, left_out)
    return to_png(fig)


def time_per_exp(groups: list[Group], title: str, left_out: Sequence[Run] = ()) -> bytes:
    """Training seconds per experience, mean +- std over seeds."""
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    for g in groups:
        mean, std = time_per_experience(g)
        xs = np.arange(len(mean))
        (line,) = ax.plot(xs, mean, marker="o", markersize=3, label=g.label)
        ax.fill_between(xs, mean - std, mean + std, alpha=0.2, color=line.get_color())
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("experience")
    ax.set_ylabel("training time (s)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title)
    note_left_out(fig, left_out)
    return to_png(fig)


# Panel name -> (heading, drawing function); the order of the report.
FIGURES = {
    "metrics_bars": ("Final average accuracy and forgetting", metrics_bars),
    "acc_matrix": ("Accuracy matrices", acc_matrix_heatmaps),
    "task_curves": ("Per-task accuracy across experiences", task_curves),
    "acc_vs_memory": ("Accuracy against extra memory", acc_vs_memory),
    "time_per_experience": ("Training time per experience", time_per_exp),
    "metric_vs_param": ("Metrics against swept hyperparameters", metric_vs_param),
}
