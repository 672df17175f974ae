"""The budget ledger: extra state, trainable parameters, time and peak memory of a run."""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

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
    """

    trainable_params: int = 0
    extra_state_bytes: int = 0
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    samples_per_second: float = 0.0
    peak_memory_bytes: int = 0
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
