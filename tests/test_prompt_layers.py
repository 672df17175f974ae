"""Prompts at chosen layers of a timm ViT: blocks before the injected one are untouched, both
styles change what follows, prefixes act inside attention and only prompts get gradients."""

from __future__ import annotations

import pytest
import torch

from cl.models.prompting import LayerPrompt
from cl.models.vit import ImageAdapter, TimmViT, ViTConfig, create_vit, prefix_block


@pytest.fixture(scope="module")
def vit() -> TimmViT:
    torch.manual_seed(0)
    cfg = ViTConfig(img_size=16, patch_size=4, depth=4, embed_dim=32, num_heads=2)
    return TimmViT(create_vit(cfg), ImageAdapter(1, 3, 16), pooling="cls", freeze=True)


def test_per_layer_pass_without_prompts_is_the_plain_forward(vit):
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        plain = vit.encode(x)
        layered = vit.encode(x, keep_hidden=True)
    assert torch.equal(layered.tokens, plain.tokens)
    assert layered.hidden is not None and len(layered.hidden) == vit.depth == 4


@pytest.mark.parametrize("style", ["prompt", "prefix"])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_injection_at_layer_k_leaves_earlier_layers_identical(vit, style, k):
    x = torch.randn(3, 1, 16, 16)
    shape = (3, 4, 32) if style == "prompt" else (3, 2, 4, 32)
    lp = LayerPrompt(style, torch.randn(shape))
    with torch.no_grad():
        ref = vit.encode(x, keep_hidden=True)
        enc = vit.encode(x, layers={k: lp}, keep_hidden=True)
    assert ref.hidden is not None and enc.hidden is not None
    for j in range(k):
        assert torch.equal(enc.hidden[j], ref.hidden[j]), f"layer {j} before {k} changed"
    added = 4 if style == "prompt" else 0
    assert enc.n_prompts == added
    assert enc.tokens.shape[1] == ref.tokens.shape[1] + added
    # From layer k on, the real tokens' outputs move (prompt tokens sit at 0..P-1).
    for j in range(k, 4):
        assert not torch.allclose(enc.hidden[j][:, added:], ref.hidden[j], atol=1e-4)
    assert torch.equal(enc.pooled("cls"), enc.tokens[:, added])


def test_empty_prefix_is_the_plain_block_and_prefixes_get_the_gradient(vit):
    h = torch.randn(2, 17, 32)
    block = vit.vit.blocks[0]
    with torch.no_grad():
        assert torch.allclose(prefix_block(block, h, torch.zeros(2, 0, 32)), block(h), atol=1e-6)
    pre = torch.randn(2, 5, 32, requires_grad=True)  # shared over the batch
    tok = torch.randn(5, 32, requires_grad=True)
    enc = vit.encode(
        torch.randn(2, 1, 16, 16),
        layers={0: LayerPrompt("prefix", pre), 2: LayerPrompt("prompt", tok)},
    )
    # A weighted sum: a plain sum of a LayerNorm's output is constant in its input.
    (enc.pooled("cls") * torch.linspace(-1, 1, 32)).sum().backward()
    assert pre.grad is not None and pre.grad.abs().sum() > 0
    assert tok.grad is not None and tok.grad.abs().sum() > 0
    assert all(p.grad is None for p in vit.parameters())


def test_bad_style_and_layers_are_refused(vit):
    from cl.errors import ConfigError
    from cl.models.prompting import layer_styles

    with pytest.raises(ValueError, match="style"):
        LayerPrompt("deep", torch.zeros(1, 32))
    with pytest.raises(ConfigError, match=r"0\.\.3"):
        layer_styles([2, 4], "prefix", 4, "strategy.e_prompt")
    assert layer_styles([0, 1], "prefix", 4, "g") == {0: "prefix", 1: "prefix"}
