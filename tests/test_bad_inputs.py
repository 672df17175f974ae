"""Every bad input to cl-run and cl-report is one ``error:`` line naming the key, exit code 2.

The table runs through ``cl.run.cli`` in this process (the same code path as the console
script, Hydra included); a few cases run ``python -m cl.run`` end to end.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cl.config import build_model
from cl.errors import ConfigError
from cl.report import main as cl_report
from cl.run import cli
from tests.test_cli import cl_run

# (command line, text the one-line message must contain: the key and what is allowed)
CASES: list[tuple[str, str]] = [
    # the training loop
    ("train.grad_clip=-1", "train.grad_clip must be > 0 (or null)"),
    ("train.grad_clip=0", "train.grad_clip must be > 0 (or null)"),
    ("train.momentum=-0.5", "train.momentum must be in [0, 1)"),
    ("train.momentum=1.0", "train.momentum must be in [0, 1)"),
    ("train.weight_decay=-1e-4", "train.weight_decay must be >= 0"),
    ("train.lr=nan", "train.lr must be a finite number"),
    ("train.lr=inf", "train.lr must be a finite number"),
    ("train.lr=0", "train.lr must be positive"),
    ("train.epochs=0", "train.epochs must be a positive integer"),
    ("train.eval_batch_size=0", "train.eval_batch_size must be a positive integer"),
    ("train.optimizer=rmsprop", "train.optimizer 'rmsprop'; valid: sgd, adam, adamw"),
    ("train.epochs=abc", "train.epochs=abc: Value 'abc' of type 'str' could not be converted"),
    ("train.batch_size=1.5", "train.batch_size=1.5"),
    ("train.lrr=0.1", "train.lrr"),
    # models
    ("model.dropout=1.0", "model.dropout must be in [0, 1)"),
    ("model.dropout=-0.1", "model.dropout must be in [0, 1)"),
    ("model.dropout=nan", "model.dropout must be a finite number"),
    ("model.hidden_sizes=[0]", "model.hidden_sizes must be a list of numbers > 0"),
    ("model.hidden_sizes=[64,-3]", "model.hidden_sizes must be a list of numbers > 0"),
    ("model=cnn model.hidden_size=0", "model.hidden_size must be > 0"),
    ("model=cnn model.channels=[8,-1]", "model.channels must be a list of numbers > 0"),
    ("model=vit model.img_size=0", "model.img_size must be > 0"),
    ("model=vit model.pooling=max", "model.pooling must be one of cls, mean"),
    ("model=hf_encoder model.pooling=max", "model.pooling must be one of cls, mean"),
    ("model=nope", "Could not find 'model/nope'; Available options in 'model': cnn,"),
    ("model.hiden_sizes=[8]", "did you mean model.hidden_sizes?"),
    # streams
    ("stream.n_experiences=0", "stream.n_experiences must be > 0"),
    ("stream.validation_fraction=1.5", "stream.validation_fraction must be in (0, 1)"),
    ("stream.validation_fraction=0", "stream.validation_fraction must be in (0, 1)"),
    ("stream.max_train_per_experience=0", "stream.max_train_per_experience must be > 0"),
    ("stream.max_experiences=-1", "stream.max_experiences must be > 0 (or null)"),
    ("stream.validation_fraction=inf", "stream.validation_fraction must be a finite"),
    ("stream=text_offline stream.max_len=0", "stream.max_len must be > 0"),
    ("stream=text_offline stream.scenario=domain_il", "stream.scenario must be one of task_il"),
    ("stream=nope", "Available options in 'stream': five_datasets,"),
    # strategies
    ("strategy=hypernet strategy.emb_dim=0", "strategy.emb_dim must be > 0"),
    ("strategy=hypernet strategy.emb_dim=-4", "strategy.emb_dim must be > 0"),
    ("strategy=hypernet strategy.beta=nan", "strategy.beta must be a finite number"),
    ("strategy=hypernet strategy.activation=gelu", "strategy.activation must be one of relu,"),
    ("strategy=hypernet strategy.hidden_sizes=[0,5]", "strategy.hidden_sizes must be a list"),
    ("strategy=ewc strategy.fisher_max_samples=0", "strategy.fisher_max_samples must be > 0"),
    ("strategy=ewc strategy.fisher_max_samples=-10", "strategy.fisher_max_samples must be > 0"),
    ("strategy=ewc strategy.fisher_batch_size=0", "strategy.fisher_batch_size must be > 0"),
    ("strategy=ewc strategy.gamma=1.5", "strategy.gamma must be in [0, 1]"),
    ("strategy=ewc strategy.ewc_lambda=-1", "strategy.ewc_lambda must be >= 0"),
    ("strategy=ewc strategy.ewc_lambda=inf", "strategy.ewc_lambda must be a finite number"),
    ("strategy=ewc strategy.mode=offline", "strategy.mode must be one of separate, online"),
    ("strategy=ewc strategy.estimator=fast", "strategy.estimator must be one of exact,"),
    ("strategy=lwf strategy.temperature=0", "strategy.temperature must be > 0"),
    ("strategy=lwf strategy.alpha=-1", "strategy.alpha must be >= 0"),
    ("strategy=replay strategy.buffer_size=-1", "strategy.buffer_size must be >= 0"),
    ("strategy=replay strategy.policy=fifo", "strategy.policy must be one of reservoir,"),
    ("strategy=replay strategy.replay_ratio=nan", "strategy.replay_ratio must be a finite"),
    ("strategy=l2p strategy.top_k=0", "strategy.top_k must be > 0"),
    ("strategy=l2p strategy.pool_size=2 strategy.top_k=3", "strategy.top_k must be <= strategy"),
    ("strategy=qtuning strategy.capacity=1", "strategy.capacity must be >= 2"),
    ("strategy=qtuning strategy.mr_tau=0", "strategy.mr_tau must be > 0"),
    ("strategy=prompt_tuning strategy.readout=max", "strategy.readout must be one of mean,"),
    ("strategy=adapters strategy.lora_dropout=1", "strategy.lora_dropout must be in [0, 1)"),
    ("strategy=adapters strategy.router_temperature=0", "strategy.router_temperature must be"),
    ("strategy=avalanche +strategy.kwargs.si_lambda=nan", "strategy.kwargs.si_lambda must be a"),
    ("+strategy.foo=1", "unknown key strategy.foo (NaiveConfig); valid keys: name"),
    ("strategy=ewc +strategy.ewc_lambdaa=3", "did you mean strategy.ewc_lambda?"),
    ("strategy=ewc strategy.ewc_lambdaa=3", "did you mean strategy.ewc_lambda?"),
    ("strategy=nope", "Available options in 'strategy': adapters,"),
    # logger, device, resume, output directory
    ("logger.wandb.mode=bogus", "logger.wandb.mode must be one of auto, online, offline, disabled"),
    ("logger.wandb.log_every_n_steps=0", "logger.wandb.log_every_n_steps must be > 0"),
    ("device=tpu", "unknown device 'tpu'; use auto, cpu or cuda[:N]"),
    ("resume=afile", "resume=afile is a file; resume takes a cl-run run directory"),
    ("resume=missing", "resume=missing: no such directory"),
    ("resume=adir", "resume=adir is not a cl-run run directory"),
    ("hydra.run.dir=/proc/cl-run", "hydra.run.dir=/proc/cl-run cannot be written"),
    ("hydra.run.dir=afile/run", "hydra.run.dir=afile/run cannot be created"),
]


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("not a run directory\n")
    (tmp_path / "adir").mkdir()
    return tmp_path


def _one_error_line(err: str, expected: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and expected in lines[0], lines[0]
    assert "Traceback" not in err


@pytest.mark.parametrize(("args", "expected"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(args, expected, workdir, capsys):
    before = sorted(p.name for p in workdir.iterdir())
    rc = cli([*args.split(), "logger=none"])
    captured = capsys.readouterr()
    assert rc == 2
    _one_error_line(captured.err, expected)
    # Refused before Hydra starts: no run directory, no log file, nothing in resume dirs.
    assert sorted(p.name for p in workdir.iterdir()) == before
    assert list((workdir / "adir").iterdir()) == []


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ("model.hidden_sizes=[100000000000]", "model.hidden_sizes=[100000000000] needs about"),
        ("model=cnn model.hidden_size=100000000000", "model.hidden_size=100000000000 needs about"),
        ("strategy=hypernet strategy.emb_dim=100000000000", "strategy 'hypernet' does not fit"),
    ],
)
def test_model_too_large_is_refused_before_allocating(args, expected, workdir, capsys):
    """The size is known only once the stream gives the input shape: the check runs in build(),
    before any parameter is allocated (which would take the memory or fail late); what cannot
    be estimated (a strategy's own networks) fails at allocation, reported as one line too."""
    rc = cli([*args.split(), "logger=none", "hydra.run.dir=run", "device=cpu"])
    captured = capsys.readouterr()
    assert rc == 2
    _one_error_line(captured.err, expected)
    assert "memory" in captured.err


def test_allocation_failure_is_a_config_error():
    """A model that passes the estimate but cannot be allocated (a plugin's own builder here)."""

    def huge(cfg, info):
        return torch.nn.Linear(2**20, 2**22)  # 16 TiB of float32 weights

    cfg = type("Cfg", (), {"name": "huge"})()
    with pytest.raises(ConfigError, match=r"model 'huge' does not fit in memory on cpu \(Default"):
        build_model(huge, cfg, None, torch.device("cpu"))


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["train.grad_clip=0"], "train.grad_clip must be > 0"),
        (["resume=runs/missing"], "resume=runs/missing: no such directory"),
    ],
)
def test_end_to_end_through_the_console_entry(args, expected, tmp_path):
    p = cl_run(*args, cwd=tmp_path)
    assert p.returncode == 2
    _one_error_line(p.stderr, expected)
    assert list(tmp_path.iterdir()) == []  # no outputs/, no runs/missing, no log file


# ------------------------------------------------------------------------------- cl-report
def test_report_on_a_missing_path_is_one_line(tmp_path, capsys):
    rc = cl_report([str(tmp_path / "nope"), "-o", str(tmp_path / "report"), "--no-push"])
    captured = capsys.readouterr()
    assert rc == 2
    _one_error_line(captured.err, f"no such run, sweep or results file: {tmp_path / 'nope'}")
    assert not (tmp_path / "report").exists()


MALFORMED = {
    "truncated": '{"schema": 1, "run": {"name": "x"',
    "a_list": "[1, 2, 3]",
    "no_run": '{"schema": 1, "config": {}}',
    "bad_matrix": '{"run": {"status": "complete"}, "acc_matrix": [["a", "b"]]}',
    "bad_metric": '{"run": {}, "metrics": {"avg_acc": "high"}}',
    "bad_budget": '{"run": {}, "budget": [1, 2]}',
}


def test_report_skips_malformed_results_with_a_warning_naming_each(workdir, capsys):
    # A good command line runs in-process as well (exit 0, a complete run).
    good_run = ["logger=none", "debug=fast", "stream.n_experiences=2", "hydra.run.dir=runs/good"]
    assert cli(good_run) == 0
    good = json.loads((workdir / "runs" / "good" / "results.json").read_text())
    assert good["run"]["status"] == "complete" and len(good["acc_matrix"]) == 2
    for name, text in MALFORMED.items():
        (workdir / "runs" / name).mkdir(parents=True)
        (workdir / "runs" / name / "results.json").write_text(text)
    capsys.readouterr()
    rc = cl_report(["runs", "-o", "report", "--no-push", "--panels", "metrics_table,failed_runs"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    warnings = captured.err.strip().splitlines()
    assert len(warnings) == len(MALFORMED)
    for name in MALFORMED:
        assert any(
            w.startswith(f"warning: skipping {Path('runs', name, 'results.json')}: ")
            for w in warnings
        ), (name, warnings)
    assert "1 runs (0 failed or incomplete)" in captured.out
    assert (workdir / "report" / "report.html").exists()
