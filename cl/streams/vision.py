"""In-memory vision streams: split and permuted versions of digits and Fashion-MNIST.

Data stays as tensors (moved to the run's device by the runner), so batches are index slices.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from omegaconf import MISSING
from torch import Tensor

from cl.errors import ConfigError, DataNotFoundError, reason
from cl.streams import register_stream
from cl.streams.augment import AUGMENT, EVAL_TRANSFORMS, NORMALIZE, make_pipeline
from cl.streams.base import Experience, Stream, TensorData
from cl.validation import fraction, non_negative, one_of, positive

DIGITS_FILE = Path(__file__).parent / "data" / "digits.npz"
FMNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
# File names of MNIST-style idx datasets (stored gzipped or not).
IDX_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
# Standard Fashion-MNIST normalisation constants (mean, std of the training pixels).
FMNIST_MEAN, FMNIST_STD = 0.2860, 0.3530
# The digits' "standardize" maps [0, 1] to [-1, 1].
DIGITS_MEAN, DIGITS_STD = 0.5, 0.5


@dataclass
class VisionStreamConfig:
    """Fields shared by the in-memory vision streams.

    Attributes:
        name: Stream name.
        n_experiences: Number of experiences.
        scenario: ``class_il`` / ``task_il`` (split) or ``domain_il`` / ``task_il`` (permuted).
        task_labels: Whether task ids are available at test time.
        data_root: Folder with the dataset files; when they are missing there and ``download``
            is true, torchvision downloads them into it. ``None`` uses the system copy (Debian
            package ``dataset-fashion-mnist``), else a copy in the platform's data cache.
        download: Allow downloading into ``data_root``.
        max_train_per_experience: Subsample each experience's train set (smoke tests).
        max_test_per_experience: Subsample each experience's test set.
        subsample_seed: Seed of that subsampling.
        max_experiences: Keep only the first k experiences (a tuning window for sweeps); the
            class partition is still that of ``n_experiences``.
        validation: Replace each experience's test data by a held-out part of its training
            data, so hyperparameter searches never see the test sets.
        validation_fraction: Fraction of each experience's training data held out.
        validation_seed: Seed of the held-out split.
        normalize: ``standardize`` (the dataset's mean and std) or ``unit`` (pixels in [0, 1]).
        augment: Training batches only, on the device: ``none``, ``flip_crop`` (pad + random
            crop + horizontal flip) or ``rrc_flip`` (RandomResizedCrop + horizontal flip).
        eval_transform: ``none`` or ``resize_crop`` (resize to ``image_size / eval_crop_pct``,
            centre crop ``image_size``) on evaluation batches.
        image_size: Output side of ``rrc_flip`` and ``resize_crop`` (null: the model's input
            size, e.g. ``model.img_size`` of ``vit``, else the image's own).
        crop_padding: Padding of ``flip_crop``.
        rrc_scale: Area fraction range of ``rrc_flip``.
        rrc_ratio: Aspect-ratio range of ``rrc_flip``.
        eval_crop_pct: Crop fraction of ``resize_crop`` (0.875: resize 256, crop 224).
    """

    name: str = MISSING
    n_experiences: int = 5
    scenario: str = "class_il"
    task_labels: bool = True
    data_root: str | None = None
    download: bool = True
    max_train_per_experience: int | None = None
    max_test_per_experience: int | None = None
    subsample_seed: int = 0
    max_experiences: int | None = None
    validation: bool = False
    validation_fraction: float = 0.2
    validation_seed: int = 0
    normalize: str = "standardize"
    augment: str = "none"
    eval_transform: str = "none"
    image_size: int | None = None
    crop_padding: int = 4
    rrc_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    rrc_ratio: list[float] = field(default_factory=lambda: [3 / 4, 4 / 3])
    eval_crop_pct: float = 0.875

    def validate(self) -> None:
        positive("stream", self, "n_experiences", "max_experiences")
        positive("stream", self, "max_train_per_experience", "max_test_per_experience")
        fraction("stream", self, "validation_fraction", low_open=True, high_open=True)
        one_of("stream", self, "normalize", NORMALIZE)
        one_of("stream", self, "augment", AUGMENT)
        one_of("stream", self, "eval_transform", EVAL_TRANSFORMS)
        positive("stream", self, "image_size", "rrc_ratio")
        non_negative("stream", self, "crop_padding")
        fraction("stream", self, "eval_crop_pct", low_open=True, high_open=False)
        for key in ("rrc_scale", "rrc_ratio"):
            lo_hi = list(getattr(self, key))
            if len(lo_hi) != 2 or not 0 < lo_hi[0] <= lo_hi[1]:
                raise ConfigError(f"stream.{key} must be [low, high] with 0 < low <= high")
        if self.rrc_scale[1] > 1:
            raise ConfigError("stream.rrc_scale must lie in (0, 1]")


@dataclass
class SplitStreamConfig(VisionStreamConfig):
    """Split (class-incremental) stream.

    Attributes:
        class_order: Explicit class order; experiences take consecutive chunks of it.
        class_order_seed: When ``class_order`` is null, shuffle the classes with this seed
            (null keeps 0..C-1).
    """

    class_order: list[int] | None = None
    class_order_seed: int | None = None


@dataclass
class PermutedStreamConfig(VisionStreamConfig):
    """Permuted (domain-incremental) stream: each experience applies its own pixel permutation.

    Attributes:
        permutation_seed: Seed of the permutations (every experience is permuted, as in
            Avalanche's PermutedMNIST).
    """

    scenario: str = "domain_il"
    permutation_seed: int = 0


Arrays = tuple[Tensor, Tensor, Tensor, Tensor]
# Per-channel mean and std of pixels in [0, 1] ("standardize" maps them to 0 and 1).
Stats = tuple[tuple[float, ...], tuple[float, ...]]
DIGITS: Stats = ((DIGITS_MEAN,), (DIGITS_STD,))
FMNIST: Stats = ((FMNIST_MEAN,), (FMNIST_STD,))


def load_digits_arrays(normalize: str = "standardize") -> Arrays:
    """scikit-learn's 8x8 digits (UCI optical digits, 1797 images) with its fixed 70/30 split;
    ``standardize`` maps the pixels to [-1, 1], ``unit`` to [0, 1].

    Shipped with the package as ``data/digits.npz`` (raw 0-16 pixel counts, split stratified
    by class with ``random_state=0``), so the default run does not import scikit-learn.
    """
    with np.load(DIGITS_FILE) as d:
        arrays = [d[k] for k in ("train_x", "train_y", "test_x", "test_y")]

    def to_x(a: np.ndarray) -> Tensor:
        x = torch.from_numpy(a).float() / 16.0
        if normalize == "standardize":
            x = (x - DIGITS_MEAN) / DIGITS_STD
        return x.unsqueeze(1)

    to_y = lambda a: torch.from_numpy(a).long()  # noqa: E731
    return to_x(arrays[0]), to_y(arrays[1]), to_x(arrays[2]), to_y(arrays[3])


def _read_idx(path: Path, header: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=header)


def _has_idx(folder: Path) -> bool:
    return all((folder / f).exists() or (folder / f"{f}.gz").exists() for f in IDX_FILES.values())


def _idx_folder(root: Path, dataset: str, download: bool, *, missing: str, failed: str) -> Path:
    """Where ``dataset``'s idx files are under ``root`` (flat, or torchvision's
    ``<dataset>/raw``), downloading them with torchvision when allowed.

    Args:
        dataset: torchvision class name (``MNIST``, ``FashionMNIST``).
        missing: Error message when the files are absent and ``download`` is false.
        failed: Error message when the download fails (``{why}``: the reason).
    """
    for folder in (root, root / dataset / "raw"):
        if _has_idx(folder):
            return folder
    if not download:
        raise DataNotFoundError(missing)
    try:
        import torchvision.datasets as tvd

        for train in (True, False):
            getattr(tvd, dataset)(str(root), train=train, download=True)
    except Exception as e:  # network, permissions, ...
        raise DataNotFoundError(failed.replace("{why}", reason(e))) from None
    return root / dataset / "raw"


def data_cache() -> Path:
    """The platform's download folder: ``$CL_CACHE_DIR/data`` (``~/.cache/cl-platform/data``)."""
    return Path(os.environ.get("CL_CACHE_DIR", Path.home() / ".cache" / "cl-platform")) / "data"


def fmnist_folder() -> Path | None:
    """Where Fashion-MNIST's idx files are without a ``data_root``: the Debian package's copy,
    else a copy downloaded earlier into :func:`data_cache` (None when neither exists)."""
    for folder in (FMNIST_SYSTEM_DIR, data_cache() / "FashionMNIST" / "raw", data_cache()):
        if _has_idx(folder):
            return folder
    return None


def download_fmnist() -> Path:
    """Download Fashion-MNIST with torchvision into :func:`data_cache` (needs internet once)."""
    return load_fmnist_folder(str(data_cache()), download=True)


def load_fmnist_folder(data_root: str | None, download: bool = True) -> Path:
    """The folder of Fashion-MNIST's idx files, downloading into ``data_root`` if set."""
    if data_root is None:
        folder = fmnist_folder()
        if folder is None:
            raise DataNotFoundError(
                f"Fashion-MNIST not found in {FMNIST_SYSTEM_DIR} or {data_cache()}. Install it "
                "with `apt-get install dataset-fashion-mnist`, or download it once (online) with "
                "`python -c 'from cl.streams.vision import download_fmnist; download_fmnist()'`, "
                "or set stream.data_root=<writable folder> to download it there."
            )
        return folder
    return _idx_folder(
        Path(data_root),
        "FashionMNIST",
        download,
        missing=f"Fashion-MNIST not found in {data_root}. Install the offline copy with "
        "`apt-get install dataset-fashion-mnist` and leave stream.data_root unset, or set "
        "stream.download=true to download it there with torchvision (needs internet).",
        failed=f"Fashion-MNIST is not in {data_root} and downloading it failed ({{why}}). "
        "Install the offline copy with `apt-get install dataset-fashion-mnist` and leave "
        "stream.data_root unset, or point stream.data_root at a writable folder online.",
    )


def load_fmnist_arrays(
    data_root: str | None, download: bool = True, normalize: str = "standardize"
) -> Arrays:
    """Fashion-MNIST from the idx files: with ``data_root`` unset the Debian package's copy or
    one in the platform's data cache; else ``data_root``, downloading there via torchvision."""
    folder = load_fmnist_folder(data_root, download)
    return _idx_arrays(folder, FMNIST_MEAN, FMNIST_STD, normalize)


def _idx_arrays(folder: Path, mean: float, std: float, normalize: str = "standardize") -> Arrays:
    """28x28 idx image/label files (gzipped or not) -> tensors, standardised with ``mean`` and
    ``std`` or (``normalize="unit"``) in [0, 1]."""

    def read(name: str, header: int) -> np.ndarray:
        path = folder / IDX_FILES[name]
        gz = path.with_name(path.name + ".gz")
        if gz.exists():
            return _read_idx(gz, header)
        return np.frombuffer(path.read_bytes(), dtype=np.uint8, offset=header)

    def images(name: str) -> Tensor:
        a = read(name, 16).reshape(-1, 1, 28, 28)
        x = torch.from_numpy(a.astype(np.float32)) / 255.0
        return (x - mean) / std if normalize == "standardize" else x

    def labels(name: str) -> Tensor:
        return torch.from_numpy(read(name, 8).astype(np.int64))

    return images("train_x"), labels("train_y"), images("test_x"), labels("test_y")


def _subsample(data: TensorData, n: int | None, gen: torch.Generator) -> TensorData:
    if n is None or n >= len(data):
        return data
    if n <= 0:
        raise ConfigError(f"subsample size must be positive, got {n}")
    idx = torch.randperm(len(data), generator=gen)[:n].sort().values
    return data.subset(idx)


def tuning_window(cfg: VisionStreamConfig, exps: list[Experience]) -> list[Experience]:
    """Apply ``max_experiences`` and ``validation``: what a hyperparameter search may see."""
    if cfg.max_experiences is not None:
        if cfg.max_experiences <= 0:
            raise ConfigError(f"stream.max_experiences must be positive, got {cfg.max_experiences}")
        exps = exps[: cfg.max_experiences]
    if not cfg.validation:
        return exps
    if not 0.0 < cfg.validation_fraction < 1.0:
        raise ConfigError(
            f"stream.validation_fraction must be in (0, 1), got {cfg.validation_fraction}"
        )
    gen = torch.Generator().manual_seed(cfg.validation_seed)
    out = []
    for e in exps:
        assert isinstance(e.train, TensorData)
        n = len(e.train)
        n_val = max(1, round(n * cfg.validation_fraction))
        if n_val >= n:
            raise ConfigError(f"experience {e.index} has too few samples ({n}) to hold some out")
        perm = torch.randperm(n, generator=gen)
        val, keep = perm[:n_val].sort().values, perm[n_val:].sort().values
        out.append(replace(e, train=e.train.subset(keep), test=e.train.subset(val)))
    return out


def _check_scenario(cfg: VisionStreamConfig, allowed: tuple[str, ...]) -> None:
    if cfg.scenario not in allowed:
        raise ConfigError(
            f"stream {cfg.name!r} supports scenario {' or '.join(allowed)}, got {cfg.scenario!r}"
        )
    if cfg.n_experiences <= 0:
        raise ConfigError(f"stream.n_experiences must be positive, got {cfg.n_experiences}")


def split_stream(
    cfg: SplitStreamConfig,
    arrays: Arrays,
    n_classes: int,
    shape: tuple[int, ...],
    *,
    stats: Stats = ((0.0,), (1.0,)),
) -> Stream:
    """Partition the classes into ``n_experiences`` consecutive chunks of the class order.

    ``stats`` (per-channel mean and std of the pixels in [0, 1]) say where black and white
    lie in the arrays' normalisation, for the augmentation's padding and clamping."""
    _check_scenario(cfg, ("class_il", "task_il"))
    if cfg.class_order is not None:
        order = [int(c) for c in cfg.class_order]
        if sorted(order) != list(range(n_classes)):
            raise ConfigError(f"stream.class_order must be a permutation of 0..{n_classes - 1}")
    elif cfg.class_order_seed is not None:
        g = torch.Generator().manual_seed(cfg.class_order_seed)
        order = torch.randperm(n_classes, generator=g).tolist()
    else:
        order = list(range(n_classes))
    if cfg.n_experiences > n_classes:
        raise ConfigError(f"stream.n_experiences={cfg.n_experiences} exceeds {n_classes} classes")
    chunks = [c.tolist() for c in np.array_split(np.array(order), cfg.n_experiences)]
    xtr, ytr, xte, yte = arrays
    gen = torch.Generator().manual_seed(cfg.subsample_seed)
    exps = []
    for i, classes in enumerate(chunks):
        cls = torch.tensor(classes)
        mtr, mte = torch.isin(ytr, cls), torch.isin(yte, cls)
        tr = TensorData(xtr[mtr], ytr[mtr], torch.full((int(mtr.sum()),), i))
        te = TensorData(xte[mte], yte[mte], torch.full((int(mte.sum()),), i))
        exps.append(
            Experience(
                index=i,
                task_id=i,
                classes=sorted(classes),
                train=_subsample(tr, cfg.max_train_per_experience, gen),
                test=_subsample(te, cfg.max_test_per_experience, gen),
            )
        )
    return Stream(
        name=cfg.name,
        scenario=cfg.scenario,
        n_classes=n_classes,
        experiences=tuning_window(cfg, exps),
        modality="vision",
        input_shape=shape,
        has_task_ids=cfg.task_labels or cfg.scenario == "task_il",
        extra={"class_order": order},
        pipeline=make_pipeline(cfg, *stats),
    )


def permuted_stream(
    cfg: PermutedStreamConfig,
    arrays: Arrays,
    n_classes: int,
    shape: tuple[int, ...],
    *,
    stats: Stats = ((0.0,), (1.0,)),
) -> Stream:
    """Each experience permutes the pixels with its own seeded permutation (``stats``: as in
    :func:`split_stream`; crops and flips of permuted images are refused)."""
    if cfg.augment != "none" or cfg.eval_transform != "none":
        raise ConfigError(
            f"stream {cfg.name!r} permutes pixels: spatial stream.augment / stream.eval_transform "
            "do not apply (leave them none)"
        )
    _check_scenario(cfg, ("domain_il", "task_il"))
    xtr, ytr, xte, yte = arrays
    d = int(np.prod(shape))
    g = torch.Generator().manual_seed(cfg.permutation_seed)
    gen = torch.Generator().manual_seed(cfg.subsample_seed)
    exps = []
    for i in range(cfg.n_experiences):
        perm = torch.randperm(d, generator=g)
        tr = _subsample(
            TensorData(xtr, ytr, torch.full((len(ytr),), i)), cfg.max_train_per_experience, gen
        )
        te = _subsample(
            TensorData(xte, yte, torch.full((len(yte),), i)), cfg.max_test_per_experience, gen
        )
        permute = lambda x, p=perm: x.reshape(len(x), d)[:, p].reshape(len(x), *shape)  # noqa: E731
        exps.append(
            Experience(
                index=i,
                task_id=i,
                classes=list(range(n_classes)),
                train=TensorData(permute(tr.x), tr.y, tr.t),
                test=TensorData(permute(te.x), te.y, te.t),
            )
        )
    return Stream(
        name=cfg.name,
        scenario=cfg.scenario,
        n_classes=n_classes,
        experiences=tuning_window(cfg, exps),
        modality="vision",
        input_shape=shape,
        has_task_ids=cfg.task_labels or cfg.scenario == "task_il",
        pipeline=make_pipeline(cfg, *stats),
    )


@register_stream("split_digits", SplitStreamConfig)
def split_digits(cfg: SplitStreamConfig) -> Stream:
    """scikit-learn digits split into experiences of classes (default 5 x 2)."""
    return split_stream(cfg, load_digits_arrays(cfg.normalize), 10, (1, 8, 8), stats=DIGITS)


@register_stream("permuted_digits", PermutedStreamConfig)
def permuted_digits(cfg: PermutedStreamConfig) -> Stream:
    """scikit-learn digits under per-experience pixel permutations."""
    return permuted_stream(cfg, load_digits_arrays(cfg.normalize), 10, (1, 8, 8), stats=DIGITS)


@register_stream("split_fmnist", SplitStreamConfig)
def split_fmnist(cfg: SplitStreamConfig) -> Stream:
    """Fashion-MNIST split into experiences of classes (default 5 x 2)."""
    arrays = load_fmnist_arrays(cfg.data_root, cfg.download, cfg.normalize)
    return split_stream(cfg, arrays, 10, (1, 28, 28), stats=FMNIST)


@register_stream("permuted_fmnist", PermutedStreamConfig)
def permuted_fmnist(cfg: PermutedStreamConfig) -> Stream:
    """Fashion-MNIST under per-experience pixel permutations."""
    arrays = load_fmnist_arrays(cfg.data_root, cfg.download, cfg.normalize)
    return permuted_stream(cfg, arrays, 10, (1, 28, 28), stats=FMNIST)


# MNIST (LeCun et al.) normalisation constants.
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
MNIST: Stats = ((MNIST_MEAN,), (MNIST_STD,))


def load_mnist_arrays(
    data_root: str | None, download: bool = True, normalize: str = "standardize"
) -> Arrays:
    """MNIST via torchvision in ``data_root`` (default ``~/.cache/cl-platform/data``)."""
    root = Path(data_root) if data_root else data_cache()
    folder = _idx_folder(
        root,
        "MNIST",
        download,
        missing=f"MNIST not found in {root}; set stream.download=true (needs internet) or copy "
        "its idx files there. MNIST has no offline package: the offline streams are "
        "split_digits/permuted_digits and the Fashion-MNIST ones.",
        failed=f"MNIST is not in {root} and downloading it failed ({{why}}); it needs internet "
        "once. Offline, use split_digits/permuted_digits or the Fashion-MNIST streams.",
    )
    return _idx_arrays(folder, MNIST_MEAN, MNIST_STD, normalize)


@register_stream("split_mnist", SplitStreamConfig)
def split_mnist(cfg: SplitStreamConfig) -> Stream:
    """MNIST split into experiences of classes (default 5 x 2); downloads when online."""
    arrays = load_mnist_arrays(cfg.data_root, cfg.download, cfg.normalize)
    return split_stream(cfg, arrays, 10, (1, 28, 28), stats=MNIST)


@register_stream("permuted_mnist", PermutedStreamConfig)
def permuted_mnist(cfg: PermutedStreamConfig) -> Stream:
    """MNIST under per-experience pixel permutations; downloads when online."""
    arrays = load_mnist_arrays(cfg.data_root, cfg.download, cfg.normalize)
    return permuted_stream(cfg, arrays, 10, (1, 28, 28), stats=MNIST)
