"""Pixel normalisation and batched, on-device image augmentation for image streams.

Every in-memory image stream takes the same options (``stream.`` on the command line):

* ``normalize``: ``standardize`` (subtract the dataset's mean, divide by its std) or ``unit``
  (pixels in [0, 1], as Avalanche's raw-tensor benchmarks and many reference codes use);
* ``augment`` (training batches only): ``none``, ``flip_crop`` (zero-pixel padding by
  ``crop_padding`` + a random crop back to the image size + horizontal flip, the CIFAR recipe)
  or ``rrc_flip`` (``RandomResizedCrop`` to ``image_size`` with ``rrc_scale``/``rrc_ratio`` +
  horizontal flip, the ImageNet/L2P recipe);
* ``eval_transform`` (evaluation batches): ``none`` or ``resize_crop`` (bicubic resize of the
  shorter side to ``image_size / eval_crop_pct``, then a centre crop of ``image_size``: the
  usual ``Resize(256) + CenterCrop(224)``).

``image_size`` null means the model's input resolution where it has one (``model.img_size`` of
``vit``), else the stream's own. The transforms work on whole batches of device tensors: the
random parameters are drawn on the CPU from a generator the training loop seeds from the run
seed, the experience and the epoch, so a resumed run sees the same augmented batches. The
crops follow torchvision's definitions (``RandomResizedCrop.get_params``, bilinear resizing of
the crop with ``align_corners=False``), computed for all samples at once; resizing has no
antialiasing (the recipes here enlarge images, where it makes no difference).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from cl.errors import ConfigError

NORMALIZE = ("standardize", "unit")
AUGMENT = ("none", "flip_crop", "rrc_flip")
EVAL_TRANSFORMS = ("none", "resize_crop")
# Added to the loop's generator seed so augmentation draws never share a stream with shuffling.
AUGMENT_SALT = 0xA06


@dataclass(frozen=True)
class ImagePipeline:
    """What the training loop and the evaluator do to a stream's image batches.

    Attributes:
        augment: ``none``, ``flip_crop`` or ``rrc_flip``.
        eval_transform: ``none`` or ``resize_crop``.
        size: Output side of ``rrc_flip`` and ``resize_crop`` (None: the model's input size,
            else the image's own).
        padding: Padding of ``flip_crop``.
        scale: Area fraction range of ``rrc_flip``.
        ratio: Aspect ratio range of ``rrc_flip``.
        crop_pct: ``resize_crop`` resizes to ``size / crop_pct`` before cropping ``size``.
        low: Per channel, the normalised value of a black pixel (the padding of ``flip_crop``).
        high: Per channel, the normalised value of a white pixel (resized images are clamped
            to ``[low, high]``, as uint8 images are).
    """

    augment: str = "none"
    eval_transform: str = "none"
    size: int | None = None
    padding: int = 4
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    crop_pct: float = 0.875
    low: tuple[float, ...] = (0.0,)
    high: tuple[float, ...] = (1.0,)

    @property
    def active(self) -> bool:
        return self.augment != "none" or self.eval_transform != "none"

    def train(self, x: Tensor, gen: torch.Generator, size: int | None = None) -> Tensor:
        """Augment a training batch ``[B, C, H, W]`` (``size``: the model's input size)."""
        if self.augment == "flip_crop":
            x = pad_crop(x, gen, self.padding, self.low)
        elif self.augment == "rrc_flip":
            side = self.size or size or x.shape[-1]
            i, j, h, w = rrc_params(len(x), x.shape[-2], x.shape[-1], gen, self.scale, self.ratio)
            x = resized_crop(x, i, j, h, w, side)
        if self.augment == "none":
            return x
        return random_hflip(x, gen)

    def eval(self, x: Tensor, size: int | None = None) -> Tensor:
        """The evaluation transform of a batch (deterministic)."""
        if self.eval_transform == "none":
            return x
        side = self.size or size or x.shape[-1]
        return resize_center_crop(x, side, self.crop_pct, self.low, self.high)


def pixel_range(
    normalize: str, mean: tuple[float, ...], std: tuple[float, ...]
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per channel, the values of a black and a white pixel after ``normalize``."""
    if normalize == "unit":
        return (0.0,) * len(mean), (1.0,) * len(mean)
    return (
        tuple(-m / s for m, s in zip(mean, std, strict=True)),
        tuple((1 - m) / s for m, s in zip(mean, std, strict=True)),
    )


def normalize_images(
    x: Tensor, normalize: str, mean: tuple[float, ...], std: tuple[float, ...]
) -> Tensor:
    """``[N, C, H, W]`` pixels in [0, 1] -> the stream's normalisation."""
    if normalize == "unit":
        return x
    if normalize != "standardize":
        raise ConfigError(f"stream.normalize must be one of {', '.join(NORMALIZE)}")
    m = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s


def make_pipeline(cfg: Any, mean: tuple[float, ...], std: tuple[float, ...]) -> ImagePipeline:
    """The :class:`ImagePipeline` of a stream config (fields of ``VisionStreamConfig``)."""
    low, high = pixel_range(cfg.normalize, mean, std)
    return ImagePipeline(
        augment=cfg.augment,
        eval_transform=cfg.eval_transform,
        size=cfg.image_size,
        padding=cfg.crop_padding,
        scale=(float(cfg.rrc_scale[0]), float(cfg.rrc_scale[1])),
        ratio=(float(cfg.rrc_ratio[0]), float(cfg.rrc_ratio[1])),
        crop_pct=cfg.eval_crop_pct,
        low=low,
        high=high,
    )


def _channel(values: tuple[float, ...], x: Tensor) -> Tensor:
    v = torch.tensor(values, dtype=x.dtype, device=x.device)
    return v.expand(x.shape[1]).view(1, -1, 1, 1) if len(values) == 1 else v.view(1, -1, 1, 1)


def random_hflip(x: Tensor, gen: torch.Generator, p: float = 0.5) -> Tensor:
    """Flip each image horizontally with probability ``p``."""
    flip = (torch.rand(len(x), generator=gen) < p).to(x.device).view(-1, 1, 1, 1)
    return torch.where(flip, x.flip(-1), x)


def pad_crop(x: Tensor, gen: torch.Generator, padding: int, fill: tuple[float, ...]) -> Tensor:
    """Pad by ``padding`` with ``fill`` (per channel) and crop each image back at a random
    offset (torchvision's ``RandomCrop(size, padding)``)."""
    if padding == 0:
        return x
    n, c, h, w = x.shape
    padded = _channel(fill, x).expand(n, c, h + 2 * padding, w + 2 * padding).clone()
    padded[:, :, padding : padding + h, padding : padding + w] = x
    top = torch.randint(0, 2 * padding + 1, (n,), generator=gen).to(x.device)
    left = torch.randint(0, 2 * padding + 1, (n,), generator=gen).to(x.device)
    rows = (top[:, None] + torch.arange(h, device=x.device)).view(n, 1, h, 1)
    cols = (left[:, None] + torch.arange(w, device=x.device)).view(n, 1, 1, w)
    out = padded.gather(2, rows.expand(n, c, h, padded.shape[-1]))
    return out.gather(3, cols.expand(n, c, h, w))


def rrc_params(
    n: int,
    height: int,
    width: int,
    gen: torch.Generator,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    attempts: int = 10,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Crop boxes ``(top, left, height, width)`` of ``n`` images, each drawn as torchvision's
    ``RandomResizedCrop.get_params`` does (the first of ``attempts`` tries that fits, else the
    centre crop of the clamped aspect ratio); CPU long tensors of shape ``[n]``."""
    area = height * width
    target = area * (scale[0] + (scale[1] - scale[0]) * torch.rand(n, attempts, generator=gen))
    lr0, lr1 = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(lr0 + (lr1 - lr0) * torch.rand(n, attempts, generator=gen))
    w = torch.sqrt(target * aspect).round().long()
    h = torch.sqrt(target / aspect).round().long()
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    u_top, u_left = torch.rand(n, attempts, generator=gen), torch.rand(n, attempts, generator=gen)
    first = torch.where(ok.any(1), ok.long().argmax(1), torch.zeros(n, dtype=torch.long))
    pick = lambda t: t.gather(1, first[:, None]).squeeze(1)  # noqa: E731
    hh, ww, found = pick(h), pick(w), ok.any(1)
    top = (pick(u_top) * (height - hh + 1)).floor().long()
    left = (pick(u_left) * (width - ww + 1)).floor().long()
    # Fallback: the whole image cropped to the nearest allowed aspect ratio, centred.
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        fw, fh = round(height * max(ratio)), height
    else:
        fw, fh = width, height
    hh, ww = torch.where(found, hh, fh), torch.where(found, ww, fw)
    top = torch.where(found, top, (height - fh) // 2)
    left = torch.where(found, left, (width - fw) // 2)
    return top, left, hh, ww


def _source_index(start: Tensor, length: Tensor, size: int, limit: int) -> tuple[Tensor, ...]:
    """Bilinear taps along one axis of each crop resized to ``size`` (``align_corners=False``,
    as ``F.interpolate``): lower and upper source indices ``[n, size]`` and the weight of the
    upper one."""
    o = torch.arange(size, dtype=torch.float32)
    src = ((o[None] + 0.5) * (length[:, None].float() / size) - 0.5).clamp_min(0.0)
    lo = src.floor().long().minimum(length[:, None] - 1)
    hi = (lo + 1).minimum(length[:, None] - 1)
    frac = src - lo.float()
    return (
        (start[:, None] + lo).clamp(0, limit - 1),
        (start[:, None] + hi).clamp(0, limit - 1),
        frac,
    )


def resized_crop(x: Tensor, top: Tensor, left: Tensor, h: Tensor, w: Tensor, size: int) -> Tensor:
    """Crop box ``b`` of image ``b`` and resize it to ``size x size`` (bilinear), all at once."""
    n, c, height, width = x.shape
    r0, r1, fy = (t.to(x.device) for t in _source_index(top, h, size, height))
    c0, c1, fx = (t.to(x.device) for t in _source_index(left, w, size, width))

    def rows(idx: Tensor) -> Tensor:
        return x.gather(2, idx.view(n, 1, size, 1).expand(n, c, size, width))

    fy4 = fy.to(x.dtype).view(n, 1, size, 1)
    y = torch.lerp(rows(r0), rows(r1), fy4)

    def cols(idx: Tensor) -> Tensor:
        return y.gather(3, idx.view(n, 1, 1, size).expand(n, c, size, size))

    return torch.lerp(cols(c0), cols(c1), fx.to(x.dtype).view(n, 1, 1, size))


def resize_center_crop(
    x: Tensor, size: int, crop_pct: float, low: tuple[float, ...], high: tuple[float, ...]
) -> Tensor:
    """Bicubic resize of the shorter side to ``int(size / crop_pct)`` and a centre crop of
    ``size`` (torchvision's ``Resize`` + ``CenterCrop``), clamped to the pixel range."""
    height, width = x.shape[-2:]
    short = int(size / crop_pct)
    if height <= width:
        new = (short, int(short * width / height))
    else:
        new = (int(short * height / width), short)
    y = F.interpolate(x, size=new, mode="bicubic", align_corners=False, antialias=True)
    top = round((new[0] - size) / 2.0)
    left = round((new[1] - size) / 2.0)
    y = y[..., top : top + size, left : left + size]
    return torch.maximum(torch.minimum(y, _channel(high, y)), _channel(low, y))


def model_input_size(model: Any) -> int | None:
    """The square input resolution a model resizes its images to (None: it takes any)."""
    size = getattr(getattr(model, "backbone", None), "input_size", None)
    return int(size) if size is not None else None
