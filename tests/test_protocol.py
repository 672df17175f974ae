"""The evaluation protocol: strategies that need task ids at test time are refused on
class_il/domain_il streams without ``allow_task_oracle=true`` (registry-driven), runs name
their protocol in results.json, metrics.csv and the console, and cl-report never ranks
task-aware runs beside task-agnostic ones."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest

from cl import metrics as M
from cl.config import build, to_dataclass
from cl.errors import ConfigError
from cl.evaluate import protocol
from cl.logging.console import format_summary
from cl.report import main as cl_report
from cl.run import run_experiment
from cl.strategy import get_strategy, list_strategies
from cl.streams.base import StreamInfo
from cl.testing import DEFAULT_SETUP, TINY_VIT_SETUP

VISION = [
    "stream=split_digits",
    "stream.n_experiences=3",
    "stream.max_train_per_experience=120",
    "stream.max_test_per_experience=60",
    "train.epochs=1",
    "checkpoint.enabled=false",
    "device=cpu",
]
TEXT = [
    "stream=text_offline",
    "stream.scenario=class_il",
    "model=hf_encoder",
    "stream.max_len=16",
    "stream.k_shot=2",
    "stream.max_test_per_class=3",
    "train.epochs=1",
    "checkpoint.enabled=false",
    "device=cpu",
]
TINY_VIT = [*VISION, *TINY_VIT_SETUP[len(DEFAULT_SETUP) :]]
# Strategies that need a transformer backbone; the others run on the mlp.
SETUP = {"l2p": TINY_VIT, "prompt_tuning": TINY_VIT, "progprompt": TINY_VIT, "qtuning": TINY_VIT}
# Every registered strategy with its default config, plus the config switches that make a
# strategy need task ids at test time.
CASES = [(name, ()) for name in list_strategies()] + [("adapters", ("strategy.routing=oracle",))]


def _setup(name: str) -> list[str]:
    if "vision" not in get_strategy(name).modalities:
        return TEXT
    return SETUP.get(name, VISION)


@pytest.mark.parametrize(("name", "extra"), CASES, ids=lambda v: v if isinstance(v, str) else "")
def test_task_id_strategies_need_the_opt_in_on_class_and_domain_il(name, extra, make_cfg):
    cls = get_strategy(name)
    cfg = make_cfg(f"strategy={name}", *_setup(name), *extra)
    config = to_dataclass(cfg.strategy, cls.config_cls, "strategy")
    needs = cls.requires_task_ids(config)
    tasks = [[0, 1], [2, 3]]
    for scenario in ("class_il", "domain_il", "task_il"):
        if scenario not in cls.scenarios:
            continue
        info = StreamInfo.of("s", tasks, scenario=scenario, modality=cls.modalities[0])
        if needs and scenario != "task_il":
            with pytest.raises(ConfigError, match="allow_task_oracle=true"):
                cls.check_stream(info, config=config)
        else:
            cls.check_stream(info, config=config)
        cls.check_stream(info, config=config, allow_task_oracle=True)
    if not needs:
        return
    # Through build(), as cl-run does: refused with one line naming the opt-in ...
    with pytest.raises(ConfigError, match="allow_task_oracle=true") as e:
        build(cfg)
    assert "\n" not in str(e.value)
    # ... accepted with it, and the run's protocol is task-aware.
    built = build(make_cfg(f"strategy={name}", *_setup(name), *extra, "allow_task_oracle=true"))
    assert built.stream.scenario == "class_il"
    assert protocol(built.strategy, built.stream.scenario) == M.TASK_AWARE


def test_adapters_requirement_follows_routing():
    cls = get_strategy("adapters")
    cfg = cls.config_cls()
    assert not cls.requires_task_ids(cfg)
    cfg.routing = "oracle"  # type: ignore[attr-defined]
    assert cls.requires_task_ids(cfg)
    assert get_strategy("progprompt").requires_task_ids(get_strategy("progprompt").config_cls())
    assert not get_strategy("hypernet").requires_task_ids(get_strategy("hypernet").config_cls())


def test_cli_refuses_progprompt_on_class_il_with_one_line(tmp_path):
    cmd = [sys.executable, "-m", "cl.run", "strategy=progprompt", "model=hf_encoder"]
    cmd += ["stream=text_offline", "stream.scenario=class_il", "logger=none"]
    cmd += ["stream.k_shot=2", "stream.max_test_per_class=3", f"hydra.run.dir={tmp_path}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    p = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stderr[-2000:]
    err = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: ") and "allow_task_oracle=true" in err[0]
    assert "Traceback" not in p.stderr


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A task-agnostic naive run and a task-aware (oracle adapters) run on split_digits."""
    from cl.config import compose_config

    root = tmp_path_factory.mktemp("protocol")
    out = {}
    for key, extra in (
        ("naive", ["strategy=naive"]),
        ("oracle", ["strategy=adapters", "strategy.routing=oracle", "allow_task_oracle=true"]),
    ):
        cfg = compose_config(["logger=none", *VISION, *extra])
        run_experiment(cfg, root / key)
        out[key] = root / key
    return out


def _results(run_dir):
    return json.loads((run_dir / "results.json").read_text())


def test_results_name_their_protocol(runs):
    r = _results(runs["naive"])
    assert r["evaluation"] == r["stream"]["evaluation"] == "task_agnostic"
    assert r["metrics"]["fwt"] is None and set(r["metrics_undefined"]) == {"fwt"}
    assert isinstance(r["metrics_task_aware"]["fwt"], float)
    rows = list(csv.DictReader((runs["naive"] / "metrics.csv").open()))
    assert float(rows[0]["avg_acc"]) == pytest.approx(r["acc_matrix"][0][0])
    assert {row["evaluation"] for row in rows} == {"task_agnostic"}

    o = _results(runs["oracle"])
    assert o["evaluation"] == o["stream"]["evaluation"] == "task_aware"
    assert o["stream"]["scenario"] == "class_il" and o["config"]["allow_task_oracle"] is True
    # The primary matrix is the task-aware one; FWT is defined under this protocol.
    assert o["acc_matrix"] == o["acc_matrix_task_aware"]
    assert o["metrics_undefined"] == {} and isinstance(o["metrics"]["fwt"], float)
    assert o["metrics"]["fwt"] == pytest.approx(M.fwt(o["acc_matrix"], o["baseline_acc"]))


def test_console_table_shows_protocol_and_null_reason(runs):
    from cl.logging.base import RunRecord

    state = json.loads((runs["naive"] / "results.json").read_text())
    rec = RunRecord(
        name=state["run"]["name"],
        seed=state["run"]["seed"],
        device="cpu",
        started="",
        config=state["config"],
        stream=state["stream"],
        scenario=state["stream"]["scenario"],
        versions={},
        acc_matrix=state["acc_matrix"],
        acc_matrix_task_aware=state["acc_matrix_task_aware"],
        baseline=state["baseline_acc"],
        baseline_task_aware=state["baseline_acc_task_aware"],
        evaluation=state["evaluation"],
    )
    text = format_summary(rec)
    assert "evaluation: task_agnostic (class_il stream)" in text
    assert "fwt is null: undefined in task-agnostic class_il" in text
    assert "fwt (task-aware)" in text


def test_report_keeps_protocols_apart_and_infers_old_files(runs, tmp_path):
    # An old results.json (written before the protocol was recorded) of the naive run.
    old = _results(runs["naive"])
    old_fwt = M.fwt(old["acc_matrix"], old["baseline_acc"])
    for k in ("evaluation", "metrics_undefined"):
        del old[k]
    del old["stream"]["evaluation"]
    old["metrics"]["fwt"] = old_fwt  # what old files hold: -mean(b[1:])
    old["run"]["seed"] = 1
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "results.json").write_text(json.dumps(old))

    out = tmp_path / "report"
    paths = [str(runs["naive"]), str(runs["oracle"]), str(tmp_path / "old")]
    assert cl_report([*paths, "-o", str(out), "--no-push", "--panels", "metrics_table"]) == 0
    rows = json.loads((out / "summary.json").read_text())["rows"]
    by = {(r["strategy"], r["evaluation"]): r for r in rows}
    assert set(by) == {("naive", "task_agnostic"), ("adapters", "task_aware")}
    # The old file joined the naive group (inferred task_agnostic) with its fwt left out.
    assert by[("naive", "task_agnostic")]["seeds"] == [0, 1]
    assert by[("naive", "task_agnostic")]["fwt"][2] == 0
    md = (out / "report.md").read_text()
    agn = md.index("## split_digits — task-agnostic")
    aware = md.index("## split_digits — task-aware")
    # Each table lists only its own protocol's strategies.
    agn_part, aware_part = (md[agn:aware], md[aware:]) if agn < aware else (md[agn:], md[aware:agn])
    assert "| naive |" in agn_part and "| adapters |" not in agn_part
    assert "| adapters |" in aware_part and "| naive |" not in aware_part
    assert "fwt is null" in agn_part and "not comparable" in aware_part
