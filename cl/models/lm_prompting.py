"""Soft prompts on language models (prompt tuning, Lester et al., EMNLP 2021).

Prompt tokens ``[P, D]`` enter a frozen :class:`~cl.models.lm.LanguageModel` through its input
embeddings: in front of the encoder input of a seq2seq model (T5), in front of the prompt text of
a decoder. Inputs are left-padded, so the soft prompt goes right after each row's padding, not
at column 0: the real tokens (soft prompt, text, target) stay contiguous, the attention mask
covers the soft prompt, and a decoder's position ids (counted over real tokens) start at the
soft prompt; a row's result does not depend on how much padding its batch needed.

* :func:`insert_prompts`: the embeddings and mask with the soft prompt in (what
  ``LanguageModel.forward(x, prompts=...)`` and ``generate_ids(..., prompts=...)`` use, so
  training, rank classification and generation with the KV cache all see the prompt);
* :func:`prompted_features`: a pooled representation of the prompted input (mean of the
  encoder's, or the decoder's last layer's, outputs over the real tokens), e.g. for Q-tuning's
  memory-retention regulariser;
* :func:`vocab_prompt`: a prompt initialised from sampled vocabulary embeddings (Lester et
  al.'s "sampled vocab" initialisation, also Progressive Prompts').
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from cl.models.lm import LanguageModel


def insert_prompts(h: Tensor, mask: Tensor, prompts: Tensor) -> tuple[Tensor, Tensor]:
    """Put ``prompts`` in front of each row's first real token.

    Args:
        h: Token embeddings ``[B, L, D]`` of left-padded rows.
        mask: Their attention mask ``[B, L]`` (0 on the left padding; a decoder's packed input
            may also end with padding).
        prompts: ``[P, D]`` (shared) or ``[B, P, D]`` (per row).

    Returns:
        Embeddings ``[B, P + L, D]`` and mask ``[B, P + L]``: row ``b`` is its padding, the
        prompts, then its tokens.
    """
    b, length, d = h.shape
    if prompts.dim() == 2:
        prompts = prompts.unsqueeze(0).expand(b, -1, -1)
    p = prompts.shape[1]
    src = torch.cat([prompts.to(h.dtype), h], dim=1)
    m = torch.cat([mask.new_ones(b, p), mask], dim=1)
    n_pad = (mask.cumsum(-1) == 0).sum(-1, keepdim=True)  # leading padding per row
    j = torch.arange(p + length, device=h.device).expand(b, -1)
    # Column j takes: padding h[j] (src j + P), prompt j - n_pad, or token h[j - P] (src j).
    idx = torch.where(j < n_pad, j + p, torch.where(j < n_pad + p, j - n_pad, j))
    return src.gather(1, idx.unsqueeze(-1).expand(-1, -1, d)), m.gather(1, idx)


def mean_states(
    lm: LanguageModel, ids: Tensor, mask: Tensor, prompts: Tensor | None = None
) -> Tensor:
    """Mean last-layer output over the real tokens of left-padded ``ids`` (``mask`` true on
    tokens), with ``prompts`` in front if given: the encoder's (seq2seq) or the decoder's
    (causal), ``[B, D]`` in float32."""
    inputs, m = lm.inputs(ids, mask.long(), prompts)
    if lm.kind == "seq2seq":
        out = lm.hf.get_encoder()(**inputs, attention_mask=m).last_hidden_state
    else:
        pos = (m.cumsum(-1) - 1).clamp(min=0)
        body = lm.hf.base_model
        out = body(**inputs, attention_mask=m, position_ids=pos, use_cache=False).last_hidden_state
    w = m.unsqueeze(-1).float()
    return (out.float() * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)


def prompted_features(lm: LanguageModel, x: Tensor, prompts: Tensor | None) -> Tensor:
    """:func:`mean_states` of the prompt block of the packed input ``x`` with ``prompts`` in
    front."""
    from cl.models.lm import split_prompt

    return mean_states(lm, *split_prompt(x), prompts)


def vocab_prompt(lm: LanguageModel, n_tokens: int, generator: torch.Generator) -> Tensor:
    """``[n_tokens, D]`` embeddings of tokens sampled (with ``generator``) from the vocabulary,
    special ids (below 3) excluded."""
    emb = lm.hf.get_input_embeddings().weight
    ids = torch.randint(3, emb.shape[0], (n_tokens,), generator=generator)
    return emb.detach()[ids.to(emb.device)].float().clone()


def embed_dim(lm: LanguageModel) -> int:
    """Width of the model's input embeddings."""
    return int(lm.hf.get_input_embeddings().weight.shape[1])
