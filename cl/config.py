"""Structured config schemas, their registration with Hydra, and the one ``build()``.

The Hydra groups under ``conf/`` mirror the dataclasses here and in the stream, model and
strategy registries: each group file starts from ``/schema/<group>/<name>``, so a typo or a
wrong type is rejected when the config is composed, before any training.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cl import distributed
from cl.errors import ConfigError, reason
from cl.strategy import RunContext, Strategy, TrainConfig
from cl.validation import check_config, one_of, positive, unknown_keys


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

    def validate(self) -> None:
        one_of("logger.wandb", self, "mode", WANDB_MODES)
        positive("logger.wandb", self, "log_every_n_steps")


WANDB_MODES = ("auto", "online", "offline", "disabled")


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
        deterministic: ``torch.use_deterministic_algorithms(True)``, deterministic cuDNN
            (and the cuBLAS workspace setting on CUDA), and fp32 evaluation (no autocast).
        resume: A run directory to continue from its last checkpoint.
        name: Run name (default: ``<strategy>-<stream>-s<seed>``).
        allow_task_oracle: Let a strategy that needs task ids at test time run on a class_il
            or domain_il stream; its results are labelled ``task_aware`` (never ranked beside
            task-agnostic ones). Without it such a run is refused.
        plugins: Modules to import before the config is composed (they register strategies,
            streams and models; see :mod:`cl.plugins`).
        dist: Starting the processes of a distributed run (``dist.nproc_per_node``; see
            :class:`cl.distributed.LaunchConfig`).
    """

    stream: Any = MISSING
    strategy: Any = MISSING
    model: Any = MISSING
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    seed: int = 0
    device: str = "auto"
    deterministic: bool = False
    resume: str | None = None
    name: str | None = None
    allow_task_oracle: bool = False
    plugins: list[str] = field(default_factory=list)
    dist: distributed.LaunchConfig = field(default_factory=distributed.LaunchConfig)


def _run_dir(resume: str | None, default: str) -> str:
    return str(resume) if resume else default


# The Hydra config groups live at the repository root (editable install).
# Installed: cl/conf (package data); source checkout: the repository's conf/.
_PKG_CONF = Path(__file__).resolve().parent / "conf"
CONF_DIR = _PKG_CONF if _PKG_CONF.is_dir() else Path(__file__).resolve().parent.parent / "conf"


def compose_config(overrides: list[str]) -> DictConfig:
    """The run config composed in-process (tests, benchmarks), as ``cl-run`` would (plugins
    named by ``plugins=``, ``CL_PLUGINS`` or entry points imported first)."""
    from hydra import compose, initialize_config_dir

    from cl.plugins import prepare_overrides

    overrides = prepare_overrides(overrides)
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("cl_run_dir"):
        OmegaConf.register_new_resolver("cl_run_dir", _run_dir)


def register_configs() -> None:
    """Put every schema in Hydra's ConfigStore (idempotent).

    Each registered stream, model and strategy is stored as ``/schema/<group>/<name>``; one
    without a yaml of its own (in ``conf/<group>/`` or its plugin's ``conf/``) is also stored
    as the ``<group>=<name>`` choice itself, its dataclass being its default config.
    """
    from cl.models import MODELS, load_builtin_models
    from cl.strategy import STRATEGIES, load_builtin_strategies
    from cl.streams import STREAMS, load_builtin_streams

    load_builtin_streams()
    load_builtin_models()
    load_builtin_strategies()
    cs = ConfigStore.instance()
    _store(cs, None, "run_schema", RunConfig)
    _store(cs, "schema/logger", "base", LoggerConfig)
    for group, registry in (("stream", STREAMS), ("model", MODELS), ("strategy", STRATEGIES)):
        for e in registry.entries():
            _store(cs, f"schema/{group}", e.name, e.config_cls)
            if not _has_yaml(group, e):
                _store(cs, group, e.name, e.config_cls, name_field=e.name)
    register_resolvers()


def _has_yaml(group: str, entry: Any) -> bool:
    """A ``<group>/<name>.yaml`` exists in the platform's conf/ or in a plugin's of ``entry``."""
    from cl.plugins import conf_dirs

    dirs = [CONF_DIR]
    for obj in (entry.builder, entry.config_cls):
        dirs += conf_dirs(getattr(obj, "__module__", ""))
    return any((d / group / f"{entry.name}.yaml").is_file() for d in dirs)


def _store(
    cs: ConfigStore, group: str | None, name: str, cls: type, name_field: str | None = None
) -> None:
    """Store ``cls``'s schema (with its ``name`` field set to ``name_field``, if given) unless
    that very class is stored there already (storing converts the dataclass, which makes
    repeated in-process runs slow)."""
    path = f"{group}/{name}.yaml" if group else f"{name}.yaml"
    with contextlib.suppress(Exception):  # not stored yet
        if OmegaConf.get_type(cs.load(path).node) is cls:
            return
    node: Any = cls
    if name_field is not None:
        node = OmegaConf.structured(cls)
        node.name = name_field
    cs.store(group=group, name=name, node=node)


def to_dataclass(node: Any, cls: type, where: str) -> Any:
    """Validate a config node against ``cls`` and return the dataclass instance.

    Unknown keys (the closest valid name is suggested), wrong types, non-finite floats and the
    ranges of the dataclass's ``validate()`` (nested dataclasses included) are rejected with
    one :class:`ConfigError` naming the key.
    """
    if isinstance(node, DictConfig):
        unknown_keys(where, node, cls)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(cls), node)
        obj = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        msg = str(e).splitlines()[0]
        raise ConfigError(f"invalid {where} config: {msg}") from None
    check_config(where, obj)
    return obj


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
    from cl.plugins import load_plugins_of
    from cl.strategy import get_strategy
    from cl.streams import STREAMS, load_builtin_streams

    load_plugins_of(cfg)  # a sweep job in a fresh process, a resumed run

    load_builtin_streams()
    load_builtin_models()
    train: TrainConfig = to_dataclass(cfg.train, TrainConfig, "train")
    rank = distributed.current(torch.device("cpu"))
    device = resolve_device(distributed.rank_device(str(cfg.device), rank))
    dist_info = distributed.current(device)
    distributed.check_batch(train.batch_size, dist_info)
    to_dataclass(cfg.logger, LoggerConfig, "logger")

    s_entry = STREAMS.get(str(cfg.stream.name))
    stream_cfg = to_dataclass(cfg.stream, s_entry.config_cls, "stream")
    strat_cls = get_strategy(str(cfg.strategy.name))
    strat_cfg = to_dataclass(cfg.strategy, strat_cls.config_cls, "strategy")
    m_entry = MODELS.get(str(cfg.model.name))
    model_cfg = to_dataclass(cfg.model, m_entry.config_cls, "model")

    stream = s_entry.builder(stream_cfg)
    info = stream.info()
    strat_cls.check_stream(
        info, config=strat_cfg, allow_task_oracle=bool(cfg.get("allow_task_oracle", False))
    )

    torch.manual_seed(int(cfg.seed))
    model = build_model(m_entry.builder, model_cfg, info, device)
    model = distributed.sync_batch_norm(model, dist_info, device)

    from cl.streams.text2text import check_run

    check_run(stream, model, train, strat_cls)  # options meaningless on text-to-text streams
    stream = stream.to(device)
    context = RunContext(
        device=device,
        seed=int(cfg.seed),
        stream=info,
        train=train,
        past_experience=lambda i: stream.experiences[i],
        deterministic=bool(cfg.get("deterministic", False)),
        dist=dist_info,
    )
    with allocating(f"strategy {strat_cfg.name!r}", device):
        strategy = strat_cls(config=strat_cfg, model=model, context=context)
    if dist_info.enabled and train.distributed == "fsdp":
        distributed.shard_frozen(model, dist_info)
    return Built(stream=stream, model=model, strategy=strategy, context=context, train=train)


def validate_config(cfg: DictConfig) -> None:
    """Every check of :func:`build` that needs no data: the train, logger, stream, strategy and
    model configs and the device (run before Hydra creates the run directory)."""
    from cl.models import MODELS
    from cl.plugins import load_plugins_of
    from cl.strategy import get_strategy
    from cl.streams import STREAMS

    load_plugins_of(cfg)
    train = to_dataclass(cfg.train, TrainConfig, "train")
    rank = distributed.current(torch.device("cpu"))
    resolve_device(distributed.rank_device(str(cfg.device), rank))
    distributed.check_batch(train.batch_size, rank)
    to_dataclass(cfg.logger, LoggerConfig, "logger")
    to_dataclass(cfg.stream, STREAMS.get(str(cfg.stream.name)).config_cls, "stream")
    to_dataclass(cfg.strategy, get_strategy(str(cfg.strategy.name)).config_cls, "strategy")
    to_dataclass(cfg.model, MODELS.get(str(cfg.model.name)).config_cls, "model")


def build_model(builder: Any, model_cfg: Any, info: Any, device: torch.device) -> torch.nn.Module:
    """The model on ``device``; a failed allocation is a :class:`ConfigError` naming the model."""
    with allocating(f"model {model_cfg.name!r}", device):
        return builder(model_cfg, info).to(device)


@contextlib.contextmanager
def allocating(what: str, device: torch.device) -> Iterator[None]:
    """Turn an allocation failure inside the block into a :class:`ConfigError` naming ``what``."""
    try:
        yield
    except (MemoryError, RuntimeError) as e:  # torch.OutOfMemoryError is a RuntimeError
        if not isinstance(e, MemoryError | torch.OutOfMemoryError) and "allocate" not in str(e):
            raise
        detail = re.sub(r"^\[enforce fail[^\]]*\]\s*(err == 0\.\s*)?", "", reason(e))
        raise ConfigError(
            f"{what} does not fit in memory on {device} ({detail}); reduce its sizes"
        ) from None


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
