"""Extending without forking: the README's "your own strategy in your own repo" walkthrough,
run from a throwaway package outside the repository, through ``plugins=`` and through an
installed entry point (a 2-job sweep), with a decoy ``strategies/`` folder in the working
directory; the contract kit on that strategy; plugin errors; and (slow) a wheel installed into
a fresh virtual environment."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from cl import results
from cl.plugins import ENTRY_POINT_GROUP, conf_dirs, normalize_overrides, override_plugins

REPO = Path(__file__).resolve().parents[1]
SECTION = "## Your own strategy in your own repo"
SMALL = (
    "logger=none",
    "device=cpu",
    "stream=split_digits",
    "stream.n_experiences=2",
    "stream.max_train_per_experience=100",
    "stream.max_test_per_experience=40",
    "train.epochs=1",
)
# Not in the README: a model registered without a yaml (its dataclass is its config).
EXTRAS = """
from dataclasses import dataclass

from torch import nn

from cl.models import CLModel, ModelConfig, make_head, register_model


@dataclass
class TinyLinearConfig(ModelConfig):
    name: str = "tiny_linear"
    width: int = 16


@register_model("tiny_linear", TinyLinearConfig)
def tiny_linear(cfg, info):
    n_in = 1
    for d in info.input_shape:
        n_in *= d
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(n_in, cfg.width), nn.ReLU())
    return CLModel(backbone, make_head(cfg, cfg.width, info), cfg.width)
"""


def readme_files() -> dict[str, str]:
    """The files of the README's walkthrough: each code block opens with ``# <path>``."""
    text = (REPO / "README.md").read_text().split(SECTION, 1)[1].split("\n## ", 1)[0]
    files = {}
    for body in re.findall(r"```\w+\n(.*?)```", text, re.S):
        m = re.match(r"# ([\w./-]+\.(?:py|yaml|toml))\b", body)
        if m:
            files[m.group(1)] = body
    return files


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """The user's repository: the README's files, plus a decoy ``strategies/`` folder that
    breaks any run importing it."""
    root = tmp_path_factory.mktemp("user_repo")
    files = readme_files()
    assert {"my_cl/mine.py", "my_cl/conf/strategy/mine.yaml", "pyproject.toml"} <= set(files)
    for rel, body in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(body)
    (root / "my_cl" / "__init__.py").write_text("")
    (root / "my_cl" / "extras.py").write_text(EXTRAS)
    (root / "strategies").mkdir()
    decoy = "raise RuntimeError('the user folder strategies/ was imported')\n"
    (root / "strategies" / "__init__.py").write_text(decoy)
    (root / "strategies" / "naive.py").write_text(decoy)
    git = ("git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@example.org")
    for cmd in (("init", "-q"), ("add", "-A"), ("commit", "-qm", "mine")):
        subprocess.run([*git, *cmd], check=True, capture_output=True)
    return root


def run_cl(*args: str, cwd: Path, pythonpath: list[Path] = ()) -> subprocess.CompletedProcess:
    """``cl-run`` as its console script runs (the working directory is not on sys.path)."""
    script = cwd.parent / f"{cwd.name}-cl-run.py"
    script.write_text("import sys\nfrom cl.run import main\nsys.exit(main())\n")
    path = [*map(str, pythonpath), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    env["PYTHONPATH"] = os.pathsep.join(path)
    env.pop("CL_PLUGINS", None)
    return subprocess.run(
        [sys.executable, str(script), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_plugins_list_runs_the_users_strategy_with_its_yaml(project):
    p = run_cl("plugins=[my_cl.mine]", "strategy=mine", *SMALL, "hydra.run.dir=run", cwd=project)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads((project / "run" / "results.json").read_text())
    assert res["run"]["status"] == "complete"
    assert res["config"]["strategy"] == {"name": "mine", "pull": 0.5}  # from its yaml
    assert res["config"]["plugins"] == ["my_cl.mine"]
    assert len(res["acc_matrix"]) == 2 and 0.0 <= res["metrics"]["avg_acc"] <= 1.0
    # The anchor is state beyond the model: the ledger counts it (one copy of every weight).
    n_params = res["per_experience"][0]["model_params"]
    assert res["budget"]["extra_state_bytes"] >= 4 * n_params
    # Provenance: the commit of the user's repository.
    head = subprocess.run(
        ["git", "-C", str(project), "rev-parse", "--short=12", "HEAD"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert res["run"]["versions"]["plugin:my_cl"] == f"git {head}"


@pytest.fixture(scope="module")
def installed(project, tmp_path_factory) -> Path:
    """The package "installed": a copy on a site folder with its ``.dist-info`` (the entry
    points of the README's pyproject.toml, plus one for the extras module)."""
    site = tmp_path_factory.mktemp("site")
    (site / "my_cl").mkdir()
    for f in (project / "my_cl").rglob("*"):
        if f.is_file() and "__pycache__" not in f.parts:
            dest = site / "my_cl" / f.relative_to(project / "my_cl")
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(f.read_text())
    meta = tomllib.loads((project / "pyproject.toml").read_text())
    eps = meta["project"]["entry-points"][ENTRY_POINT_GROUP]
    assert eps == {"mine": "my_cl.mine"}
    info = site / "my_cl_demo-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-cl-demo\nVersion: 0.1\n")
    lines = [f"{k} = {v}" for k, v in {**eps, "extras": "my_cl.extras"}.items()]
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n" + "\n".join(lines) + "\n")
    return site


@pytest.fixture(scope="module")
def sweep(project, installed, tmp_path_factory) -> Path:
    """A 2-job sweep of the installed strategy on the installed model, from another folder
    (with a decoy ``strategies/`` too)."""
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    (elsewhere / "strategies").mkdir()
    (elsewhere / "strategies" / "__init__.py").write_text("raise RuntimeError('imported')\n")
    out = elsewhere / "sweep"
    p = run_cl(
        "-m",
        "strategy=mine",
        "model=tiny_linear",
        *SMALL,
        "seed=0,1",
        f"hydra.sweep.dir={out}",
        cwd=elsewhere,
        pythonpath=[installed],
    )
    assert p.returncode == 0, p.stderr[-3000:]
    return out


def test_entry_point_sweep_gives_complete_runs_and_results_loads_them(sweep):
    df = results.load(sweep)
    assert len(df) == 2
    assert set(df["status"]) == {"complete"}
    assert sorted(df["seed"]) == [0, 1]
    assert set(df["strategy"]) == {"mine"} and set(df["config.strategy.pull"]) == {0.5}
    assert set(df["model"]) == {"tiny_linear"} and set(df["config.model.width"]) == {16}
    assert set(df["evaluation"]) == {"task_agnostic"}
    for col in ("avg_acc", "forgetting", "task_aware/avg_acc", "budget/extra_state_bytes"):
        assert df[col].between(-1.0, 1e9).all(), col
    assert all(len(m) == 2 and len(m[0]) == 2 for m in df["acc_matrix"])
    assert all(len(m) == 2 for m in df["acc_matrix_task_aware"])
    assert df["fwt"].isna().all() and (df["metrics_undefined"].map(len) > 0).all()
    agg = results.aggregate(df)
    assert len(agg) == 1 and agg.loc[0, "n_runs"] == 2 and agg.loc[0, "seeds"] == (0, 1)
    assert agg.loc[0, "avg_acc/mean"] == pytest.approx(df["avg_acc"].mean())


def test_contract_kit_reports_every_contract_of_the_users_strategy(project, monkeypatch):
    from cl.strategy import STRATEGIES
    from cl.testing import CONTRACTS, DEFAULT_SETUP, check_strategy

    monkeypatch.syspath_prepend(str(project))
    try:
        small = (*DEFAULT_SETUP, "stream.max_train_per_experience=60")
        report = check_strategy("mine", setup=small, extra=["plugins=[my_cl.mine]"], verbose=False)
        assert [r.name for r in report.results] == list(CONTRACTS)
        assert report.passed, str(report)
        assert "PASS  resume_inside_experience" in str(report)

        # A broken ledger (the anchor not counted) is reported as that contract failing.
        mine = STRATEGIES.get("mine").builder
        monkeypatch.setattr(mine, "extra_state_bytes", lambda self: 0)
        broken = check_strategy(mine, setup=small, resume=False, verbose=False)
        assert [r.name for r in broken.failures()] == ["ledger_complete"]
        assert "extra_state_bytes 0 <" in broken["ledger_complete"].detail
        with pytest.raises(AssertionError, match="FAIL  ledger_complete"):
            broken.assert_passed()
    finally:
        STRATEGIES.unregister("mine")
        for name in [m for m in sys.modules if m == "my_cl" or m.startswith("my_cl.")]:
            del sys.modules[name]


def test_a_plugin_that_fails_to_import_is_one_line(tmp_path, capsys, monkeypatch):
    from cl.run import cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the working directory joins it
    (tmp_path / "bad_plugin.py").write_text("import not_a_module_anywhere\n")
    assert cli(["plugins=[bad_plugin]", "logger=none"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "error: plugin 'bad_plugin' failed to import: ModuleNotFoundError: "
        "No module named 'not_a_module_anywhere'"
    )
    assert not (tmp_path / "outputs").exists()
    monkeypatch.setenv("CL_PLUGINS", "no_such_plugin_module")
    assert cli(["logger=none"]) == 2
    assert "plugin 'no_such_plugin_module' failed to import" in capsys.readouterr().err
    assert "bad_plugin" not in sys.modules


def test_plugin_overrides_and_conf_folders(tmp_path):
    tmp_path = tmp_path.resolve()
    assert override_plugins(["plugins=[a.b,c]", "seed=1"]) == ["a.b", "c"]
    assert normalize_overrides(["plugins=a.b", "+plugins=c"]) == ["plugins=[a.b]", "+plugins=[c]"]
    assert override_plugins(normalize_overrides(["plugins=a.b"])) == ["a.b"]
    # conf/ next to a top-level module; in a package; at the root of a source tree.
    (tmp_path / "conf").mkdir()
    (tmp_path / "pkg" / "sub" / "conf").mkdir(parents=True)
    (tmp_path / "pkg" / "conf").mkdir()
    (tmp_path / "pyproject.toml").write_text("")

    class Fake:
        def __init__(self, name: str, file: Path) -> None:
            self.__name__, self.__file__ = name, str(file)

    top = Fake("mod", tmp_path / "mod.py")
    deep = Fake("pkg.sub.mod", tmp_path / "pkg" / "sub" / "mod.py")
    assert conf_dirs(top) == [tmp_path / "conf"]  # type: ignore[arg-type]
    assert conf_dirs(deep) == [  # type: ignore[arg-type]
        tmp_path / "pkg" / "sub" / "conf",
        tmp_path / "pkg" / "conf",
        tmp_path / "conf",
    ]


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_runs_from_any_folder(tmp_path):
    """(slow) The wheel carries the configs and the built-in strategies: installed into a fresh
    virtual environment (its copy shadows any other), ``cl-run`` runs from ``/``."""
    import shutil

    src = tmp_path / "src"
    junk = ("outputs", "multirun", "wandb", "build", "dist", ".venv", ".git", "*.egg-info")
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(*junk, "__pycache__", ".*_cache"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CL_PLUGINS")}
    env.update(OMP_NUM_THREADS="1", WANDB_MODE="offline", PIP_NO_INPUT="1")

    def sh(*cmd: str | Path, cwd: Path = tmp_path) -> str:
        p = subprocess.run(
            list(map(str, cmd)), cwd=cwd, env=env, capture_output=True, text=True, timeout=600
        )
        assert p.returncode == 0, f"{cmd}: {p.stderr[-3000:]}"
        return p.stdout

    pip = ("-m", "pip", "--disable-pip-version-check")
    sh(sys.executable, *pip, "wheel", "--no-deps", "--no-build-isolation", "-w", "wheels", src)
    (wheel,) = (tmp_path / "wheels").glob("cl_platform-*.whl")
    sh(sys.executable, "-m", "venv", "--system-site-packages", "venv")
    py, cl_run = tmp_path / "venv" / "bin" / "python", tmp_path / "venv" / "bin" / "cl-run"
    sh(py, *pip, "install", "--no-deps", "--no-index", wheel)
    where = sh(py, "-c", "import cl, cl.strategies; print(cl.__file__, cl.strategies.__file__)")
    assert all(p.startswith(str(tmp_path / "venv")) for p in where.split()), where

    run = tmp_path / "run"
    sh(cl_run, *SMALL, "strategy=ewc", f"hydra.run.dir={run}", cwd=Path("/"))
    res = json.loads((run / "results.json").read_text())
    assert res["run"]["status"] == "complete" and res["config"]["strategy"]["name"] == "ewc"
