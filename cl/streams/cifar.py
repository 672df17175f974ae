"""Split CIFAR-100 (online: torchvision downloads it into ``stream.data_root``).

Pixels are in [0, 1] by default (``normalize: unit``, as L2P's reference code feeds them);
``standardize`` uses CIFAR-100's per-channel training mean and std. The ViT's input adapter
resizes the 32x32 images to its resolution unless an augmentation already did.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from cl.errors import DataNotFoundError, reason
from cl.streams import register_stream
from cl.streams.augment import normalize_images
from cl.streams.base import Stream
from cl.streams.vision import Arrays, SplitStreamConfig, Stats, split_stream

# Per-channel mean and std of CIFAR-100's training pixels in [0, 1].
CIFAR100: Stats = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))


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
    normalize: str = "unit"
    class_order_numpy_seed: int | None = None


def numpy_class_order(seed: int, n_classes: int) -> list[int]:
    """The PyCIL/PILOT class order: numpy's legacy generator seeded with ``seed``."""
    return [int(c) for c in np.random.RandomState(seed).permutation(n_classes)]


def load_cifar100_arrays(data_root: str | None, download: bool, normalize: str = "unit") -> Arrays:
    """CIFAR-100's train and test images (``[N, 3, 32, 32]``, ``normalize``d) and labels."""
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
        out += [
            normalize_images(x, normalize, *CIFAR100),
            torch.tensor(ds.targets, dtype=torch.long),
        ]
    return out[0], out[1], out[2], out[3]


@register_stream("split_cifar100", CIFAR100StreamConfig)
def split_cifar100(cfg: CIFAR100StreamConfig) -> Stream:
    """CIFAR-100 split into experiences of classes (default 10 x 10)."""
    if cfg.class_order is None and cfg.class_order_numpy_seed is not None:
        cfg = replace(cfg, class_order=numpy_class_order(cfg.class_order_numpy_seed, 100))
    arrays = load_cifar100_arrays(cfg.data_root, cfg.download, cfg.normalize)
    return split_stream(cfg, arrays, 100, (3, 32, 32), stats=CIFAR100)
