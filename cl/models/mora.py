"""MoRA adapters on upstream peft (Jiang et al., "MoRA: High-Rank Updating for Parameter-Efficient
Fine-Tuning", 2024).

MoRA replaces LoRA's two thin matrices by one square matrix ``M`` of size
``r_hat = int(sqrt((d_in + d_out) * r) + 0.5)`` (made even for type 6), so that it has about as many
parameters as a rank-``r`` LoRA but an update of rank up to ``r_hat``. Non-parametric operators
map between the layer's sizes and ``r_hat``:

* type 1 (sharing, the paper's choice for large ranks): the input, padded cyclically to a multiple
  of ``r_hat``, is cut into chunks that are summed (compress); ``M``'s output is tiled to
  ``d_out`` (decompress);
* type 6 (rotation, for small ranks): each chunk ``i`` is rotated RoPE-style by angle ``i * theta``
  before ``M`` is applied to every chunk; the chunk outputs are concatenated and cut (or tiled)
  to ``d_out``.

The layers plug into peft through its custom-module hook: :func:`mora_config` returns a plain
:class:`peft.LoraConfig` with ``{nn.Linear: MoraLinear}`` registered, and the layer delegates
forward and merging to a :class:`peft.tuners.lora.layer.LoraVariant`. ``M`` is stored as
``lora_A`` (``lora_B`` is an identity), so peft's state-dict saving, ``set_adapter``,
``delete_adapter`` and ``merge_and_unload`` work unchanged. MoRA ignores ``lora_alpha``
(scaling 1, as the paper's code does), and its scaling stays 1 through peft's ``set_scale`` and
``unscale_layer`` (which would otherwise recompute it as ``lora_alpha / r_hat``). A layer that
peft already wrapped for a plain LoRA adapter keeps peft's LoRA class, so add MoRA adapters first
(or only MoRA adapters) to a model.

Reloading: peft does not write the custom registration into ``adapter_config.json``, so
``PeftModel.from_pretrained(model, path)`` alone would rebuild a LoRA layer and fail to load
``M``. Pass the config: ``PeftModel.from_pretrained(model, path, config=load_mora_config(path))``
where :func:`load_mora_config` reads peft's config plus the ``mora.json`` written by
:func:`save_mora_metadata` (or build the same config again with :func:`mora_config`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, ClassVar

import torch
from peft import LoraConfig
from peft.tuners.lora import layer as lora_layer
from torch import Tensor, nn

MORA_TYPES = (1, 6)
METADATA_FILE = "mora.json"
# MoRA's update is applied unscaled (the paper's code stores scaling 1 and ignores lora_alpha).
MORA_SCALING = 1.0


def mora_rank(d_in: int, d_out: int, r: int, mora_type: int = 1) -> int:
    """Side ``r_hat`` of MoRA's square matrix for a ``d_in -> d_out`` layer at LoRA rank ``r``."""
    r_hat = int(math.sqrt((d_in + d_out) * r) + 0.5)
    # Rotation pairs dimension k with k + r_hat/2, so type 6 needs an even size.
    return r_hat // 2 * 2 if mora_type == 6 else r_hat


def _chunks(x: Tensor, r_hat: int) -> Tensor:
    """``(..., d_in) -> (..., n, r_hat)``: pad cyclically to a multiple of ``r_hat`` and cut."""
    d_in = x.shape[-1]
    n = -(-d_in // r_hat)
    idx = torch.arange(n * r_hat, device=x.device) % d_in
    return x[..., idx].reshape(*x.shape[:-1], n, r_hat)


def _rotate(chunks: Tensor) -> Tensor:
    """RoPE rotation of chunk ``i`` by angles ``i * theta_k`` (theta_k = 10000^(-2k/r_hat))."""
    n, r_hat = chunks.shape[-2:]
    inv_freq = 1.0 / (10000 ** (torch.arange(0, r_hat, 2, device=chunks.device).float() / r_hat))
    angles = torch.outer(torch.arange(n, device=chunks.device).float(), inv_freq)
    angles = torch.cat((angles, angles), dim=-1)
    cos, sin = angles.cos().to(chunks.dtype), angles.sin().to(chunks.dtype)
    half = r_hat // 2
    rotated_half = torch.cat((-chunks[..., half:], chunks[..., :half]), dim=-1)
    return chunks * cos + rotated_half * sin


def _fit(y: Tensor, d_out: int) -> Tensor:
    """Cut ``y`` to ``d_out`` features, tiling it first when it is shorter."""
    if y.shape[-1] == d_out:
        return y
    idx = torch.arange(d_out, device=y.device) % y.shape[-1]
    return y[..., idx]


def mora_apply(x: Tensor, m: Tensor, d_out: int, mora_type: int) -> Tensor:
    """MoRA's update ``delta(x)`` (linear in ``x``): compress, apply ``M``, decompress.

    Args:
        x: Inputs ``(..., d_in)``.
        m: The square matrix ``(r_hat, r_hat)``.
        d_out: Output features of the layer.
        mora_type: 1 (sharing) or 6 (rotation).
    """
    chunks = _chunks(x, m.shape[0])
    if mora_type == 1:
        return _fit(chunks.sum(dim=-2) @ m.T, d_out)
    if mora_type == 6:
        out = _rotate(chunks) @ m.T
        return _fit(out.reshape(*x.shape[:-1], -1), d_out)
    raise ValueError(f"unknown MoRA type {mora_type}; valid: {MORA_TYPES}")


class MoraVariant(lora_layer.LoraVariant):
    """Forward and merging of a MoRA adapter inside a peft LoRA layer."""

    def supports_lora_conversion(self) -> bool:
        return False

    @staticmethod
    def init(module: Any, adapter_name: str, **kwargs: Any) -> None:
        """Nothing to do: :meth:`MoraLinear.update_layer` builds ``M``."""

    @staticmethod
    def merge_safe(module: Any, active_adapter: str, orig_weight: Tensor) -> Tensor:
        return orig_weight + module.get_delta_weight(active_adapter).to(orig_weight.dtype)

    @staticmethod
    def merge_unsafe(module: Any, active_adapter: str, orig_weight: Tensor) -> None:
        orig_weight.data += module.get_delta_weight(active_adapter).to(orig_weight.dtype)

    @staticmethod
    def unmerge(module: Any, active_adapter: str, orig_weight: Tensor) -> Tensor:
        return orig_weight.data - module.get_delta_weight(active_adapter).to(orig_weight.dtype)

    @staticmethod
    def forward(
        module: Any, active_adapter: str, x: Tensor, result: Tensor, **kwargs: Any
    ) -> Tensor:
        m = module.lora_A[active_adapter].weight
        x = module.lora_dropout[active_adapter](x)
        delta = mora_apply(x, m, module.out_features, module.mora_type[active_adapter])
        return result + delta * module.scaling[active_adapter]


class MoraLinear(lora_layer.Linear):
    """peft LoRA ``Linear`` whose adapters from a MoRA config are MoRA (others stay LoRA)."""

    mora_type_default: ClassVar[int] = 1

    def update_layer(
        self, adapter_name: str, r: int, lora_alpha: int, config: LoraConfig, **kwargs: Any
    ) -> None:
        if not hasattr(self, "mora_type"):
            self.mora_type: dict[str, int] = {}
        mora_type = mora_type_of(config)
        if mora_type is None:  # a plain LoRA config added to a layer MoRA created
            self.mora_type.pop(adapter_name, None)
            super().update_layer(adapter_name, r, lora_alpha, config, **kwargs)
            return
        if self.fan_in_fan_out:
            raise ValueError("MoRA supports nn.Linear layers only (fan_in_fan_out=False)")
        d_in, d_out = self._dims()
        r_hat = mora_rank(d_in, d_out, r, mora_type)
        self.r[adapter_name] = r_hat
        self.lora_alpha[adapter_name] = lora_alpha
        self.scaling[adapter_name] = MORA_SCALING
        self.use_rslora[adapter_name] = False
        self.use_dora[adapter_name] = False
        self.lora_bias[adapter_name] = False
        self.mora_type[adapter_name] = mora_type
        self.lora_variant[adapter_name] = MoraVariant()
        dropout = config.lora_dropout
        self.lora_dropout[adapter_name] = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        square = nn.Linear(r_hat, r_hat, bias=False)
        # Zero init: the adapted layer starts as the base layer.
        nn.init.zeros_(square.weight)
        self.lora_A[adapter_name] = square
        self.lora_B[adapter_name] = nn.Identity()
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def _dims(self) -> tuple[int, int]:
        if self.in_features is None or self.out_features is None:
            raise ValueError("MoRA needs a layer with known in/out features")
        return self.in_features, self.out_features

    def get_delta_weight(self, adapter: str) -> Tensor:
        if adapter not in getattr(self, "mora_type", {}):
            return super().get_delta_weight(adapter)
        m: Tensor = self.lora_A[adapter].weight  # type: ignore[assignment]
        # Low-precision CPU matmuls are slow and lossy: merge in float32 and cast back.
        work = torch.float32 if m.device.type == "cpu" and m.element_size() < 4 else m.dtype
        d_in, d_out = self._dims()
        eye = torch.eye(d_in, device=m.device, dtype=work)
        # The update is linear, so its matrix is its image of the identity (rows = inputs).
        delta = mora_apply(eye, m.to(work), d_out, self.mora_type[adapter]).T
        return (delta * self.scaling[adapter]).to(m.dtype)

    def set_scale(self, adapter: str, scale: float) -> None:
        """peft's ``set_scale``: ``scale`` times the adapter's initial scaling, which for MoRA is
        :data:`MORA_SCALING` (peft's own formula, ``lora_alpha / r``, would use MoRA's
        ``r_hat`` and silently shrink the update)."""
        if adapter in getattr(self, "mora_type", {}):
            self.scaling[adapter] = scale * MORA_SCALING
        else:
            super().set_scale(adapter, scale)

    def unscale_layer(self, scale: float | None = None) -> None:
        """peft's ``unscale_layer``: ``None`` resets MoRA adapters to :data:`MORA_SCALING`."""
        mora = getattr(self, "mora_type", {})
        super().unscale_layer(scale)
        if scale is None:
            for name in self.active_adapters:
                if name in mora:
                    self.scaling[name] = MORA_SCALING

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        getattr(self, "mora_type", {}).pop(adapter_name, None)

    def __repr__(self) -> str:
        return "mora." + nn.Module.__repr__(self)


class MoraSharingLinear(MoraLinear):
    """MoRA type 1: sharing compress/decompress."""

    mora_type_default = 1


class MoraRotationLinear(MoraLinear):
    """MoRA type 6: RoPE-style rotation operators."""

    mora_type_default = 6


_LAYER_CLASSES: dict[int, type[MoraLinear]] = {1: MoraSharingLinear, 6: MoraRotationLinear}


def register_mora(config: LoraConfig, mora_type: int = 1) -> LoraConfig:
    """Register MoRA layers for ``nn.Linear`` on ``config`` (in place) and return it."""
    if mora_type not in _LAYER_CLASSES:
        raise ValueError(f"unknown MoRA type {mora_type}; valid: {MORA_TYPES}")
    config._register_custom_module({nn.Linear: _LAYER_CLASSES[mora_type]})
    return config


def mora_config(
    r: int, target_modules: list[str] | str, mora_type: int = 1, **lora_kwargs: Any
) -> LoraConfig:
    """A :class:`peft.LoraConfig` whose adapters on ``nn.Linear`` layers are MoRA.

    Args:
        r: The LoRA rank whose parameter budget MoRA matches.
        target_modules: Module names (or a regex) as in ``LoraConfig``.
        mora_type: 1 (sharing, for large ``r``) or 6 (rotation, for small ``r``).
        **lora_kwargs: Other ``LoraConfig`` fields (``lora_dropout``, ``modules_to_save``, ...).
    """
    cfg = LoraConfig(r=r, target_modules=target_modules, **lora_kwargs)
    return register_mora(cfg, mora_type)


def mora_type_of(config: Any) -> int | None:
    """The MoRA type a config registers, or None for a plain LoRA config."""
    for cls in (getattr(config, "_custom_modules", None) or {}).values():
        if isinstance(cls, type) and issubclass(cls, MoraLinear):
            return cls.mora_type_default
    return None


def save_mora_metadata(path: str | Path, config: LoraConfig) -> None:
    """Write ``mora.json`` beside peft's ``adapter_config.json`` (peft does not save the hook)."""
    mora_type = mora_type_of(config)
    if mora_type is not None:
        Path(path, METADATA_FILE).write_text(json.dumps({"mora_type": mora_type}) + "\n")


def load_mora_config(path: str | Path) -> LoraConfig:
    """peft's saved config of an adapter directory, with MoRA registered when ``mora.json`` says."""
    cfg = LoraConfig.from_pretrained(str(path))
    meta = Path(path, METADATA_FILE)
    if meta.exists():
        register_mora(cfg, int(json.loads(meta.read_text())["mora_type"]))
    return cfg


__all__ = [
    "MORA_TYPES",
    "MoraLinear",
    "MoraVariant",
    "load_mora_config",
    "mora_apply",
    "mora_config",
    "mora_rank",
    "mora_type_of",
    "register_mora",
    "save_mora_metadata",
]
