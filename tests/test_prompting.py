"""The prompting layer: without prompts it reproduces the wrapped transformers exactly; prompts
enter attention (with the text mask extended) and only they receive gradients."""

from __future__ import annotations

import pytest
import torch

from cl.models.hf import HFEncoder, default_text_model_path, load_hf_encoder
from cl.models.vit import ImageAdapter, TimmViT, ViTConfig, create_vit


@pytest.fixture(scope="module")
def vit() -> TimmViT:
    torch.manual_seed(0)
    cfg = ViTConfig(img_size=16, patch_size=4, depth=2, embed_dim=32, num_heads=2)
    return TimmViT(create_vit(cfg), ImageAdapter(1, 3, 16), pooling="cls", freeze=True)


@pytest.fixture(scope="module")
def minilm() -> tuple[HFEncoder, object]:
    from transformers import AutoTokenizer

    path = default_text_model_path()
    return HFEncoder(
        load_hf_encoder(path), pooling="mean", freeze=True
    ), AutoTokenizer.from_pretrained(path)


def test_vit_split_reproduces_timm_forward_features(vit):
    x = torch.randn(4, 1, 12, 12)  # grey, smaller than img_size: adapter repeats and resizes
    with torch.no_grad():
        ref = vit.vit.forward_features(vit.adapter(x))
        enc = vit.encode(x)
    assert vit.adapter(x).shape == (4, 3, 16, 16)
    assert torch.equal(enc.tokens, ref)
    assert torch.equal(enc.pooled("cls"), ref[:, 0])
    assert torch.allclose(enc.pooled("mean"), ref[:, 1:].mean(1))


def test_vit_prompts_change_outputs_and_only_prompts_get_gradients(vit):
    x = torch.randn(3, 1, 16, 16)
    prompts = torch.randn(3, 5, 32, requires_grad=True)
    enc = vit.encode(x, prompts)
    assert enc.tokens.shape == (3, 5 + 1 + 16, 32) and enc.n_prompts == 5
    enc.prompt_mean().sum().backward()
    assert prompts.grad is not None and prompts.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in vit.parameters())
    # Prompts attend and are attended to: the class token's output moves.
    assert not torch.allclose(enc.pooled("cls"), vit.query(x))
    # Shared [P, D] prompts broadcast over the batch like per-sample copies.
    shared = vit.encode(x, prompts[0].detach()).tokens
    per_sample = vit.encode(x, prompts[0].detach().expand(3, -1, -1)).tokens
    assert torch.equal(shared, per_sample)


def test_frozen_backbone_stays_in_eval_mode(vit):
    vit.train()
    assert vit.training and not any(m.training for m in vit.vit.modules())
    vit.eval()


def _tokens(tok, texts, max_len):
    enc = tok(texts, truncation=True, max_length=max_len, padding="max_length", return_tensors="pt")
    return torch.stack([enc["input_ids"], enc["attention_mask"]], dim=1)


def test_hf_without_prompts_matches_the_model(minilm):
    enc_model, tok = minilm
    x = _tokens(tok, ["The bank raised interest rates.", "A short one"], 16)
    with torch.no_grad():
        ref = enc_model.model(input_ids=x[:, 0], attention_mask=x[:, 1]).last_hidden_state
        out = enc_model.encode(x)
    assert torch.allclose(out.tokens, ref, atol=1e-5)
    m = x[:, 1].unsqueeze(-1).float()
    assert torch.allclose(out.pooled("mean"), (ref * m).sum(1) / m.sum(1), atol=1e-5)
    assert torch.allclose(enc_model.query(x), out.pooled("mean"))


def test_hf_prompt_outputs_ignore_padding(minilm):
    """The extended mask keeps padding out of attention: padding length changes nothing."""
    enc_model, tok = minilm
    texts = ["Shares fell sharply after the results.", "What a lovely flight, thanks!"]
    prompts = torch.randn(2, 4, enc_model.embed_dim) * 0.1
    with torch.no_grad():
        short = enc_model.encode(_tokens(tok, texts, 16), prompts)
        long = enc_model.encode(_tokens(tok, texts, 40), prompts)
        plain = enc_model.encode(_tokens(tok, texts, 16))
    assert short.mask is not None and short.mask[:, :4].all()
    assert torch.allclose(short.prompt_mean(), long.prompt_mean(), atol=1e-5)
    assert torch.allclose(short.pooled("mean"), long.pooled("mean"), atol=1e-5)
    assert not torch.allclose(short.pooled("mean"), plain.pooled("mean"), atol=1e-3)
