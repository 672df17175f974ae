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

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from cl.errors import ConfigError, DataNotFoundError
from cl.models import CLModel, ModelConfig, make_head, register_model
from cl.models.prompting import POOLINGS, LayerPrompt, PromptableBackbone
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

    @property
    def depth(self) -> int:
        return len(self.vit.blocks)  # type: ignore[arg-type]

    def run_layers(
        self, h: Tensor, layers: Mapping[int, LayerPrompt], *, keep_hidden: bool
    ) -> tuple[Tensor, int, list[Tensor] | None]:
        v: Any = self.vit
        bad = sorted(k for k in layers if not 0 <= k < len(v.blocks))
        if bad:
            raise ValueError(f"prompt layers {bad} outside 0..{len(v.blocks) - 1}")
        hidden: list[Tensor] | None = [] if keep_hidden else None
        added = 0
        for k, block in enumerate(v.blocks):
            lp = layers.get(k)
            if lp is None:
                h = block(h)
            elif lp.style == "prompt":
                t = lp.tokens if lp.tokens.dim() == 3 else lp.tokens.expand(h.shape[0], -1, -1)
                added += t.shape[1]
                h = block(torch.cat([t.to(h.dtype), h], dim=1))
            else:
                h = prefix_block(block, h, lp.tokens)
            if hidden is not None:
                hidden.append(h)
        return v.norm(h), added, hidden


def prefix_block(block: Any, h: Tensor, prefix: Tensor) -> Tensor:
    """A timm ``Block`` whose attention also attends to ``prefix`` keys and values.

    Args:
        block: The block (pre-norm: ``norm1, attn, ls1, drop_path1, norm2, mlp, ls2,
            drop_path2``).
        h: Its input ``[B, N, D]``.
        prefix: ``[B, 2, L, D]`` or ``[2, L, D]``: key and value prefixes.
    """
    for attr in ("norm1", "attn", "ls1", "drop_path1", "norm2", "mlp", "ls2", "drop_path2"):
        if not hasattr(block, attr):
            raise ValueError(f"{type(block).__name__} is not a timm ViT block (no {attr})")
    a = prefix_attention(block.attn, block.norm1(h), prefix)
    h = h + block.drop_path1(block.ls1(a))
    return h + block.drop_path2(block.ls2(block.mlp(block.norm2(h))))


def prefix_attention(attn: Any, x: Tensor, prefix: Tensor) -> Tensor:
    """timm ``Attention`` on ``x`` with key/value prefixes (prefix-tuning, Li & Liang 2021)."""
    b, n, _ = x.shape
    heads, hd = attn.num_heads, attn.head_dim
    if prefix.dim() == 3:
        prefix = prefix.unsqueeze(0).expand(b, -1, -1, -1)
    gate = getattr(attn, "gate", None)
    g = gate(x).sigmoid() if gate is not None else None
    qkv = attn.qkv(x).reshape(b, n, 3, heads, hd).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    pre = prefix.to(q.dtype).reshape(b, 2, prefix.shape[2], heads, hd).permute(1, 0, 3, 2, 4)
    k = torch.cat([pre[0], k], dim=2)
    v = torch.cat([pre[1], v], dim=2)
    p = attn.attn_drop.p if attn.training else 0.0
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
    out = out.transpose(1, 2).reshape(b, n, heads * hd)
    norm = getattr(attn, "norm", None)
    if norm is not None:
        out = norm(out)
    if g is not None:
        out = out * g
    return attn.proj_drop(attn.proj(out))


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
