"""The budget ledger: extra state, trainable parameters, time and peak memory of a run."""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch


@dataclass
class Budget:
    """What a run spent, as written to ``results.json["budget"]``.

    Attributes:
        trainable_params: Distinct parameters the optimiser updated, max over experiences.
        extra_state_bytes: Strategy state beyond the model after the last experience.
        train_seconds: Wall time in the training loop (all experiences).
        eval_seconds: Wall time in evaluation.
        samples_per_second: Training samples processed per training second.
        peak_memory_bytes: Peak CUDA memory on GPU, peak resident set size on CPU.
        startup_seconds: Wall time of the run's one-time set-up before its first training
            step (building stream, model and strategy, loading a checkpoint, and
            :func:`warm_up`), kept out of ``train_seconds``; a resumed run adds its own.
    """

    trainable_params: int = 0
    extra_state_bytes: int = 0
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    samples_per_second: float = 0.0
    peak_memory_bytes: int = 0
    startup_seconds: float = 0.0
    train_samples: int = 0

    def to_dict(self) -> dict[str, float | int]:
        d = asdict(self)
        d.pop("train_samples")
        return d

    def add_train(self, seconds: float, samples: int) -> None:
        self.train_seconds += seconds
        self.train_samples += samples
        self.samples_per_second = (
            self.train_samples / self.train_seconds if self.train_seconds else 0.0
        )

    def update_memory(self, device: torch.device) -> None:
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(device)
        else:
            # ru_maxrss is KiB on Linux, bytes on macOS.
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            peak = rss if sys.platform == "darwin" else rss * 1024
        self.peak_memory_bytes = max(self.peak_memory_bytes, int(peak))


def count_parameters(params: object) -> int:
    """Number of distinct elements in an iterable of parameters."""
    seen: set[int] = set()
    total = 0
    for p in params:  # type: ignore[attr-defined]
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def iter_tensors(obj: Any) -> Iterator[torch.Tensor]:
    """Every tensor in a nested structure of dicts, lists, tuples, sets and dataclasses."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, Mapping):
        for v in obj.values():
            yield from iter_tensors(v)
    elif isinstance(obj, list | tuple | set | frozenset):
        for v in obj:
            yield from iter_tensors(v)
    elif hasattr(obj, "__dataclass_fields__"):
        for k in obj.__dataclass_fields__:
            yield from iter_tensors(getattr(obj, k))


def _tensor_key(t: torch.Tensor) -> tuple[int, int, int, torch.dtype]:
    return (t.untyped_storage().data_ptr(), int(t.storage_offset()), t.numel(), t.dtype)


def tensor_bytes(obj: Any, *, exclude: Collection[torch.Tensor] = ()) -> int:
    """Real bytes (numel * element size) of the distinct tensors in a nested structure.

    A tensor counted twice (the same storage, offset, size and dtype) counts once; tensors that
    share memory with one in ``exclude`` (e.g. the model's own parameters) do not count.
    """
    seen = {_tensor_key(t) for t in exclude}
    total = 0
    for t in iter_tensors(obj):
        if t.is_meta or t.layout != torch.strided:
            continue
        key = _tensor_key(t)
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    return total


def state_extra_bytes(state: Mapping[str, Any], model_state: Mapping[str, Any]) -> int:
    """Bytes of a strategy's ``state_dict()`` beyond the model's own original tensors.

    Args:
        state: The strategy's state (``{"model": model.state_dict(), ...}``).
        model_state: The model's original tensors (name -> tensor, as built): entries of
            ``state["model"]`` with these names, and any tensor sharing their memory, are the
            model's own and do not count; everything else does (buffers, Fishers, anchors,
            teachers, prompts, adapters, heads a strategy added, ...).
    """
    own = [v for v in model_state.values() if isinstance(v, torch.Tensor)]
    model = state.get("model")
    rest = {k: v for k, v in state.items() if k != "model"}
    if isinstance(model, Mapping):
        rest["model"] = {k: v for k, v in model.items() if k not in model_state}
        own += [v for k, v in model.items() if k in model_state and isinstance(v, torch.Tensor)]
    elif model is not None:
        rest["model"] = model
    return tensor_bytes(rest, exclude=own)


def warm_up(device: torch.device) -> None:
    """Pay once-per-process costs now, before any training timer starts.

    Building the first optimiser imports ``torch._dynamo`` (seconds, once per process: the
    optimisers' methods are wrapped to be skipped by the compiler); the first optimiser steps
    and CUDA kernels set up caches. One throwaway step of each built-in optimiser on the run's
    device does all of it, so ``train_seconds`` of the first experience measures training.
    """
    import torch._dynamo

    p = torch.nn.Parameter(torch.zeros(8, device=device))
    for opt in (
        torch.optim.SGD([p], lr=0.1, momentum=0.9),
        torch.optim.Adam([p], lr=0.1, fused=device.type == "cuda" or None),
        torch.optim.AdamW([p], lr=0.1, fused=device.type == "cuda" or None),
    ):
        p.grad = torch.ones_like(p)
        opt.step()
        opt.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def timer(device: torch.device) -> Iterator[list[float]]:
    """Measures wall time, synchronising CUDA so queued kernels count."""
    out = [0.0]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    try:
        yield out
    finally:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        out[0] = time.perf_counter() - t0
