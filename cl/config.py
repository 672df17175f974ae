"""Structured config schemas, their registration with Hydra, and the one ``build()``.

The Hydra groups under ``conf/`` mirror the dataclasses here and in the stream, model and
strategy registries: each group file starts from ``/schema/<group>/<name>``, so a typo or a
wrong type is rejected when the config is composed, before any training.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cl.errors import ConfigError
from cl.strategy import RunContext, Strategy, TrainConfig


@dataclass
class WandbConfig:
    """Weights & Biases sink.

    Attributes:
        enabled: Log to W&B.
        project: W&B project.
        entity: W&B entity (team or user); null for the default.
        group: Run group (defaults to the stream and strategy names).
        tags: Run tags.
        mode: ``auto`` (online when an API key is configured, else offline), ``online``,
            ``offline`` or ``disabled``.
        log_every_n_steps: Interval of ``train/loss`` points.
    """

    enabled: bool = True
    project: str = "cl-platform"
    entity: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    mode: str = "auto"
    log_every_n_steps: int = 25


@dataclass
class LoggerConfig:
    """Sinks besides results.json/metrics.csv (always written).

    Attributes:
        console: Progress bar per experience and a final metrics table.
        wandb: Weights & Biases settings.
    """

    console: bool = True
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class CheckpointConfig:
    """Per-experience checkpoints.

    Attributes:
        enabled: Write a checkpoint after every experience.
        keep_all: Keep one file per experience instead of only the latest.
    """

    enabled: bool = True
    keep_all: bool = False


@dataclass
class RunConfig:
    """The root config (``config.yaml``).

    Attributes:
        stream: Stream group (``stream=``).
        strategy: Strategy group (``strategy=``).
        model: Model group (``model=``).
        logger: Logger group (``logger=``).
        train: Training-loop settings (``train.``).
        checkpoint: Checkpoint settings.
        seed: Run seed (model init, shuffling, strategy randomness).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        resume: A run directory to continue from its last checkpoint.
        name: Run name (default: ``<strategy>-<stream>-s<seed>``).
    """

    stream: Any = MISSING
    strategy: Any = MISSING
    model: Any = MISSING
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    seed: int = 0
    device: str = "auto"
    resume: str | None = None
    name: str | None = None


def _run_dir(resume: str | None, default: str) -> str:
    return str(resume) if resume else default


# The Hydra config groups live at the repository root (editable install).
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def compose_config(overrides: list[str]) -> DictConfig:
    """The run config composed in-process (tests, benchmarks), as ``cl-run`` would."""
    from hydra import compose, initialize_config_dir

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("cl_run_dir"):
        OmegaConf.register_new_resolver("cl_run_dir", _run_dir)


def register_configs() -> None:
    """Put every schema in Hydra's ConfigStore (idempotent)."""
    from cl.models import MODELS, load_builtin_models
    from cl.strategy import STRATEGIES, load_builtin_strategies
    from cl.streams import STREAMS, load_builtin_streams

    load_builtin_streams()
    load_builtin_models()
    load_builtin_strategies()
    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=RunConfig)
    cs.store(group="schema/logger", name="base", node=LoggerConfig)
    for e in STREAMS.entries():
        cs.store(group="schema/stream", name=e.name, node=e.config_cls)
    for e in MODELS.entries():
        cs.store(group="schema/model", name=e.name, node=e.config_cls)
    for e in STRATEGIES.entries():
        cs.store(group="schema/strategy", name=e.name, node=e.config_cls)
    register_resolvers()


def to_dataclass(node: Any, cls: type, where: str) -> Any:
    """Validate a config node against ``cls`` and return the dataclass instance."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(cls), node)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        msg = str(e).splitlines()[0]
        raise ConfigError(f"invalid {where} config: {msg}") from None


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"unknown device {spec!r}; use auto, cpu or cuda[:N]") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda was requested but no CUDA device is available")
    return dev


@dataclass
class Built:
    """Everything a run needs, built from a config."""

    stream: Any
    model: torch.nn.Module
    strategy: Strategy[Any]
    context: RunContext
    train: TrainConfig


def build(cfg: DictConfig) -> Built:
    """Config -> (stream, model, strategy). The single place where configs become objects."""
    from cl.models import MODELS, load_builtin_models
    from cl.strategy import get_strategy
    from cl.streams import STREAMS, load_builtin_streams

    load_builtin_streams()
    load_builtin_models()
    train: TrainConfig = to_dataclass(cfg.train, TrainConfig, "train")
    train.validate()
    device = resolve_device(str(cfg.device))

    s_entry = STREAMS.get(str(cfg.stream.name))
    stream_cfg = to_dataclass(cfg.stream, s_entry.config_cls, "stream")
    stream = s_entry.builder(stream_cfg)
    info = stream.info()

    strat_cls = get_strategy(str(cfg.strategy.name))
    strat_cfg = to_dataclass(cfg.strategy, strat_cls.config_cls, "strategy")
    strat_cls.check_stream(info)

    torch.manual_seed(int(cfg.seed))
    m_entry = MODELS.get(str(cfg.model.name))
    model_cfg = to_dataclass(cfg.model, m_entry.config_cls, "model")
    model = m_entry.builder(model_cfg, info).to(device)

    stream = stream.to(device)
    context = RunContext(
        device=device,
        seed=int(cfg.seed),
        stream=info,
        train=train,
        past_experience=lambda i: stream.experiences[i],
    )
    strategy = strat_cls(config=strat_cfg, model=model, context=context)
    return Built(stream=stream, model=model, strategy=strategy, context=context, train=train)


def load_run_config(run_dir: Path) -> DictConfig:
    """The composed config a run was started with (for ``resume=``)."""
    path = run_dir / ".hydra" / "config.yaml"
    if not path.exists():
        raise ConfigError(f"cannot resume: {path} not found (is {run_dir} a cl-run directory?)")
    cfg = OmegaConf.load(path)
    assert isinstance(cfg, DictConfig)
    return cfg


def default_run_name(cfg: DictConfig) -> str:
    return str(cfg.get("name") or f"{cfg.strategy.name}-{cfg.stream.name}-s{cfg.seed}")


def now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
