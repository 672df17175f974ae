"""cl-report on a real sweep: numbers, figures, failed runs, provenance, and the HTML page as
headless Chromium renders it (no console errors, every image loads)."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cl.report import main as cl_report
from cl.reports.definition import PANELS, load_definition
from cl.run import CONF_DIR
from tests.conftest import needs_chromium, require

ROOT = CONF_DIR.parent
FIGURE_KINDS = ("metrics_bars", "acc_matrix", "task_curves", "acc_vs_memory", "time_per_experience")


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory) -> Path:
    """The comparison sweep, shrunk: 2 strategies x 2 seeds, plus 2 jobs that fail."""
    tmp = tmp_path_factory.mktemp("report")
    cmd = [sys.executable, "-m", "cl.run", "-m", "--config-dir", str(ROOT / "sweeps")]
    cmd += ["--config-name", "compare_split_fmnist", "hydra/launcher=basic", "hydra.sweep.dir=sw"]
    cmd += ["stream=split_digits", "debug=fast", "logger=none", "strategy=naive,replay"]
    cmd += ["seed=0,1", "stream.n_experiences=5,11"]  # 11 experiences > 10 classes: fails
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    return tmp / "sw"


@pytest.fixture(scope="module")
def report(sweep_dir) -> Path:
    out = sweep_dir.parent / "report"
    assert cl_report([str(sweep_dir), "-o", str(out), "--no-push"]) == 0
    return out


def _results(sweep_dir: Path) -> list[dict]:
    return [json.loads(f.read_text()) for f in sorted(sweep_dir.glob("*/results.json"))]


def test_metrics_table_is_mean_and_std_over_seeds(sweep_dir, report):
    runs = _results(sweep_dir)
    summary = json.loads((report / "summary.json").read_text())
    rows = {r["strategy"]: r for r in summary["rows"]}
    assert set(rows) == {"naive", "replay"}
    for strategy, row in rows.items():
        done = [
            r
            for r in runs
            if r["config"]["strategy"]["name"] == strategy and r["run"]["status"] == "complete"
        ]
        assert sorted(row["seeds"]) == [0, 1]
        for metric in ("avg_acc", "forgetting", "bwt"):
            xs = np.array([r["metrics"][metric] for r in done])
            mean, std, n = row[metric]
            assert n == 2
            assert mean == pytest.approx(xs.mean()) and std == pytest.approx(xs.std(ddof=1))
            # The table shows the same numbers.
            assert f"{xs.mean():.3f} ± {xs.std(ddof=1):.3f}" in (report / "report.md").read_text()
    # Replay keeps a buffer, naive keeps nothing: the memory axis separates them.
    assert rows["naive"]["extra_state_bytes"][0] == 0
    assert rows["replay"]["extra_state_bytes"][0] > 0


def test_failed_jobs_are_listed_as_failed(report):
    summary = json.loads((report / "summary.json").read_text())
    failed = [r for r in summary["runs"] if r["state"] == "failed"]
    assert len(failed) == 4 and len(summary["runs"]) == 8
    assert all("exceeds 10 classes" in r["error"] for r in failed)
    page = (report / "report.html").read_text()
    section = page[page.index('id="failed"') : page.index('id="provenance"')]
    assert section.count('<tr class="failed">') == 4
    assert "4 failed" in page and "4 complete" in page


def test_html_is_self_contained_with_every_figure_kind(sweep_dir, report):
    page = (report / "report.html").read_text()
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", page)
    assert "<script" not in page
    srcs = re.findall(r'<img alt="([^"]+)" src="([^"]+)"', page)
    assert len(srcs) == len(FIGURE_KINDS)  # one stream: one figure of each kind
    from PIL import Image

    for _, src in srcs:
        assert src.startswith("data:image/png;base64,")
        img = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        assert img.format == "PNG" and img.width > 300 and img.height > 200
    for kind in FIGURE_KINDS:
        assert (report / "figures" / f"split_digits_{kind}.png").exists()
        assert f"figures/split_digits_{kind}.png" in (report / "report.md").read_text()
    # Provenance: every run, its config and versions.
    for f in sorted(sweep_dir.glob("*/results.json")):
        assert str(f) in page
    assert page.count("torch ") >= 8 and "hidden_sizes" in page


def test_report_definitions_load_and_select_runs(tmp_path, sweep_dir):
    for f in sorted((ROOT / "reports").glob("*.yaml")):
        defn = load_definition(f)
        assert set(defn.panels) <= set(PANELS) and defn.runs
    bad = tmp_path / "bad.yaml"
    bad.write_text("panels: [acc_matrix, pie_chart]\n")
    assert cl_report(["--definition", str(bad)]) == 2
    # A definition restricted to one strategy and two panels.
    d = tmp_path / "one.yaml"
    d.write_text(
        f"title: Only replay\nruns: ['{sweep_dir}/*']\nstrategies: [replay]\n"
        f"panels: [metrics_table, acc_matrix]\noutput: {tmp_path / 'out'}\n"
    )
    assert cl_report(["--definition", str(d)]) == 0
    page = (tmp_path / "out" / "report.html").read_text()
    assert "Only replay" in page and page.count("<img ") == 1
    assert "<td>replay</td>" in page and "<td>naive</td>" not in page
    assert cl_report([str(tmp_path / "nothing-here")]) == 2  # a path that does not exist


def test_wandb_report_has_the_same_panels():
    require("wandb_workspaces")
    from cl.reports.wandb_report import build_wandb_report

    defn = load_definition(ROOT / "reports" / "compare_split_fmnist.yaml")
    defn.wandb.entity = "a-team"  # no API call needed to name the owner
    report = build_wandb_report(defn, n_tasks=5)
    grid = report.blocks[-1]
    kinds = [type(p).__name__ for p in grid.panels]
    assert {"BarPlot", "MediaBrowser", "LinePlot", "ScatterPlot", "RunComparer"} <= set(kinds)
    scatter = next(p for p in grid.panels if type(p).__name__ == "ScatterPlot")
    assert (scatter.x, scatter.y) == ("budget/extra_state_bytes", "cl/avg_acc")
    assert grid.runsets[0].project == "cl-platform"


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Injected at the top of a copy of the page: records errors and, once the page has loaded,
# writes the state of every image into the DOM, which --dump-dom prints.
PROBE = """<script>
window.__errs = [];
window.addEventListener("error", function (e) {
  window.__errs.push(String(e.message || (e.target && String(e.target.src).slice(0, 40))));
}, true);
window.addEventListener("unhandledrejection", function (e) {
  window.__errs.push(String(e.reason));
});
var _err = console.error;
console.error = function () {
  window.__errs.push([].join.call(arguments, " "));
  _err.apply(console, arguments);
};
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; });
  var out = {n: imgs.length, loaded: ok.length, errors: window.__errs,
             widths: imgs.map(function (i) { return i.naturalWidth; })};
  var pre = document.createElement("pre");
  pre.id = "probe";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


@needs_chromium
def test_page_renders_in_headless_chromium(report, tmp_path):
    page = (report / "report.html").read_text()
    probed = tmp_path / "probed.html"
    probed.write_text(page.replace("<head>", "<head>" + PROBE, 1))
    base = [CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dump = ["--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000", "--dump-dom"]
    p = subprocess.run([*base, *dump, probed.as_uri()], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    m = re.search(r'<pre id="probe">(.*?)</pre>', p.stdout)
    assert m, p.stdout[-2000:]
    probe = json.loads(m.group(1).replace("&quot;", '"'))
    assert probe["errors"] == []
    assert probe["n"] == len(FIGURE_KINDS) and probe["loaded"] == probe["n"]
    assert min(probe["widths"]) > 300
    console = [s for s in p.stderr.splitlines() if "CONSOLE" in s]
    assert console == [], console
    # A screenshot of the real page (looked at by a person when the report changes).
    shot = tmp_path / "report.png"
    args = ["--window-size=1280,2400", f"--screenshot={shot}", (report / "report.html").as_uri()]
    s = subprocess.run([*base, *args], capture_output=True, text=True, timeout=120)
    assert s.returncode == 0 and shot.exists(), s.stderr[-2000:]
    from PIL import Image

    img = Image.open(shot).convert("L")
    assert img.size == (1280, 2400)
    assert np.asarray(img).std() > 10  # not a blank page
