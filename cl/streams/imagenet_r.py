"""Split ImageNet-R (Hendrycks et al., "The Many Faces of Robustness", ICCV 2021): 200
ImageNet classes as renditions (art, cartoons, sketches, ...), 30,000 images.

Used by DualPrompt, CODA-Prompt, SimpleCIL and RanPAC as 10 tasks of 20 classes
(``n_experiences: 10``) or 20 tasks of 10 (``n_experiences: 20``), with 80% of each class for
training and 20% for testing (a seeded per-class split: ``split_seed``). When the extracted
``imagenet-r`` folder (one sub-folder per WordNet id) is not under ``data_root`` and
``download`` is true, the archive is downloaded from its authors' server and extracted there;
offline, a clear error says where to put it. Images are decoded on the fly (a Dataset, not
tensors in memory), resized to ``img_size`` and scaled to [0, 1].
"""

from __future__ import annotations

import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from cl.errors import ConfigError, DataNotFoundError, reason
from cl.streams import register_stream
from cl.streams.base import Experience, Stream
from cl.streams.cifar import numpy_class_order
from cl.streams.vision import VisionStreamConfig, data_cache, tuning_window
from cl.validation import fraction, positive

IMAGENET_R_URL = "https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar"
N_CLASSES = 200
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass
class ImageNetRStreamConfig(VisionStreamConfig):
    """Split ImageNet-R; ``data_root`` null means the platform's data cache.

    Attributes:
        img_size: Images are resized to ``img_size x img_size``.
        train_fraction: Fraction of each class used for training (the rest is the test set).
        split_seed: Seed of the per-class train/test split.
        class_order_numpy_seed: Class order ``numpy.random.RandomState(seed).permutation``
            (PyCIL/PILOT's, seed 1993); null keeps the sorted WordNet ids.
    """

    name: str = "split_imagenet_r"
    n_experiences: int = 10
    img_size: int = 224
    train_fraction: float = 0.8
    split_seed: int = 0
    class_order_numpy_seed: int | None = None

    def validate(self) -> None:
        super().validate()
        positive("stream", self, "img_size")
        fraction("stream", self, "train_fraction", low_open=True, high_open=True)


class ImageFiles(Dataset[tuple[torch.Tensor, int, int]]):
    """Image files decoded on access: ``(x [3, S, S] in [0, 1], label, task id)``."""

    def __init__(self, files: list[Path], labels: list[int], task: int, size: int) -> None:
        self.files, self.labels, self.task, self.size = files, labels, task, size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        from PIL import Image

        with Image.open(self.files[i]) as f:
            im = f.convert("RGB").resize((self.size, self.size), Image.Resampling.BILINEAR)
            arr = np.asarray(im, dtype=np.float32) / 255.0
        return torch.from_numpy(arr).permute(2, 0, 1).contiguous(), self.labels[i], self.task


def _hold_out(data: ImageFiles, frac: float, seed: int) -> tuple[ImageFiles, ImageFiles]:
    n = len(data)
    n_val = max(1, round(n * frac))
    if n_val >= n:
        raise ConfigError(f"an experience has too few samples ({n}) to hold some out")
    perm = np.random.RandomState(seed).permutation(n)
    pick = lambda idx: ImageFiles(  # noqa: E731
        [data.files[j] for j in sorted(idx)],
        [data.labels[j] for j in sorted(idx)],
        data.task,
        data.size,
    )
    return pick(perm[n_val:]), pick(perm[:n_val])


def imagenet_r_folder(data_root: str | None, download: bool) -> Path:
    """The extracted ``imagenet-r`` folder under ``data_root``, downloading it when allowed."""
    root = Path(data_root) if data_root else data_cache()
    folder = root / "imagenet-r"
    if folder.is_dir() and any(folder.iterdir()):
        return folder
    how = (
        f"download {IMAGENET_R_URL} while online and extract it into {root} "
        "(or set stream.data_root to the folder that holds 'imagenet-r')"
    )
    if not download:
        raise DataNotFoundError(f"ImageNet-R is not in {root}; {how}")
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, suffix=".tar") as tmp:
            with urllib.request.urlopen(IMAGENET_R_URL, timeout=60) as r:
                while chunk := r.read(1 << 20):
                    tmp.write(chunk)
            tmp.flush()
            with tarfile.open(tmp.name) as tar:
                tar.extractall(root, filter="data")
    except Exception as e:  # offline, permissions, a broken archive
        raise DataNotFoundError(
            f"ImageNet-R is not in {root} and could not be downloaded ({reason(e)}); {how}"
        ) from None
    return folder


def list_images(folder: Path) -> tuple[list[str], list[list[Path]]]:
    """Class folder names (sorted) and each class's image files (sorted)."""
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    files = [
        sorted(f for f in (folder / c).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        for c in classes
    ]
    return classes, files


@register_stream("split_imagenet_r", ImageNetRStreamConfig)
def split_imagenet_r(cfg: ImageNetRStreamConfig) -> Stream:
    """ImageNet-R split into ``n_experiences`` experiences of classes."""
    if cfg.scenario not in ("class_il", "task_il"):
        raise ConfigError(f"stream.scenario must be class_il or task_il, got {cfg.scenario!r}")
    names, files = list_images(imagenet_r_folder(cfg.data_root, cfg.download))
    n = len(names)
    if cfg.n_experiences > n:
        raise ConfigError(f"stream.n_experiences={cfg.n_experiences} exceeds {n} classes")
    if cfg.class_order_numpy_seed is not None:
        order = numpy_class_order(cfg.class_order_numpy_seed, n)
    else:
        order = list(range(n))
    rng = np.random.RandomState(cfg.split_seed)
    train: list[tuple[list[Path], list[int]]] = []
    test: list[tuple[list[Path], list[int]]] = []
    for c, fs in enumerate(files):
        perm = rng.permutation(len(fs))
        k = round(len(fs) * cfg.train_fraction)
        train.append(([fs[i] for i in perm[:k]], [c] * k))
        test.append(([fs[i] for i in perm[k:]], [c] * (len(fs) - k)))
    sub = np.random.RandomState(cfg.subsample_seed)
    exps = []
    for i, chunk in enumerate(np.array_split(np.array(order), cfg.n_experiences)):
        classes = sorted(int(c) for c in chunk)
        parts: list[Any] = []
        for split, cap in (
            (train, cfg.max_train_per_experience),
            (test, cfg.max_test_per_experience),
        ):
            fs = [f for c in classes for f in split[c][0]]
            ys = [y for c in classes for y in split[c][1]]
            if cap is not None and cap < len(fs):
                keep = sorted(sub.permutation(len(fs))[:cap])
                fs, ys = [fs[j] for j in keep], [ys[j] for j in keep]
            parts.append(ImageFiles(fs, ys, i, cfg.img_size))
        if cfg.validation:  # hold out part of the training files as the test set
            tr, held = _hold_out(parts[0], cfg.validation_fraction, cfg.validation_seed + i)
            parts = [tr, held]
        exps.append(Experience(index=i, task_id=i, classes=classes, train=parts[0], test=parts[1]))
    return Stream(
        name=cfg.name,
        scenario=cfg.scenario,
        n_classes=n,
        experiences=tuning_window(replace(cfg, validation=False), exps),
        modality="vision",
        input_shape=(3, cfg.img_size, cfg.img_size),
        has_task_ids=cfg.task_labels or cfg.scenario == "task_il",
        extra={"class_order": order, "class_names": names},
    )
