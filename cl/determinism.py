"""``deterministic=true``: deterministic algorithms for the duration of a run."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

CUBLAS_ENV = "CUBLAS_WORKSPACE_CONFIG"


@contextlib.contextmanager
def deterministic_mode(enabled: bool) -> Iterator[None]:
    """Within the block: ``torch.use_deterministic_algorithms(True)``, deterministic cuDNN
    without autotuning, and the cuBLAS workspace setting deterministic matmuls need on CUDA.
    The previous settings come back afterwards (runs sharing a process stay independent).
    """
    if not enabled:
        yield
        return
    cudnn = torch.backends.cudnn
    previous = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        cudnn.deterministic,
        cudnn.benchmark,
        os.environ.get(CUBLAS_ENV),
    )
    if torch.cuda.is_available() and previous[4] is None:
        os.environ[CUBLAS_ENV] = ":4096:8"
    torch.use_deterministic_algorithms(True)
    cudnn.deterministic, cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        cudnn.deterministic, cudnn.benchmark = previous[2], previous[3]
        if previous[4] is None:
            os.environ.pop(CUBLAS_ENV, None)
