"""A small convolutional network: conv-relu-pool blocks, then one hidden linear layer."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from cl.errors import ConfigError
from cl.models import CLModel, ModelConfig, make_head, register_model
from cl.streams.base import StreamInfo
from cl.validation import affordable, positive


@dataclass
class CNNConfig(ModelConfig):
    """CNN settings.

    Attributes:
        channels: Output channels of each 3x3 conv block (each followed by 2x2 max-pool).
        hidden_size: Width of the linear layer before the head.
        batch_norm: Batch norm after each convolution.
    """

    name: str = "cnn"
    channels: list[int] = field(default_factory=lambda: [32, 64])
    hidden_size: int = 128
    batch_norm: bool = False

    def validate(self) -> None:
        positive("model", self, "channels", "hidden_size")


@register_model("cnn", CNNConfig)
def build_cnn(cfg: CNNConfig, info: StreamInfo) -> CLModel:
    if info.input_shape is None or len(info.input_shape) != 3:
        raise ConfigError(
            f"model 'cnn' needs image inputs (C, H, W); stream {info.name!r} has none"
        )
    c_in, h, w = info.input_shape
    sizes = f"model.channels={list(cfg.channels)} with model.hidden_size={cfg.hidden_size}"
    affordable(_n_params(cfg, info), sizes)
    layers: list[nn.Module] = []
    for c in cfg.channels:
        layers.append(nn.Conv2d(c_in, c, 3, padding=1))
        if cfg.batch_norm:
            layers.append(nn.BatchNorm2d(c))
        layers += [nn.ReLU()]
        if min(h, w) >= 2:
            layers.append(nn.MaxPool2d(2))
            h, w = h // 2, w // 2
        c_in = c
    layers += [nn.Flatten(), nn.Linear(c_in * h * w, cfg.hidden_size), nn.ReLU()]
    return CLModel(nn.Sequential(*layers), make_head(cfg, cfg.hidden_size, info), cfg.hidden_size)


def _n_params(cfg: CNNConfig, info: StreamInfo) -> int:
    """Parameters of :func:`build_cnn`'s network, counted before anything is allocated."""
    assert info.input_shape is not None
    c_in, h, w = info.input_shape
    n = 0
    for c in cfg.channels:
        n += (c_in * 9 + 1) * c
        if min(h, w) >= 2:
            h, w = h // 2, w // 2
        c_in = c
    return n + (c_in * h * w + 1) * cfg.hidden_size + (cfg.hidden_size + 1) * info.n_classes
