"""The same report definition as a W&B Report (wandb-workspaces), for runs logged online.

Panels map to W&B panels over a runset of the project grouped by evaluation protocol and
strategy (task-aware runs never averaged with task-agnostic ones): bars of the final
metrics (mean, stddev), the heatmap images the W&B sink logs, per-task accuracy lines,
accuracy against extra memory, training time per experience, and a run comparer.
"""

from __future__ import annotations

from typing import Any

from cl.reports.definition import ReportDefinition

# The W&B sink logs per-task accuracy as eval/acc_exp{j}; reports show this many at most.
MAX_TASKS = 20


def build_wandb_report(defn: ReportDefinition, n_tasks: int = 5) -> Any:
    """A ``wandb_workspaces`` Report object (not saved) for the definition."""
    import wandb_workspaces.reports.v2 as wr

    if not defn.wandb.project:
        raise ValueError("the report definition names no wandb.project")
    # Without an entity, wandb-workspaces asks the API for the default one (online only).
    owner: dict[str, Any] = {"entity": defn.wandb.entity} if defn.wandb.entity else {}
    runset = wr.Runset(
        project=defn.wandb.project,
        name=defn.title,
        groupby=["config.evaluation", "config.strategy.name"],
        **owner,
    )
    agg: dict[str, Any] = {"groupby_aggfunc": "mean", "groupby_rangefunc": "stddev"}
    tasks: list[Any] = [f"eval/acc_exp{j}" for j in range(min(n_tasks, MAX_TASKS))]
    panels: dict[str, list[Any]] = {
        "metrics_table": [wr.RunComparer(diff_only="split")],
        "metrics_bars": [
            wr.BarPlot(title="final average accuracy", metrics=["cl/avg_acc"], **agg),
            wr.BarPlot(title="forgetting", metrics=["cl/forgetting"], **agg),
        ],
        "acc_matrix": [
            wr.MediaBrowser(title="accuracy matrix", media_keys=["eval/acc_matrix_heatmap"])
        ],
        "task_curves": [
            wr.LinePlot(title="per-task accuracy", x="experience", y=tasks, **agg),
        ],
        "acc_vs_memory": [
            wr.ScatterPlot(
                title="accuracy vs extra memory", x="budget/extra_state_bytes", y="cl/avg_acc"
            )
        ],
        "time_per_experience": [
            wr.LinePlot(
                title="training time per experience",
                x="experience",
                y=["budget/train_seconds"],
                **agg,
            )
        ],
        "provenance": [wr.RunComparer(diff_only=None)],
    }
    chosen = [p for name in defn.panels for p in panels.get(name, [])]
    blocks: list[Any] = [wr.H1(text=defn.title)]
    if defn.description:
        blocks.append(wr.P(text=defn.description))
    blocks.append(wr.PanelGrid(runsets=[runset], panels=chosen))
    return wr.Report(
        project=defn.wandb.project,
        **owner,
        title=defn.title,
        description=defn.description,
        blocks=blocks,
    )


def push_wandb_report(defn: ReportDefinition, n_tasks: int = 5) -> str:
    """Save the report to W&B (needs network and an API key); returns its URL."""
    report = build_wandb_report(defn, n_tasks)
    report.save()
    return str(report.url)
