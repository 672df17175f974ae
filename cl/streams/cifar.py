"""Split CIFAR-100 (online: torchvision downloads it into ``stream.data_root``).

Pixels are scaled to [0, 1] as in L2P (Wang et al., 2022); the ViT's input adapter resizes the
32x32 images to its resolution.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from cl.errors import DataNotFoundError, reason
from cl.streams import register_stream
from cl.streams.base import Stream
from cl.streams.vision import Arrays, SplitStreamConfig, split_stream


@dataclass
class CIFAR100StreamConfig(SplitStreamConfig):
    """Split CIFAR-100; ``data_root`` null means ``~/.cache/cl-platform/data``.

    Attributes:
        class_order_numpy_seed: When set (and ``class_order`` is null), the class order is
            ``numpy.random.RandomState(seed).permutation(100)``, the shuffle of PyCIL, PILOT
            and RanPAC (``np.random.seed(seed); np.random.permutation(n)``; seed 1993 in their
            published runs).
    """

    name: str = "split_cifar100"
    n_experiences: int = 10
    class_order_numpy_seed: int | None = None


def numpy_class_order(seed: int, n_classes: int) -> list[int]:
    """The PyCIL/PILOT class order: numpy's legacy generator seeded with ``seed``."""
    return [int(c) for c in np.random.RandomState(seed).permutation(n_classes)]


def load_cifar100_arrays(data_root: str | None, download: bool) -> Arrays:
    root = Path(data_root) if data_root else Path.home() / ".cache" / "cl-platform" / "data"
    try:
        from torchvision.datasets import CIFAR100

        sets = [CIFAR100(str(root), train=t, download=download) for t in (True, False)]
    except Exception as e:  # missing files offline, network errors
        msg = reason(e)
        raise DataNotFoundError(
            f"CIFAR-100 is not in {root} and could not be downloaded ({msg}). Run once while "
            "online with stream.download=true, or copy the torchvision 'cifar-100-python' folder "
            "into stream.data_root."
        ) from None
    out: list[torch.Tensor] = []
    for ds in sets:
        x = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).float() / 255.0
        out += [x, torch.tensor(ds.targets, dtype=torch.long)]
    return out[0], out[1], out[2], out[3]


@register_stream("split_cifar100", CIFAR100StreamConfig)
def split_cifar100(cfg: CIFAR100StreamConfig) -> Stream:
    """CIFAR-100 split into experiences of classes (default 10 x 10)."""
    if cfg.class_order is None and cfg.class_order_numpy_seed is not None:
        cfg = replace(cfg, class_order=numpy_class_order(cfg.class_order_numpy_seed, 100))
    return split_stream(cfg, load_cifar100_arrays(cfg.data_root, cfg.download), 100, (3, 32, 32))
