"""Prompting layer: prepend learnable prompt tokens to a frozen transformer and read out.

A :class:`PromptableBackbone` splits a transformer into ``embed`` (inputs -> token embeddings)
and ``run`` (token embeddings -> output tokens). :meth:`PromptableBackbone.encode` puts prompt
tokens in front of the embedded inputs, extends the attention mask over them and runs the
layers. Prompt-based strategies (L2P, Q-tuning, progressive prompts) use only this API:

* ``query(x)``: features of the frozen model without prompts (no gradient), e.g. L2P's query;
* ``encode(x, prompts)``: output tokens with ``prompts`` (``[B, P, D]``) at positions ``0..P-1``;
* :meth:`Encoded.prompt_mean` / :meth:`Encoded.pooled`: read-outs of those tokens;
* ``encode(x, layers={k: LayerPrompt(...)})``: prompts injected at chosen layers (timm ViTs),
  prompt-tuning style (tokens prepended to block ``k``'s input; they stay in the sequence for
  the following blocks) or prefix-tuning style (key/value prefixes inside block ``k``'s
  attention; the sequence keeps its length), as DualPrompt (Wang et al., ECCV 2022) and
  CODA-Prompt (Smith et al., CVPR 2023) use them. Blocks before the first injected one compute
  exactly what the unprompted backbone computes.

Attention without positional information for the prompts is permutation-equivariant, so
putting them first is equivalent to putting them after the class token (as in L2P's code).
For text encoders the prompts enter through ``inputs_embeds``: the model then adds position
and token-type embeddings to them as to any token, which is how prompt tuning (Lester et al.,
2021) is usually implemented.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

POOLINGS = ("cls", "mean")
PROMPT_STYLES = ("prompt", "prefix")


@dataclass
class LayerPrompt:
    """What enters one block.

    Attributes:
        style: ``prompt`` (tokens prepended to the block's input) or ``prefix`` (keys and
            values prepended inside the block's attention).
        tokens: ``prompt``: ``[B, L, D]`` or ``[L, D]``. ``prefix``: ``[B, 2, L, D]`` or
            ``[2, L, D]`` (index 0: key prefix, 1: value prefix), split into heads like the
            block's own keys and values.
    """

    style: str
    tokens: Tensor

    def __post_init__(self) -> None:
        if self.style not in PROMPT_STYLES:
            raise ValueError(
                f"unknown prompt style {self.style!r}; valid: {', '.join(PROMPT_STYLES)}"
            )


def layer_styles(layers: list[int], style: str, depth: int, what: str) -> dict[int, str]:
    """Validated ``{layer: style}`` of a strategy's per-layer choice (a clear config error)."""
    from cl.errors import ConfigError

    if style not in PROMPT_STYLES:
        raise ConfigError(f"{what} style must be one of {', '.join(PROMPT_STYLES)}, got {style!r}")
    bad = [k for k in layers if not 0 <= k < depth]
    if bad or len(set(layers)) != len(layers):
        raise ConfigError(
            f"{what} layers must be distinct block indices in 0..{depth - 1}, got {list(layers)}"
        )
    return {int(k): style for k in layers}


@dataclass
class Encoded:
    """Output tokens of a (prompted) pass.

    Attributes:
        tokens: ``[B, P + S, D]`` outputs (after the final norm where the model has one).
        n_prompts: ``P``, the prompt tokens at positions ``0..P-1``.
        n_prefix: Class-type tokens right after the prompts (1 for a [CLS]/class token).
        mask: ``[B, P + S]`` True where a token is real (text padding is False); None: all real.
        hidden: With ``keep_hidden``: every block's output (before the final norm).
    """

    tokens: Tensor
    n_prompts: int
    n_prefix: int
    mask: Tensor | None
    hidden: list[Tensor] | None = None

    def prompt_mean(self) -> Tensor:
        """Mean of the prompt-position outputs, ``[B, D]`` (L2P's classifier input)."""
        if self.n_prompts == 0:
            raise ValueError("no prompts in this pass")
        return self.tokens[:, : self.n_prompts].mean(dim=1)

    def pooled(self, pooling: str) -> Tensor:
        """``cls``: the first non-prompt token; ``mean``: mean over the real input tokens."""
        p = self.n_prompts
        if pooling == "cls":
            if self.n_prefix == 0:
                raise ValueError("cls pooling needs a class token; use mean pooling")
            return self.tokens[:, p]
        if pooling != "mean":
            raise ValueError(f"unknown pooling {pooling!r}; valid: {', '.join(POOLINGS)}")
        # Images: mean over patch tokens (class tokens excluded, as timm's avg pooling).
        # Text: mean over unpadded tokens ([CLS]/[SEP] included, as sentence-transformers).
        start = p if self.mask is not None else p + self.n_prefix
        h = self.tokens[:, start:]
        if self.mask is None:
            return h.mean(dim=1)
        m = self.mask[:, p:].unsqueeze(-1).to(h.dtype)
        return (h * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)


def frozen_promptable(model: nn.Module, strategy: str) -> PromptableBackbone:
    """The model's transformer backbone, frozen; a clear error for any other backbone."""
    from cl.errors import ConfigError

    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, PromptableBackbone):
        raise ConfigError(
            f"strategy {strategy!r} needs a transformer backbone: model=vit or model=hf_encoder"
        )
    backbone.freeze()  # backbone, embeddings and norms stay as pretrained
    return backbone


class PromptableBackbone(nn.Module):
    """A transformer whose token sequence can be prefixed with prompts.

    Calling the module returns pooled features without prompts (what a plain classifier uses).
    Subclasses implement :meth:`embed` and :meth:`run` and set ``embed_dim``, ``n_prefix``.

    Attributes:
        embed_dim: Token width ``D``.
        pooling: ``cls`` or ``mean``: read-out of :meth:`forward` and :meth:`query`.
        frozen: Parameters frozen and the inner model kept in eval mode (no dropout), so
            features of the same input are deterministic.
    """

    embed_dim: int
    n_prefix: int

    def __init__(self, *, pooling: str) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; valid: {', '.join(POOLINGS)}")
        self.pooling = pooling
        self.frozen = False

    def freeze(self) -> None:
        """Stop gradients to every backbone parameter and keep it in eval mode."""
        for p in self.parameters():
            p.requires_grad_(False)
        self.frozen = True
        self.train(self.training)

    def train(self, mode: bool = True) -> PromptableBackbone:
        super().train(mode)
        if self.frozen:
            # A frozen backbone is a fixed function: no dropout, no stochastic depth.
            for m in self.children():
                m.eval()
        return self

    @abstractmethod
    def embed(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """Inputs -> (token embeddings ``[B, S, D]``, mask ``[B, S]`` or None)."""

    @abstractmethod
    def run(self, h: Tensor, mask: Tensor | None) -> Tensor:
        """Token embeddings (prompts included) -> output tokens ``[B, S', D]``."""

    @property
    def depth(self) -> int:
        """Number of transformer blocks (0 where per-layer prompts are not supported)."""
        return 0

    def run_layers(
        self, h: Tensor, layers: Mapping[int, LayerPrompt], *, keep_hidden: bool
    ) -> tuple[Tensor, int, list[Tensor] | None]:
        """Blocks with per-layer prompts: (output tokens, prompt tokens added, hidden states)."""
        raise NotImplementedError(f"{type(self).__name__} does not take per-layer prompts")

    def encode(
        self,
        x: Tensor,
        prompts: Tensor | None = None,
        *,
        layers: Mapping[int, LayerPrompt] | None = None,
        keep_hidden: bool = False,
    ) -> Encoded:
        """Run the transformer with ``prompts`` (``[B, P, D]`` or ``[P, D]``) in front.

        Args:
            x: Inputs.
            prompts: Tokens prepended to the embedded inputs (before the first block).
            layers: Prompts injected at chosen blocks (see :class:`LayerPrompt`); prompt-style
                tokens go in front of the sequence, so all prompt tokens stay at ``0..P-1``.
            keep_hidden: Keep every block's output in :attr:`Encoded.hidden`.
        """
        h, mask = self.embed(x)
        n = 0
        if prompts is not None:
            if prompts.dim() == 2:
                prompts = prompts.unsqueeze(0).expand(h.shape[0], -1, -1)
            n = prompts.shape[1]
            h = torch.cat([prompts.to(h.dtype), h], dim=1)
            if mask is not None:
                mask = torch.cat([mask.new_ones(h.shape[0], n), mask], dim=1)
        if not layers and not keep_hidden:
            return Encoded(self.run(h, mask), n, self.n_prefix, mask)
        if mask is not None:
            raise NotImplementedError("per-layer prompts are implemented for vision backbones")
        out, added, hidden = self.run_layers(h, layers or {}, keep_hidden=keep_hidden)
        return Encoded(out, n + added, self.n_prefix, None, hidden)

    def query(self, x: Tensor) -> Tensor:
        """Pooled features of a pass without prompts, without gradient."""
        with torch.no_grad():
            return self.encode(x).pooled(self.pooling)

    def forward(self, x: Tensor) -> Tensor:
        return self.encode(x).pooled(self.pooling)
