"""``cl-report``: turn runs and sweeps into a report folder people read.

Reads the ``results.json`` of a run, of a multirun directory or of several (and the runs of
a W&B project when online), and writes ``report.md`` + ``figures/`` and a self-contained
``report.html``: final metrics (mean +- std over seeds per strategy and stream), accuracy
matrix heatmaps, per-task accuracy curves, accuracy against extra memory, time per
experience, failed runs and the provenance of every run. A report definition
(``reports/*.yaml``) says which runs and panels; with W&B online it is also pushed as a W&B
Report.

Examples:
    cl-report multirun/compare_split_fmnist/2026-11-21_10-00-00 -o report
    cl-report --definition reports/compare_split_fmnist.yaml
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cl.errors import CLError
from cl.reports.definition import PANELS, ReportDefinition, load_definition
from cl.reports.runs import Run, find_results, load_runs

__all__ = ["find_results", "main"]


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="cl-report",
        description="Write a Markdown + HTML report of runs and sweeps.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"Panels: {', '.join(PANELS)}",
    )
    ap.add_argument("paths", nargs="*", help="run dirs, sweep dirs, results.json files, globs")
    ap.add_argument("-d", "--definition", help="a report definition (reports/*.yaml)")
    ap.add_argument("-o", "--out", help="output folder (default: the definition's, or report)")
    ap.add_argument("--title", help="report title")
    ap.add_argument("--panels", help="comma-separated panels to show (default: all)")
    ap.add_argument("--wandb-project", help="also read the runs of this W&B project "
                    "([entity/]project; needs network and an API key)")  # fmt: skip
    push = ap.add_mutually_exclusive_group()
    push.add_argument("--push", action="store_true", help="push a W&B Report (needs online)")
    push.add_argument("--no-push", action="store_true", help="never push a W&B Report")
    return ap


def _definition(args: argparse.Namespace) -> ReportDefinition:
    defn = load_definition(args.definition) if args.definition else ReportDefinition()
    if args.paths:
        defn.runs = list(args.paths)
    if args.out:
        defn.output = args.out
    if args.title:
        defn.title = args.title
    if args.panels:
        defn.panels = [p.strip() for p in args.panels.split(",") if p.strip()]
    if args.wandb_project:
        entity, _, project = args.wandb_project.rpartition("/")
        defn.wandb.project, defn.wandb.entity, defn.wandb.pull = project, entity or None, True
    if args.push:
        defn.wandb.push = "true"
    if args.no_push:
        defn.wandb.push = "false"
    defn.validate()
    return defn


def _select(runs: list[Run], defn: ReportDefinition) -> list[Run]:
    if defn.streams is not None:
        runs = [r for r in runs if r.stream in defn.streams]
    if defn.strategies is not None:
        runs = [r for r in runs if r.strategy in defn.strategies]
    return runs


def _online() -> bool:
    import os

    from cl.logging.wandb_sink import has_api_key

    return has_api_key() and os.environ.get("WANDB_MODE") not in ("offline", "disabled", "dryrun")


def _maybe_push(defn: ReportDefinition, runs: list[Run]) -> None:
    """Push the definition as a W&B Report when asked to, or (``auto``) when online."""
    import importlib.util

    if defn.wandb.push == "false":
        return
    if not defn.wandb.project:
        if defn.wandb.push == "true":
            raise CLError("--push needs a W&B project (definition wandb.project)")
        return
    ready = _online() and importlib.util.find_spec("wandb_workspaces") is not None
    if not ready:
        if defn.wandb.push == "true":
            raise CLError(
                "pushing a W&B Report needs an API key (wandb login), network and "
                'wandb-workspaces (pip install -e ".[reports]")'
            )
        return
    from cl.reports.wandb_report import push_wandb_report

    n_tasks = max((len(r.acc_matrix[0]) for r in runs if r.acc_matrix), default=5)
    try:
        url = push_wandb_report(defn, n_tasks)
    except Exception as e:  # network or permissions: the local report still stands
        if defn.wandb.push == "true":
            raise CLError(f"pushing the W&B Report failed: {e}") from None
        print(f"W&B Report not pushed: {e}", file=sys.stderr)
        return
    print(f"W&B Report: {url}")


def main(argv: list[str] | None = None) -> int:
    """Console script ``cl-report``; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        defn = _definition(args)
        runs = load_runs(defn.runs)
        if defn.wandb.pull and defn.wandb.project:
            from cl.reports.runs import load_wandb_runs

            runs += load_wandb_runs(defn.wandb.project, defn.wandb.entity, defn.wandb.filters)
        runs = _select(runs, defn)
        if not runs:
            print("no runs")
            return 0
        from cl.reports.render import write_report

        paths = write_report(runs, defn, Path(defn.output))
        n_bad = sum(not r.complete for r in runs)
        print(f"{len(runs)} runs ({n_bad} failed or incomplete)")
        print(f"report: {paths['html']}")
        print(f"markdown: {paths['markdown']}")
        _maybe_push(defn, runs)
    except CLError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
