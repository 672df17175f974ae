"""Multi-layer perceptron on flattened inputs."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

from torch import nn

from cl.errors import ConfigError
from cl.models import CLModel, ModelConfig, make_head, register_model
from cl.streams.base import StreamInfo
from cl.validation import affordable, fraction, positive


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

    def validate(self) -> None:
        positive("model", self, "hidden_sizes")
        fraction("model", self, "dropout", high_open=True)


@register_model("mlp", MLPConfig)
def build_mlp(cfg: MLPConfig, info: StreamInfo) -> CLModel:
    if info.input_shape is None:
        raise ConfigError(
            f"model 'mlp' needs a stream with a fixed input shape; {info.name!r} has none"
        )
    if any(h <= 0 for h in cfg.hidden_sizes):
        raise ConfigError(f"model.hidden_sizes must be positive, got {list(cfg.hidden_sizes)}")
    widths = [math.prod(info.input_shape), *cfg.hidden_sizes, info.n_classes]
    n_params = sum((a + 1) * b for a, b in itertools.pairwise(widths))
    affordable(n_params, f"model.hidden_sizes={list(cfg.hidden_sizes)}")
    layers: list[nn.Module] = [nn.Flatten()]
    width = widths[0]
    for h in cfg.hidden_sizes:
        layers += [nn.Linear(width, h), nn.ReLU()]
        if cfg.dropout > 0:
            layers.append(nn.Dropout(cfg.dropout))
        width = h
    return CLModel(nn.Sequential(*layers), make_head(cfg, width, info), width)
