"""Multi-layer perceptron on flattened inputs."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from torch import nn

from cl.errors import ConfigError
from cl.models import CLModel, ModelConfig, make_head, register_model
from cl.streams.base import StreamInfo


@dataclass
class MLPConfig(ModelConfig):
    """MLP settings.

    Attributes:
        hidden_sizes: Widths of the hidden layers.
        dropout: Dropout after each hidden layer.
    """

    name: str = "mlp"
    hidden_sizes: list[int] = field(default_factory=lambda: [256, 256])
    dropout: float = 0.0


@register_model("mlp", MLPConfig)
def build_mlp(cfg: MLPConfig, info: StreamInfo) -> CLModel:
    if info.input_shape is None:
        raise ConfigError(
            f"model 'mlp' needs a stream with a fixed input shape; {info.name!r} has none"
        )
    if any(h <= 0 for h in cfg.hidden_sizes):
        raise ConfigError(f"model.hidden_sizes must be positive, got {list(cfg.hidden_sizes)}")
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(info.input_shape)
    for h in cfg.hidden_sizes:
        layers += [nn.Linear(width, h), nn.ReLU()]
        if cfg.dropout > 0:
            layers.append(nn.Dropout(cfg.dropout))
        width = h
    return CLModel(nn.Sequential(*layers), make_head(cfg, width, info), width)
