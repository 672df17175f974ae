"""Write a report folder: ``report.md`` (figures as PNG files beside it) and ``report.html``
(self-contained: figures embedded as base64 data URIs, no script, no outside resource).
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cl.reports.aggregate import Group, group_runs, summary_row
from cl.reports.definition import ReportDefinition
from cl.reports.figures import FIGURES
from cl.reports.runs import METRICS, Run
from cl.reports.sweep import best_group, shared_core_warning

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;
max-width:1200px;padding:1.5rem 2rem;color:#1d2330;line-height:1.45}
h1{margin-bottom:.2rem}h2{border-bottom:2px solid #e3e7ee;padding-bottom:.2rem;margin-top:2rem}
.meta{color:#5b6475;font-size:.9rem}
table{border-collapse:collapse;margin:.6rem 0 1rem;font-size:.88rem}
th,td{border:1px solid #d8dde6;padding:.3rem .55rem;text-align:left;vertical-align:top}
th{background:#f2f4f8}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.failed td{background:#fdeeee}tr.incomplete td{background:#fff7e0}
.badge{display:inline-block;border-radius:.6rem;padding:0 .5rem;font-size:.8rem;color:#fff}
.badge.complete{background:#3a8a4f}.badge.failed{background:#c0392b}
.badge.incomplete{background:#c98a12}
figure{margin:.8rem 0 1.6rem}figure img{max-width:100%;height:auto;border:1px solid #e3e7ee}
figcaption{color:#5b6475;font-size:.85rem}
.warning{background:#fff7e0;border-left:4px solid #c98a12;padding:.4rem .7rem}
details{margin:.2rem 0}pre{background:#f6f8fa;padding:.6rem;overflow-x:auto;font-size:.8rem}
"""


PROTOCOL_NOTE = {
    "task_agnostic": "Evaluation: task-agnostic (no task ids at test time).",
    "task_aware": "Evaluation: task-aware (task ids given at test time, logits masked to the "
    "task's classes): not comparable with task-agnostic results, so listed apart.",
}


@dataclass
class Section:
    """One stream's part of the report under one evaluation protocol."""

    stream: str
    groups: list[Group]
    rows: list[dict[str, Any]]
    figures: dict[str, bytes] = field(default_factory=dict)
    evaluation: str = "task_agnostic"
    left_out: list[Run] = field(default_factory=list)

    @property
    def key(self) -> str:
        """Names the section's figures (the stream alone for task-agnostic runs)."""
        return self.stream if self.evaluation == "task_agnostic" else f"{self.stream} task-aware"

    @property
    def title(self) -> str:
        return f"{self.stream} — {self.evaluation.replace('_', '-')}"

    def notes(self) -> list[str]:
        """The protocol, and why a metric of the table is empty."""
        why: dict[str, str] = {}
        for g in self.groups:
            for r in g.runs:
                why.update(r.undefined)
        out = [PROTOCOL_NOTE.get(self.evaluation, f"Evaluation: {self.evaluation}.")]
        out += [f"{k} is null: {reason}." for k, reason in sorted(why.items())]
        if any(r.get("best") for r in self.rows):
            out.append("★ marks the best configuration (highest mean final average accuracy).")
        if self.left_out:
            names = ", ".join(f"{r.strategy} seed {r.seed} ({r.state})" for r in self.left_out)
            out.append(f"Not in this table or its figures: {names} (see the failed runs).")
        return out


def slug(text: str) -> str:
    """A file name / HTML id made of the text's letters and digits."""
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")


def fmt(stat: tuple[float, float, int], digits: int = 3) -> str:
    mean, std, n = stat
    if n == 0 or math.isnan(mean):
        return "-"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if n > 1 else f"{mean:.{digits}f}"


def fmt_int(stat: tuple[float, float, int]) -> str:
    mean, std, n = stat
    if n == 0 or math.isnan(mean):
        return "-"
    return f"{mean:,.0f}" + (f" ± {std:,.0f}" if std > 0 else "")


def fmt_bytes(stat: tuple[float, float, int]) -> str:
    mean = stat[0]
    if stat[2] == 0 or math.isnan(mean):
        return "-"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if mean >= size:
            return f"{mean / size:.1f} {unit}"
    return f"{mean:.0f} B"


TABLE_NOTE = "Final metrics, mean ± std over the runs (seeds) of each strategy (sample std)."
TABLE_COLS = ["strategy", "runs", *METRICS, "extra memory", "train s", "trainable params"]


def table_cells(row: dict[str, Any]) -> list[str]:
    return [
        row["label"] + (" ★" if row.get("best") else ""),
        str(len(row["seeds"])),
        *(fmt(row[m]) for m in METRICS),
        fmt_bytes(row["extra_state_bytes"]),
        fmt(row["train_seconds"], 1),
        fmt_int(row["trainable_params"]),
    ]


def build_sections(runs: list[Run], defn: ReportDefinition) -> list[Section]:
    """Group the runs per stream and evaluation protocol (task-aware runs get their own
    section, never ranked beside task-agnostic ones), summarise them, and draw the figures the
    definition asks."""
    sections = []
    groups = group_runs(runs)
    for stream, evaluation in sorted({(g.stream, g.evaluation) for g in groups}):
        gs = [g for g in groups if (g.stream, g.evaluation) == (stream, evaluation)]
        sec = Section(stream, gs, [summary_row(g) for g in gs], evaluation=evaluation)
        best = best_group(gs)
        for g, row in zip(gs, sec.rows, strict=True):
            row["best"] = len(gs) > 1 and g is best
        sec.left_out = [
            r for r in runs if not r.complete and (r.stream, r.evaluation) == (stream, evaluation)
        ]
        for name, (heading, draw) in FIGURES.items():
            if name in defn.panels:
                png = draw(gs, f"{heading} — {sec.title}", sec.left_out)
                if png is not None:
                    sec.figures[name] = png
        sections.append(sec)
    return sections


def _duration(r: Run) -> str:
    try:
        a = _dt.datetime.fromisoformat(str(r.started))
        b = _dt.datetime.fromisoformat(str(r.finished))
    except ValueError:
        return "-"
    return f"{(b - a).total_seconds():.0f} s"


def _versions(r: Run) -> str:
    """Package versions, and the user's plugin packages (version, git commit)."""
    keep = ("python", "torch", "cl-platform", "avalanche-lib", "hydra-core", "wandb")
    out = [f"{k} {r.versions[k]}" for k in keep if k in r.versions]
    out += [f"{k} ({v})" for k, v in sorted(r.versions.items()) if k.startswith("plugin:")]
    return ", ".join(out)


def render_markdown(
    defn: ReportDefinition, runs: list[Run], sections: list[Section], fig_paths: dict[str, str]
) -> str:
    e = lambda s: str(s).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    out = [f"# {defn.title}", ""]
    if defn.description:
        out += [defn.description, ""]
    out += [_counts(runs), ""]
    if (warning := shared_core_warning(runs)) is not None:
        out += [f"**Warning:** {warning}", ""]
    for sec in sections:
        out += [f"## {sec.title}", ""]
        if "metrics_table" in defn.panels:
            out += [" ".join([TABLE_NOTE, *sec.notes()]), ""]
            out += ["| " + " | ".join(TABLE_COLS) + " |", "|" + "---|" * len(TABLE_COLS)]
            out += ["| " + " | ".join(e(c) for c in table_cells(r)) + " |" for r in sec.rows]
            out.append("")
        for name in sec.figures:
            heading = FIGURES[name][0]
            out += [f"### {heading}", "", f"![{heading}]({fig_paths[f'{sec.key}/{name}']})", ""]
    bad = [r for r in runs if not r.complete]
    if "failed_runs" in defn.panels:
        out += ["## Failed and incomplete runs", ""]
        if not bad:
            out += ["None.", ""]
        else:
            out += ["| run | stream | strategy | seed | status | error | path |", "|---" * 7 + "|"]
            for r in bad:
                cells = [r.name, r.stream, r.strategy, r.seed, r.state, r.error or "-", r.source]
                out.append("| " + " | ".join(e(c) for c in cells) + " |")
            out.append("")
    if "provenance" in defn.panels:
        out += ["## Provenance", ""]
        out += ["| run | status | seed | device | started | duration | versions | overrides |"]
        out += ["|---" * 8 + "|"]
        for r in runs:
            cells = [
                r.name,
                r.state,
                r.seed,
                r.device,
                r.started,
                _duration(r),
                _versions(r),
                " ".join(r.overrides) or "-",
            ]
            out.append("| " + " | ".join(e(c) for c in cells) + " |")
        out.append("")
        for r in runs:
            out += [f"<details><summary>{r.name} ({r.source})</summary>", "", "```yaml"]
            out += [_yaml(r.config).rstrip(), "```", "", "</details>", ""]
    return "\n".join(out)


def _counts(runs: list[Run]) -> str:
    n = {s: sum(r.state == s for r in runs) for s in ("complete", "failed", "incomplete")}
    now = _dt.datetime.now().isoformat(timespec="seconds")
    return (
        f"{len(runs)} runs: {n['complete']} complete, {n['failed']} failed, "
        f"{n['incomplete']} incomplete. Generated {now}."
    )


def _yaml(config: dict[str, Any]) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.create(config))


def _badge(state: str) -> str:
    return f'<span class="badge {state}">{state}</span>'


def render_html(defn: ReportDefinition, runs: list[Run], sections: list[Section]) -> str:
    e = html.escape
    body = [f"<h1>{e(defn.title)}</h1>"]
    if defn.description:
        body.append(f"<p>{e(defn.description)}</p>")
    body.append(f'<p class="meta">{e(_counts(runs))}</p>')
    if (warning := shared_core_warning(runs)) is not None:
        body.append(f'<p class="warning"><strong>Warning:</strong> {e(warning)}</p>')
    for sec in sections:
        body.append(f'<h2 id="{slug(sec.key)}">{e(sec.title)}</h2>')
        if "metrics_table" in defn.panels:
            body.append(f"<p>{e(' '.join([TABLE_NOTE, *sec.notes()]))}</p>")
            body.append("<table><thead><tr>")
            body += [f"<th>{e(c)}</th>" for c in TABLE_COLS]
            body.append("</tr></thead><tbody>")
            for row in sec.rows:
                cells = table_cells(row)
                tds = [f"<td>{e(cells[0])}</td>"] + [
                    f'<td class="num">{e(c)}</td>' for c in cells[1:]
                ]
                body.append("<tr>" + "".join(tds) + "</tr>")
            body.append("</tbody></table>")
        for name, png in sec.figures.items():
            heading = FIGURES[name][0]
            uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
            body.append(
                f'<figure><h3>{e(heading)}</h3><img alt="{e(heading)} ({e(sec.title)})" '
                f'src="{uri}"><figcaption>{e(_caption(name))}</figcaption></figure>'
            )
    if "failed_runs" in defn.panels:
        body.append('<h2 id="failed">Failed and incomplete runs</h2>')
        bad = [r for r in runs if not r.complete]
        if not bad:
            body.append("<p>None.</p>")
        else:
            body.append("<table><thead><tr>")
            body += [
                f"<th>{h}</th>"
                for h in ("run", "stream", "strategy", "seed", "status", "error", "path")
            ]
            body.append("</tr></thead><tbody>")
            for r in bad:
                body.append(
                    f'<tr class="{r.state}"><td>{e(r.name)}</td><td>{e(r.stream)}</td>'
                    f"<td>{e(r.strategy)}</td><td>{e(str(r.seed))}</td><td>{_badge(r.state)}</td>"
                    f"<td>{e(r.error or '-')}</td><td>{e(r.source)}</td></tr>"
                )
            body.append("</tbody></table>")
    if "provenance" in defn.panels:
        body.append('<h2 id="provenance">Provenance</h2><table><thead><tr>')
        heads = ("run", "status", "seed", "device", "started", "duration", "versions", "config")
        body += [f"<th>{h}</th>" for h in heads]
        body.append("</tr></thead><tbody>")
        for r in runs:
            over = " ".join(r.overrides) or "-"
            body.append(
                f'<tr class="{r.state}"><td>{e(r.name)}<br><small>{e(r.source)}</small></td>'
                f"<td>{_badge(r.state)}</td><td>{e(str(r.seed))}</td><td>{e(str(r.device))}</td>"
                f"<td>{e(str(r.started))}</td><td>{e(_duration(r))}</td><td>{e(_versions(r))}</td>"
                f"<td><details><summary>{e(over)}</summary><pre>{e(_yaml(r.config))}</pre>"
                "</details></td></tr>"
            )
        body.append("</tbody></table>")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{e(defn.title)}</title><style>{CSS}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def _caption(name: str) -> str:
    return {
        "metrics_bars": "Bars: mean over seeds; whiskers: one standard deviation.",
        "acc_matrix": "Row i, column j: accuracy on experience j after training on experience "
        "i (mean over seeds). Above the diagonal: tasks not trained yet.",
        "task_curves": "Each line follows one task from the experience it was trained on.",
        "acc_vs_memory": "Extra state a strategy keeps besides the model (buffers, Fisher "
        "matrices, teachers, prompts): compare methods at equal memory.",
        "time_per_experience": "Training time of each experience, mean ± std over seeds "
        "(evaluation excluded).",
        "metric_vs_param": "Mean ± std over seeds at each value of a swept hyperparameter; "
        "the star marks the best configuration, red crosses failed or incomplete runs.",
    }[name]


def write_report(runs: list[Run], defn: ReportDefinition, out_dir: Path) -> dict[str, Path]:
    """Write ``report.md``, ``report.html``, ``figures/*.png`` and ``summary.json``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    sections = build_sections(runs, defn)
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(exist_ok=True)
    fig_paths = {}
    for sec in sections:
        for name, png in sec.figures.items():
            path = fig_dir / f"{slug(sec.key)}_{name}.png"
            path.write_bytes(png)
            fig_paths[f"{sec.key}/{name}"] = f"figures/{path.name}"
    md = out_dir / "report.md"
    md.write_text(render_markdown(defn, runs, sections, fig_paths))
    page = out_dir / "report.html"
    page.write_text(render_html(defn, runs, sections))
    summary = out_dir / "summary.json"
    summary.write_text(
        json.dumps(
            {
                "rows": [{k: v for k, v in row.items()} for s in sections for row in s.rows],
                "runs": [
                    {"source": r.source, "name": r.name, "state": r.state, "error": r.error}
                    for r in runs
                ],
                "warnings": [w for w in [shared_core_warning(runs)] if w],
            },
            indent=2,
            default=str,
        )
    )
    return {"markdown": md, "html": page, "summary": summary, "figures": fig_dir}
