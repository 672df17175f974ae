"""Multi-process runs on ``torch.distributed``: one process per device, started by ``torchrun``
(or any launcher that sets ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK`` and the rendezvous
variables ``MASTER_ADDR``/``MASTER_PORT``, such as SLURM with one task per GPU).

Data parallelism, exact to one process with the same global batch:

* every rank builds the same stream, model and strategy from the same seeds, and iterates the
  same global batches (``train.batch_size`` is the global batch); each rank keeps its strided
  shard of every batch (per-rank batch ``batch_size / world_size``);
* after ``backward`` the gradients of the trainable parameters (the model's and every parameter
  a strategy adds: prompts, keys, adapters, heads, hypernetworks) are summed over ranks with one
  ``all_reduce``, each rank's loss weighted by its share of the global batch, so the update is
  the one-process update of the whole batch (what DDP does, done on the strategy's own
  parameter list, so forward hooks, prompt pools and parameters outside the model need no
  wrapper);
* tensors a strategy accumulates from its shard while training (listed in
  ``Strategy.shard_reduced``) are summed over ranks before ``after_experience``; everything
  else a strategy keeps (buffers, Fishers, teachers, queues, routers) is computed from the
  whole experience with the shared generators, so it is identical on every rank;
* evaluation is sharded: each rank scores a slice of every test set, the counts are summed;
* only rank 0 writes (results.json, metrics.csv, checkpoints, console, W&B).

``cl-run dist.nproc_per_node=N ...`` starts the N processes itself: it runs
``python -m torch.distributed.run --standalone --nproc_per_node=N -m cl.run ...`` with the same
command line (see :func:`launch`).

Collectives have a timeout (``CL_DIST_TIMEOUT`` seconds, default 90): a rank that dies makes
the others fail within it instead of hanging (``torchrun`` also stops them at once).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from cl.errors import ConfigError

TIMEOUT_ENV = "CL_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 90.0
MODES = ("ddp", "fsdp")
T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the run.

    Attributes:
        rank: Global rank (0 writes the run's files).
        world_size: Number of processes (1: a single-process run).
        local_rank: Rank on this node (selects ``cuda:<local_rank>``).
        backend: The process group's backend for the run's device (``gloo``, ``nccl``), None
            for a single process.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = DistInfo()


@dataclass
class LaunchConfig:
    """``dist.`` on the ``cl-run`` command line.

    Attributes:
        nproc_per_node: More than 1: ``cl-run`` starts this many processes on this node under
            ``torchrun --standalone`` (one per GPU, or CPU processes with ``device=cpu``) and
            waits for them. Read from the command line; under an existing launcher it must
            equal the launcher's processes per node. Several nodes: start ``torchrun`` itself.
    """

    nproc_per_node: int = 1


def requested_procs(argv: Sequence[str]) -> int:
    """``dist.nproc_per_node`` of a ``cl-run`` command line (1 when absent).

    Raises:
        ConfigError: Not a positive integer, with a sweep (``-m``), or different from the
            launcher's processes per node.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    key = "dist.nproc_per_node"
    parser = OverridesParser.create()
    parsed = []
    for arg in argv:
        if key in arg:
            with contextlib.suppress(Exception):  # malformed: Hydra reports it
                parsed += parser.parse_overrides([arg])
    n = 1
    for o in parsed:
        if o.key_or_group.lstrip("+") == key and not o.is_delete():
            value = o.value()
            if o.is_sweep_override() or isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{key} must be one positive integer, got {value!r}")
            n = value
    if n < 1:
        raise ConfigError(f"{key} must be a positive integer, got {n}")
    if n > 1 and any(a in ("-m", "--multirun") or a.startswith("--multirun") for a in argv):
        raise ConfigError(
            f"{key} starts the processes of one run; sweep with one process per job, or "
            "with hydra/launcher=submitit_slurm and hydra.launcher.tasks_per_node"
        )
    local = os.environ.get("LOCAL_WORLD_SIZE")
    if n > 1 and local is not None and local != str(n):
        raise ConfigError(
            f"{key}={n} but the launcher started {local} processes on this node; "
            f"drop {key} when starting cl-run with torchrun"
        )
    return n


def launch(argv: Sequence[str], nproc: int) -> int:
    """Run ``cl-run argv`` as ``nproc`` processes under ``torchrun --standalone``; its exit code.

    Every process gets the same command line (and rank 0's run directory, see
    :mod:`cl.run`); the parent only waits.
    """
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += [f"--nproc_per_node={nproc}", "-m", "cl.run", *argv]
    try:
        return subprocess.call(cmd)
    except KeyboardInterrupt:  # the children got the signal too and stop on their own
        return 130


def _env_int(name: str, default: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None:
        if default is None:
            raise ConfigError(f"{name} is not set; start distributed runs with torchrun")
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None


def env_world_size() -> int:
    """``WORLD_SIZE`` from the launcher's environment (1 when absent)."""
    return _env_int("WORLD_SIZE", 1)


def timeout() -> _dt.timedelta:
    raw = os.environ.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT_S))
    try:
        seconds = float(raw)
    except ValueError:
        raise ConfigError(f"{TIMEOUT_ENV}={raw!r} is not a number of seconds") from None
    if not seconds > 0:
        raise ConfigError(f"{TIMEOUT_ENV} must be positive, got {raw}")
    return _dt.timedelta(seconds=seconds)


def init_from_env() -> DistInfo:
    """Join the process group the launcher describes (no-op for one process).

    The group serves CPU tensors with gloo and, where CUDA and NCCL exist, CUDA tensors with
    NCCL. Raises :class:`ConfigError` for an inconsistent environment.
    """
    world = env_world_size()
    if world < 1:
        raise ConfigError(f"WORLD_SIZE must be >= 1, got {world}")
    if world == 1:
        return SINGLE
    import torch.distributed as dist

    if not dist.is_available():
        raise ConfigError("this torch build has no torch.distributed; run in one process")
    rank = _env_int("RANK")
    local = _env_int("LOCAL_RANK", rank)
    if not 0 <= rank < world:
        raise ConfigError(f"RANK={rank} is outside the world size WORLD_SIZE={world}")
    for var in ("MASTER_ADDR", "MASTER_PORT"):
        if var not in os.environ:
            raise ConfigError(f"{var} is not set; start distributed runs with torchrun")
    if not dist.is_initialized():
        backend = "gloo"
        if torch.cuda.is_available() and dist.is_nccl_available():
            backend = "cpu:gloo,cuda:nccl"
        if not dist.is_gloo_available():
            raise ConfigError("this torch build has no gloo backend for CPU collectives")
        dist.init_process_group(backend=backend, timeout=timeout())
    if dist.get_world_size() != world:
        raise ConfigError(
            f"WORLD_SIZE={world} but the process group has {dist.get_world_size()} ranks"
        )
    return DistInfo(rank=rank, world_size=world, local_rank=local)


def init_for_job() -> tuple[DistInfo, bool]:
    """The process group of a Hydra job: the one ``cl-run`` joined under torchrun, or, for a
    job the submitit SLURM launcher started as several tasks (``tasks_per_node``), one joined
    here from SLURM's environment (one task per GPU).

    Returns:
        This process's :class:`DistInfo` and whether this call joined the group (the job then
        leaves it with :func:`shutdown`).
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return current(torch.device("cpu")), False
    ntasks = os.environ.get("SLURM_NTASKS", "1")
    if os.environ.get("SUBMITIT_EXECUTOR") != "slurm" or not ntasks.isdigit() or int(ntasks) < 2:
        return SINGLE, False
    from submitit.helpers import TorchDistributedEnvironment

    TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    return init_from_env(), True


def current(device: torch.device) -> DistInfo:
    """The running process group's :class:`DistInfo` for a run on ``device``."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return SINGLE
    rank = dist.get_rank()
    local = _env_int("LOCAL_RANK", rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    return DistInfo(rank=rank, world_size=dist.get_world_size(), local_rank=local, backend=backend)


def rank_device(spec: str, info: DistInfo) -> str:
    """The device spec of this rank: ``cuda``/``auto`` become ``cuda:<local_rank>``."""
    if not info.enabled:
        return spec
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cuda":
        n = torch.cuda.device_count()
        if n == 0:
            raise ConfigError("device=cuda was requested but no CUDA device is available")
        import torch.distributed as dist

        if not dist.is_nccl_available():
            raise ConfigError("device=cuda needs the NCCL backend, which this torch build lacks")
        if info.local_rank >= n:
            raise ConfigError(
                f"LOCAL_RANK={info.local_rank} needs cuda:{info.local_rank} but this node has "
                f"{n} GPU(s); start at most {n} processes per node"
            )
        return f"cuda:{info.local_rank}"
    return spec


def check_batch(batch_size: int, info: DistInfo) -> None:
    """The global batch must split evenly over the ranks."""
    if info.enabled and batch_size % info.world_size:
        raise ConfigError(
            f"train.batch_size={batch_size} (the global batch) must be a multiple of the "
            f"world size {info.world_size}"
        )


def shard_rows(n: int, info: DistInfo) -> slice:
    """This rank's strided share of ``n`` rows (the rows ``rank, rank + N, ...``)."""
    return slice(info.rank, n, info.world_size) if info.enabled else slice(0, n)


def shard_batch(batch: Any, info: DistInfo) -> tuple[Any, float]:
    """This rank's shard of a global batch and its weight (its share of the batch's samples;
    of its labelled tokens when labels are per token, as the loss of a language model averages
    over tokens).

    A rank whose shard would be empty (a last batch smaller than the world size) gets the
    batch's first sample with weight 0, so it still runs the step and its collectives. A batch
    that already is the rank's shard (``share`` set: loaded so by a Dataset stream) is kept.
    The returned batch carries its weight as ``share``.
    """
    if batch.share is not None:
        return batch, batch.share
    n = len(batch.y)
    if not info.enabled:
        return batch, 1.0
    rows = shard_rows(n, info)
    size = len(range(n)[rows])
    if size == 0:
        rows, weight = slice(0, 1), 0.0
    else:
        weight = size / n
        if batch.y.dim() > 1:  # token labels (language models): the loss is a token mean
            total = int((batch.y != -100).sum())
            weight = int((batch.y[rows] != -100).sum()) / total if total else weight
    t = None if batch.task_ids is None else batch.task_ids[rows]
    return type(batch)(batch.x[rows], batch.y[rows], t, weight), weight


def reduce_gradients(params: Sequence[nn.Parameter], weighted_loss: Tensor) -> Tensor:
    """Sum the (share-weighted) gradients of ``params`` and the loss over all ranks.

    One ``all_reduce`` carries a has-gradient mask, the second carries the gradients and the
    loss flattened together. A parameter that got a gradient on some rank gets the sum on all
    (zeros where a rank's shard did not reach it), as one process on the whole batch would.

    Returns:
        The loss of the global batch (the sum of the weighted losses).
    """
    import torch.distributed as dist

    device = weighted_loss.device
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=device)
    dist.all_reduce(has)
    grads: list[Tensor] = []
    for p, h in zip(params, has.tolist(), strict=True):
        if h:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
    flat = torch.cat([weighted_loss.detach().float().reshape(1)] + [g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    offset = 1
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()
    return flat[0]


def summed_gradients(params: Sequence[nn.Parameter], info: DistInfo) -> list[Tensor | None]:
    """The gradients of ``params`` summed over ranks, as new tensors (each ``.grad`` stays the
    rank's own); None where no rank has one. Alone: the ``.grad`` tensors themselves.

    For a step previewed before the loop reduces the gradients (a look-ahead regulariser).
    """
    if not info.enabled:
        return [p.grad for p in params]
    import torch.distributed as dist

    device = params[0].device if params else torch.device("cpu")
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=device)
    dist.all_reduce(has)
    live = [(i, p) for i, (p, h) in enumerate(zip(params, has.tolist(), strict=True)) if h]
    out: list[Tensor | None] = [None] * len(params)
    if not live:  # the same on every rank (the mask is reduced)
        return out
    flat = torch.cat(
        [(torch.zeros_like(p) if p.grad is None else p.grad).reshape(-1) for _, p in live]
    )
    dist.all_reduce(flat)
    offset = 0
    for i, p in live:
        out[i] = flat[offset : offset + p.numel()].view_as(p)
        offset += p.numel()
    return out


def reduce_shard_state(strategy: Any, info: DistInfo) -> None:
    """Sum, over ranks, the tensors a strategy accumulated from its shard while training."""
    if not info.enabled:
        return
    import torch.distributed as dist

    for name in getattr(strategy, "shard_reduced", ()):
        value = getattr(strategy, name)
        if isinstance(value, Tensor):
            dist.all_reduce(value)


def owned(items: Iterable[T], info: DistInfo) -> Iterator[T]:
    """This rank's items of work shared round-robin over the ranks (all of them alone)."""
    for k, item in enumerate(items):
        if k % info.world_size == info.rank:
            yield item


def sum_tensors(tensors: Iterable[Tensor], info: DistInfo) -> None:
    """Sum each tensor over ranks, in place (one flattened ``all_reduce``; no-op alone)."""
    if not info.enabled:
        return
    import torch.distributed as dist

    ts = list(tensors)
    if not ts:
        return
    flat = torch.cat([t.reshape(-1) for t in ts])
    dist.all_reduce(flat)
    offset = 0
    for t in ts:
        t.copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()


def sum_over_ranks(values: Iterable[int | float], device: torch.device) -> list[float]:
    """Element-wise sums of ``values`` over ranks (float64)."""
    import torch.distributed as dist

    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return [float(v) for v in t.tolist()]


def agree(error: BaseException | None, info: DistInfo) -> None:
    """A collective check: if any rank failed a step, every rank raises.

    The failing rank re-raises its own error; the others raise :class:`ConfigError` naming it.
    """
    if not info.enabled:
        if error is not None:
            raise error
        return
    import torch.distributed as dist

    msgs: list[Any] = [None] * info.world_size
    dist.all_gather_object(msgs, None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    for rank, msg in enumerate(msgs):
        if msg is not None:
            raise ConfigError(f"rank {rank} failed: {msg.split(': ', 1)[-1]}")


def broadcast(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not info.enabled:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shutdown() -> None:
    """Leave the process group (when one was joined)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def sync_batch_norm(model: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    """Batch norm over the global batch (``SyncBatchNorm``) in a distributed run, so running
    statistics stay identical on every rank; SyncBatchNorm needs CUDA."""
    bn = nn.modules.batchnorm._BatchNorm
    if not info.enabled or not any(isinstance(m, bn) for m in model.modules()):
        return model
    if device.type != "cuda":
        raise ConfigError(
            "batch norm in a distributed run needs SyncBatchNorm, which runs on CUDA only: use "
            "device=cuda or a model without batch norm (e.g. model.batch_norm=false)"
        )
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def inference(model: nn.Module) -> contextlib.AbstractContextManager[Any]:
    """``inference_mode`` for evaluation; ``no_grad`` where FSDP2 shards blocks of ``model``
    (its all-gathered weights are reused by training, so they cannot be inference tensors)."""
    from torch.distributed.tensor import DTensor

    if any(isinstance(p, DTensor) for p in model.parameters()):
        return torch.no_grad()
    return torch.inference_mode()


def shard_frozen(model: nn.Module, info: DistInfo) -> list[str]:
    """FSDP2 (``fully_shard``) on the frozen blocks of ``model`` (``train.distributed=fsdp``).

    Every element of a ``ModuleList``/``Sequential`` whose parameters are all frozen (the
    transformer blocks of a frozen backbone) is sharded over the ranks: each rank keeps
    ``1 / world_size`` of its weights and all-gathers them for the block's forward (and
    backward, for gradients that flow through it to prompts). Trainable parameters stay whole
    on every rank. Frozen sharded weights are left out of ``model.state_dict()`` (checkpoints,
    cross-rank hashes): they never change and are rebuilt by the model's builder on resume.

    Returns:
        The names of the sharded blocks.

    Raises:
        ConfigError: Nothing frozen to shard (the strategy trains the whole model).
    """
    from torch.distributed.fsdp import fully_shard

    blocks: list[tuple[str, nn.Module]] = []
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.ModuleList | nn.Sequential):
            continue
        for i, child in enumerate(mod):
            params = list(child.parameters())
            inside = any(name == b or name.startswith(b + ".") for b, _ in blocks)
            if params and not inside and not any(p.requires_grad for p in params):
                blocks.append((f"{name}.{i}" if name else str(i), child))
    if not blocks:
        raise ConfigError(
            "train.distributed=fsdp shards the frozen blocks of a backbone, and this model has "
            "none (the strategy trains them): use train.distributed=ddp"
        )
    if not info.enabled:
        return [b for b, _ in blocks]
    sharded: set[str] = set()
    for name, child in blocks:
        fully_shard(child)
        sharded |= {f"{name}.{k}" for k, _ in child.named_parameters()}

    def drop(module: nn.Module, state: dict[str, Any], prefix: str, meta: Any) -> None:
        for k in [k for k in state if k[len(prefix) :] in sharded]:
            del state[k]

    def allow_missing(module: nn.Module, keys: Any) -> None:
        keys.missing_keys[:] = [k for k in keys.missing_keys if k not in sharded]

    model._register_state_dict_hook(drop)
    model.register_load_state_dict_post_hook(allow_missing)
    return [b for b, _ in blocks]
