"""timm Vision Transformers as promptable backbones, with an input adapter for any image stream.

``timm.create_model(arch, img_size=..., patch_size=..., num_classes=0, ...)`` builds the ViT;
weights come from a local file (``pretrained_file``, loaded through
``pretrained_cfg_overlay=dict(file=...)``, which resamples the position embedding to
``img_size``) or from the hub when ``pretrained`` is true and the machine is online. A small
randomly initialised ViT (e.g. ``depth=2, embed_dim=48``) is what the offline tests use.

The adapter repeats grey channels to the ViT's input channels and resizes images to
``img_size``, so streams stay as they are. Inputs keep the stream's normalisation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn
from torch.nn import functional as F

from cl.errors import ConfigError, DataNotFoundError
from cl.models import CLModel, ModelConfig, make_head, register_model
from cl.models.prompting import POOLINGS, PromptableBackbone
from cl.streams.base import StreamInfo
from cl.validation import one_of, positive


class ImageAdapter(nn.Module):
    """Repeats channels (1 -> 3) and resizes to ``size`` (bilinear); no parameters."""

    def __init__(self, in_chans: int, out_chans: int, size: int) -> None:
        super().__init__()
        if in_chans != out_chans and in_chans != 1:
            raise ConfigError(
                f"cannot adapt {in_chans}-channel images to a {out_chans}-channel ViT"
            )
        self.repeat = out_chans if in_chans != out_chans else 1
        self.size = size

    def forward(self, x: Tensor) -> Tensor:
        if self.repeat > 1:
            x = x.expand(-1, self.repeat, -1, -1)
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return x


class TimmViT(PromptableBackbone):
    """A timm ``VisionTransformer`` split at ``patch_embed``/``_pos_embed``/``blocks``/``norm``."""

    def __init__(
        self, vit: nn.Module, adapter: ImageAdapter, *, pooling: str, freeze: bool
    ) -> None:
        super().__init__(pooling=pooling)
        for attr in ("patch_embed", "_pos_embed", "blocks", "norm"):
            if not hasattr(vit, attr):
                raise ConfigError(
                    f"{type(vit).__name__} is not a timm VisionTransformer (no {attr})"
                )
        self.adapter = adapter
        self.input_size = adapter.size  # the stream's crops and resizes target this side
        self.vit = vit
        self.embed_dim = int(vit.embed_dim)  # type: ignore[arg-type]
        self.n_prefix = int(vit.num_prefix_tokens)  # type: ignore[arg-type]
        if freeze:
            self.freeze()

    def embed(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        v: Any = self.vit
        h = v._pos_embed(v.patch_embed(self.adapter(x)))
        return v.norm_pre(v.patch_drop(h)), None

    def run(self, h: Tensor, mask: Tensor | None) -> Tensor:
        v: Any = self.vit
        return v.norm(v.blocks(h))

    def class_position(self) -> Tensor | None:
        """The class token's position embedding ``[D]`` (None without a class token or when
        the class token gets none): what L2P's reference code adds to its prompt tokens."""
        v: Any = self.vit
        if self.n_prefix == 0 or getattr(v, "no_embed_class", False) or v.pos_embed is None:
            return None
        return v.pos_embed[0, 0].detach()


@dataclass
class ViTConfig(ModelConfig):
    """timm ViT settings.

    Attributes:
        arch: ``timm.create_model`` name, e.g. ``vit_base_patch16_224.augreg_in21k``.
        img_size: Input resolution (images are resized to it).
        patch_size: Patch size (null: the architecture's).
        depth: Number of blocks (null: the architecture's); small values for tests.
        embed_dim: Token width (null: the architecture's).
        num_heads: Attention heads (null: the architecture's).
        in_chans: Input channels of the ViT (grey streams are repeated to it).
        pretrained: Load the hub weights (needs internet unless cached).
        pretrained_file: Local weights file (.safetensors / .pth / .npz); implies pretrained.
        pooling: ``cls`` or ``mean`` read-out of plain features and of prompt queries.
        freeze: Freeze the ViT (only the head trains under naive training).
    """

    name: str = "vit"
    arch: str = "vit_tiny_patch16_224"
    img_size: int = 224
    patch_size: int | None = None
    depth: int | None = None
    embed_dim: int | None = None
    num_heads: int | None = None
    in_chans: int = 3
    pretrained: bool = False
    pretrained_file: str | None = None
    pooling: str = "cls"
    freeze: bool = False

    def validate(self) -> None:
        positive("model", self, "img_size", "patch_size", "depth", "embed_dim", "num_heads")
        positive("model", self, "in_chans")
        one_of("model", self, "pooling", POOLINGS)


def create_vit(cfg: ViTConfig) -> nn.Module:
    import timm

    kwargs: dict[str, Any] = {"img_size": cfg.img_size, "num_classes": 0, "in_chans": cfg.in_chans}
    for key in ("patch_size", "depth", "embed_dim", "num_heads"):
        if getattr(cfg, key) is not None:
            kwargs[key] = getattr(cfg, key)
    pretrained = cfg.pretrained or cfg.pretrained_file is not None
    if cfg.pretrained_file is not None:
        if not Path(cfg.pretrained_file).is_file():
            raise DataNotFoundError(f"model.pretrained_file {cfg.pretrained_file!r} does not exist")
        kwargs["pretrained_cfg_overlay"] = {"file": str(cfg.pretrained_file)}
    try:
        return timm.create_model(cfg.arch, pretrained=pretrained, **kwargs)
    except RuntimeError as e:
        if "Unknown model" in str(e):
            raise ConfigError(f"unknown timm model {cfg.arch!r}") from None
        raise
    except OSError as e:
        raise DataNotFoundError(
            f"cannot load pretrained weights of {cfg.arch!r} ({str(e).strip().splitlines()[0]}); "
            "set model.pretrained_file to a local weights file, or run online"
        ) from None


@register_model("vit", ViTConfig)
def build_vit(cfg: ViTConfig, info: StreamInfo) -> CLModel:
    if info.input_shape is None or len(info.input_shape) != 3:
        raise ConfigError(
            f"model 'vit' needs image inputs (C, H, W); stream {info.name!r} has none"
        )
    if cfg.pooling not in POOLINGS:
        raise ConfigError(
            f"model.pooling must be one of {', '.join(POOLINGS)}, got {cfg.pooling!r}"
        )
    adapter = ImageAdapter(info.input_shape[0], cfg.in_chans, cfg.img_size)
    backbone = TimmViT(create_vit(cfg), adapter, pooling=cfg.pooling, freeze=cfg.freeze)
    return CLModel(backbone, make_head(cfg, backbone.embed_dim, info), backbone.embed_dim)
