"""5-datasets (Ebrahimi et al., "Adversarial Continual Learning", ECCV 2020), as used by L2P.

Five experiences, one dataset each, in the order CIFAR-10, MNIST, Fashion-MNIST, SVHN,
notMNIST; every image becomes 3x32x32 in [0, 1] (grey images are resized and repeated over
channels); ``normalize: standardize`` then uses the per-channel mean and std of the training
images of the datasets in the stream. Experience ``i`` owns global labels
``10 i .. 10 i + 9`` (50 classes in class_il).

CIFAR-10, MNIST and SVHN download through torchvision into ``data_root``; Fashion-MNIST comes
from the Debian package or ``data_root``; notMNIST is not in torchvision: put the extracted
``notMNIST_small`` folder (one sub-folder per letter A-J) under ``data_root``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from cl.errors import ConfigError, DataNotFoundError, reason
from cl.streams import register_stream
from cl.streams.augment import make_pipeline, normalize_images
from cl.streams.base import Experience, Stream, TensorData
from cl.streams.vision import (
    VisionStreamConfig,
    load_fmnist_arrays,
    load_mnist_arrays,
)

DATASETS = ("cifar10", "mnist", "fmnist", "svhn", "notmnist")


@dataclass
class FiveDatasetsConfig(VisionStreamConfig):
    """5-datasets settings; ``data_root`` null means ``~/.cache/cl-platform/data``.

    Attributes:
        order: The datasets, one per experience (a permutation of a subset of the five).
    """

    name: str = "five_datasets"
    scenario: str = "class_il"
    normalize: str = "unit"
    order: list[str] = field(default_factory=lambda: list(DATASETS))


def _to_rgb32(x: Tensor) -> Tensor:
    """``[N, C, H, W]`` in [0, 1] -> ``[N, 3, 32, 32]``."""
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[-2:] != (32, 32):
        x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    return x.contiguous()


def _torchvision(name: str, root: Path, download: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    import torchvision.datasets as tvd

    try:
        if name == "svhn":
            sets = [tvd.SVHN(str(root), split=s, download=download) for s in ("train", "test")]
            data = [
                (torch.from_numpy(s.data).float() / 255.0, torch.from_numpy(s.labels)) for s in sets
            ]
        else:
            sets = [tvd.CIFAR10(str(root), train=t, download=download) for t in (True, False)]
            data = []
            for s in sets:
                x = torch.as_tensor(np.asarray(s.data)).float().permute(0, 3, 1, 2) / 255.0
                data.append((x, torch.as_tensor(np.asarray(s.targets))))
    except Exception as e:
        msg = reason(e)
        raise DataNotFoundError(
            f"{name} is not in {root} and could not be downloaded ({msg}); run once online with "
            "stream.download=true and stream.data_root=<writable folder>"
        ) from None
    (xtr, ytr), (xte, yte) = data
    return xtr, ytr.long(), xte, yte.long()


def _notmnist(root: Path) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    folder = next((p for p in (root / "notMNIST_small", root / "notMNIST") if p.is_dir()), None)
    if folder is None:
        raise DataNotFoundError(
            f"notMNIST not found under {root}: download notMNIST_small, extract it there "
            "(one folder per letter A-J); torchvision has no notMNIST"
        )
    from PIL import Image

    xs, ys = [], []
    for label, letter in enumerate("ABCDEFGHIJ"):
        for f in sorted((folder / letter).glob("*.png")):
            try:
                xs.append(np.asarray(Image.open(f).convert("L"), dtype=np.float32) / 255.0)
                ys.append(label)
            except OSError:  # the archive has a few unreadable files
                continue
    x = torch.from_numpy(np.stack(xs)).unsqueeze(1)
    y = torch.tensor(ys)
    # No official split: a fixed 80/20 split.
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    cut = int(0.8 * len(y))
    return x[perm[:cut]], y[perm[:cut]], x[perm[cut:]], y[perm[cut:]]


def load_dataset(
    name: str, root: Path, download: bool, data_root: str | None
) -> tuple[Tensor, ...]:
    if name in ("fmnist", "mnist"):
        # 5-datasets images are in [0, 1] (the stream standardises afterwards if asked).
        load = {"fmnist": load_fmnist_arrays, "mnist": load_mnist_arrays}[name]
        return load(data_root, download, "unit")
    if name == "notmnist":
        return _notmnist(root)
    return _torchvision(name, root, download)


@register_stream("five_datasets", FiveDatasetsConfig)
def five_datasets(cfg: FiveDatasetsConfig) -> Stream:
    """One dataset per experience, disjoint global labels."""
    order = [str(d) for d in cfg.order]
    if not order or any(d not in DATASETS for d in order) or len(set(order)) != len(order):
        raise ConfigError(f"stream.order must list distinct datasets among {', '.join(DATASETS)}")
    if cfg.scenario not in ("class_il", "task_il"):
        raise ConfigError(f"five_datasets supports class_il or task_il, got {cfg.scenario!r}")
    root = Path(cfg.data_root) if cfg.data_root else Path.home() / ".cache" / "cl-platform" / "data"
    gen = torch.Generator().manual_seed(cfg.subsample_seed)
    exps = []
    s1, s2, count = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), 0
    for i, name in enumerate(order):
        xtr, ytr, xte, yte = load_dataset(name, root, cfg.download, cfg.data_root)
        rgb = _to_rgb32(xtr).double()
        s1 += rgb.sum(dim=(0, 2, 3))
        s2 += rgb.square().sum(dim=(0, 2, 3))
        count += rgb[:, 0].numel()
        parts = []
        for x, y, cap in (
            (xtr, ytr, cfg.max_train_per_experience),
            (xte, yte, cfg.max_test_per_experience),
        ):
            if cap is not None and cap < len(y):
                idx = torch.randperm(len(y), generator=gen)[:cap].sort().values
                x, y = x[idx], y[idx]
            parts.append(TensorData(_to_rgb32(x), y + 10 * i, torch.full((len(y),), i)))
        exps.append(
            Experience(
                index=i,
                task_id=i,
                classes=list(range(10 * i, 10 * i + 10)),
                train=parts[0],
                test=parts[1],
            )
        )
    mean = s1 / count
    stats = tuple(mean.tolist()), tuple((s2 / count - mean.square()).sqrt().tolist())
    if cfg.normalize == "standardize":
        for e in exps:
            for d in (e.train, e.test):
                assert isinstance(d, TensorData)
                d.x = normalize_images(d.x, "standardize", *stats)
    return Stream(
        name=cfg.name,
        scenario=cfg.scenario,
        n_classes=10 * len(order),
        experiences=exps,
        modality="vision",
        input_shape=(3, 32, 32),
        has_task_ids=cfg.task_labels or cfg.scenario == "task_il",
        pipeline=make_pipeline(cfg, *stats),
    )
