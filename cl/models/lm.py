"""Language models: Hugging Face causal LMs (Llama, Qwen, GPT-2, ...) and seq2seq LMs (T5).

Inputs are the text-to-text streams' packed tensors (see :mod:`cl.streams.text2text`):
``x[:, 0]`` token ids ``[B, L]`` and ``x[:, 1]`` a segment code (0 padding, 1 prompt, 2 target);
the prompt is left-padded to a fixed width and the target right-padded after it. The forward
pass returns next-token logits at the target positions, ``[B, V, Lt]`` (position ``k`` predicts
target token ``k``), so the loop's cross-entropy against the target ids (``-100`` on padding)
is the loss on target tokens only, for both architectures.

A model is loaded by hub name or local path (``model.path``), or built from a small random
config (``model.config=tiny_llama`` or ``tiny_t5``, widths as fields) whose vocabulary is the
stream's tokenizer's (``n_classes`` of a text-to-text stream is its vocabulary size). The Hugging
Face model is the ``backbone`` of the :class:`LanguageModel`, so adapters (peft) can wrap it.

``model.lora_rank > 0`` fine-tunes one shared LoRA (or MoRA, ``model.lora_type=mora``) adapter
instead of the whole model: upstream peft injects it at build time and freezes every base
weight, so any strategy (naive, joint, replay, ewc, lwf, ...) trains only the adapter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from cl.errors import ConfigError, DataNotFoundError, reason
from cl.models import CLModel, ModelConfig, register_model
from cl.streams.base import StreamInfo
from cl.validation import affordable, fraction, non_negative, one_of, positive

RANDOM_CONFIGS = {"causal": ("tiny_llama",), "seq2seq": ("tiny_t5",)}
LORA_TYPES = ("lora", "mora")
MORA_TYPES = (1, 6)  # as cl.models.mora.MORA_TYPES (that module imports peft: slow)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Special ids of the random configs (those of the byte-level tokenizer).
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2


def target_start(code: Tensor) -> int:
    """Width of the (left-padded) prompt block: the first column of the target segment."""
    hits = (code[0] == 2).nonzero()
    if len(hits) == 0:
        raise ValueError("no target segment (code 2) in the packed text-to-text input")
    return int(hits[0, 0])


def split_prompt(x: Tensor) -> tuple[Tensor, Tensor]:
    """Prompt ids ``[B, Lp]`` (left-padded) and their mask of a packed text-to-text input."""
    lp = target_start(x[:, 1])
    return x[:, 0, :lp], x[:, 1, :lp] == 1


class LanguageModel(CLModel):
    """A causal or seq2seq Hugging Face LM over packed text-to-text tensors.

    Attributes:
        kind: ``causal`` or ``seq2seq``.
        hf: The Hugging Face model (also ``backbone``).
    """

    def __init__(self, hf: Any, *, kind: str) -> None:
        width = int(getattr(hf.config, "hidden_size", None) or hf.config.d_model)
        super().__init__(hf, nn.Identity(), width)
        self.kind = kind

    @property
    def hf(self) -> Any:
        return self.backbone

    def features(self, x: Tensor) -> Tensor:
        raise NotImplementedError("a language model has no pooled features; use forward()")

    def forward(
        self,
        x: Tensor,
        task_ids: Tensor | None = None,
        *,
        hf: Any = None,
        prompts: Tensor | None = None,
    ) -> Tensor:
        """Logits ``[B, V, Lt]`` predicting each target token of the packed input ``x``
        (``[B, V, L]``, one per position, for rows of several examples: ``x`` ``[B, 3, L]``).

        ``hf`` runs another Hugging Face module of the same architecture instead (e.g. a copy
        carrying peft adapters, as the ``adapters`` strategy's bank holds). ``prompts``
        (``[P, D]`` or ``[B, P, D]``): soft prompt tokens put in front of each prompt's text
        (see :mod:`cl.models.lm_prompting`).
        """
        if x.shape[1] == 3:
            if prompts is not None:
                raise ValueError("soft prompts do not apply to packed rows")
            return self.forward_packed(x, hf=hf)
        hf = self.hf if hf is None else hf
        ids, code = x[:, 0], x[:, 1]
        lp = target_start(code)
        if self.kind == "causal":
            inputs, mask = self.inputs(ids, (code > 0).long(), prompts, hf)
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            lt = ids.shape[1] - lp
            out = hf(
                **inputs,
                attention_mask=mask,
                position_ids=pos,
                use_cache=False,
                logits_to_keep=lt + 1,
            )
            return out.logits[:, :-1].transpose(1, 2)
        start = int(hf.config.decoder_start_token_id or 0)
        target = ids[:, lp:].masked_fill(code[:, lp:] != 2, start)
        dec_in = torch.cat([torch.full_like(target[:, :1], start), target[:, :-1]], dim=1)
        inputs, mask = self.inputs(ids[:, :lp], (code[:, :lp] == 1).long(), prompts, hf)
        out = hf(
            **inputs,
            attention_mask=mask,
            decoder_input_ids=dec_in,
            use_cache=False,
        )
        return out.logits.transpose(1, 2)

    def forward_packed(self, x: Tensor, *, hf: Any = None) -> Tensor:
        """Logits ``[B, V, L]`` of rows holding several examples (``stream.packing``).

        ``x[:, 2]`` numbers the examples of a row (0 on padding). A token attends only to
        earlier tokens of its own example (a block-diagonal causal mask) and positions restart
        at each example, so every example's logits are those it gets alone.
        """
        if self.kind != "causal":
            raise ValueError("packed rows need a causal LM")
        hf = self.hf if hf is None else hf
        ids, seg = x[:, 0], x[:, 2]
        n = ids.shape[1]
        causal = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
        allowed = (seg[:, :, None] == seg[:, None, :]) & (seg[:, None, :] > 0) & causal
        allowed |= torch.eye(n, dtype=torch.bool, device=x.device)  # padding sees itself
        dtype = hf.get_input_embeddings().weight.dtype
        mask = torch.zeros(allowed.shape, dtype=dtype, device=x.device)
        mask = mask.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]
        # Position of a token within its example: its index minus the example's start.
        idx = torch.arange(n, device=x.device).expand_as(seg)
        new = torch.ones_like(seg, dtype=torch.bool)
        new[:, 1:] = seg[:, 1:] != seg[:, :-1]
        start = torch.where(new, idx, torch.zeros_like(idx)).cummax(dim=1).values
        out = hf(input_ids=ids, attention_mask=mask, position_ids=idx - start, use_cache=False)
        return out.logits.transpose(1, 2)

    def inputs(
        self, ids: Tensor, mask: Tensor, prompts: Tensor | None, hf: Any = None
    ) -> tuple[dict[str, Tensor], Tensor]:
        """The model's inputs (ids, or embeddings with ``prompts`` in) and attention mask."""
        if prompts is None:
            return {"input_ids": ids}, mask
        from cl.models.lm_prompting import insert_prompts

        hf = self.hf if hf is None else hf
        h, mask = insert_prompts(hf.get_input_embeddings()(ids), mask, prompts)
        return {"inputs_embeds": h}, mask

    @torch.no_grad()
    def generate_ids(
        self,
        ids: Tensor,
        mask: Tensor,
        *,
        max_new_tokens: int,
        eos_id: int,
        pad_id: int,
        task_ids: Tensor | None = None,
        hf: Any = None,
        prompts: Tensor | None = None,
    ) -> Tensor:
        """Greedy continuations ``[B, <= max_new_tokens]`` of left-padded prompts (KV cache).

        Args:
            ids: Prompt ids ``[B, Lp]``, left-padded.
            mask: Their attention mask (1 for tokens).
            max_new_tokens: Tokens to generate at most.
            eos_id: End-of-sequence id (generation of a row stops there; rows that stopped
                are padded with ``pad_id``).
            pad_id: Padding id.
            task_ids: Task ids of the rows (unused by the plain model).
            hf: Another Hugging Face module of the same architecture to run (see
                :meth:`forward`).
            prompts: Soft prompt tokens in front of each prompt (as in :meth:`forward`).
        """
        hf = self.hf if hf is None else hf
        inputs, mask = self.inputs(ids, mask.long(), prompts, hf)
        kw: dict[str, Any] = dict(
            **inputs,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            eos_token_id=eos_id,
            pad_token_id=pad_id,
            use_cache=True,
        )
        if self.kind == "seq2seq":
            kw["decoder_start_token_id"] = int(hf.config.decoder_start_token_id or 0)
        out = hf.generate(**kw)
        # Decoder-only models return prompt + continuation (only the continuation when fed
        # embeddings); seq2seq ones start with the decoder start token.
        if self.kind == "seq2seq":
            return out[:, 1:]
        return out if prompts is not None else out[:, ids.shape[1] :]


@dataclass
class LMConfig(ModelConfig):
    """Language model settings.

    Attributes:
        path: Hub name or local folder of a pretrained model (used when ``config`` is null);
            tokenize the stream with the same model (``stream.tokenizer``).
        config: A small random model instead: ``tiny_llama`` (causal) or ``tiny_t5`` (seq2seq),
            sized by the fields below; its vocabulary is the stream's tokenizer's.
        hidden_size: Model width (``d_model`` of T5).
        intermediate_size: Feed-forward width.
        num_layers: Transformer layers (each of encoder and decoder for T5).
        num_heads: Attention heads.
        num_kv_heads: Key/value heads of grouped-query attention (null: ``num_heads``).
        max_positions: Longest sequence of the causal model (positions).
        tie_embeddings: Tie input and output embeddings.
        dtype: Weight dtype: ``float32``, ``bfloat16`` or ``float16`` (``train.amp`` adds bf16
            autocast on CUDA to float32 weights).
        gradient_checkpointing: Recompute activations in the backward pass (less memory).
        attn_implementation: ``sdpa`` or ``eager`` attention.
        lora_rank: 0: full fine-tuning; > 0: train only one shared adapter of this rank (peft),
            the base weights frozen.
        lora_type: ``lora`` or ``mora`` (MoRA's square matrix with the parameters of a rank
            ``lora_rank`` LoRA; see :mod:`cl.models.mora`).
        lora_alpha: LoRA scaling numerator (the update is scaled by ``lora_alpha / lora_rank``;
            MoRA ignores it).
        lora_dropout: Dropout on the adapter's input.
        lora_targets: Module names to adapt; empty: peft's default for the architecture (the
            attention query and value projections: ``q_proj, v_proj`` of Llama, ``q, v`` of
            T5).
        mora_type: MoRA's operators: 1 (sharing, for large ranks) or 6 (rotation, small ranks).
    """

    name: str = "hf_causal_lm"
    path: str | None = None
    config: str | None = "tiny_llama"
    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int | None = None
    max_positions: int = 1024
    tie_embeddings: bool = True
    dtype: str = "float32"
    gradient_checkpointing: bool = False
    attn_implementation: str = "sdpa"
    lora_rank: int = 0
    lora_type: str = "lora"
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=list)
    mora_type: int = 6

    def validate(self) -> None:
        positive("model", self, "hidden_size", "intermediate_size", "num_layers", "num_heads")
        positive("model", self, "num_kv_heads", "max_positions")
        one_of("model", self, "dtype", DTYPES)
        one_of("model", self, "attn_implementation", ("sdpa", "eager"))
        one_of("model", self, "lora_type", LORA_TYPES)
        one_of("model", self, "mora_type", MORA_TYPES)
        non_negative("model", self, "lora_rank")
        positive("model", self, "lora_alpha")
        fraction("model", self, "lora_dropout", high_open=True)
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"model.hidden_size ({self.hidden_size}) must be a multiple of model.num_heads "
                f"({self.num_heads})"
            )


@dataclass
class Seq2SeqConfig(LMConfig):
    """Seq2seq (T5 family) settings: those of :class:`LMConfig`, with ``tiny_t5`` random."""

    name: str = "hf_seq2seq"
    config: str | None = "tiny_t5"


def random_hf_config(cfg: LMConfig, kind: str, vocab_size: int) -> Any:
    """The transformers config of ``cfg.config`` with the stream's vocabulary."""
    if cfg.config not in RANDOM_CONFIGS[kind]:
        raise ConfigError(
            f"model.config must be one of {', '.join(RANDOM_CONFIGS[kind])} for {cfg.name}, "
            f"got {cfg.config!r} (or set model.config=null and model.path)"
        )
    if kind == "causal":
        from transformers import LlamaConfig

        return LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=cfg.hidden_size,
            intermediate_size=cfg.intermediate_size,
            num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_heads,
            num_key_value_heads=cfg.num_kv_heads or cfg.num_heads,
            max_position_embeddings=cfg.max_positions,
            tie_word_embeddings=cfg.tie_embeddings,
            pad_token_id=PAD_ID,
            bos_token_id=BOS_ID,
            eos_token_id=EOS_ID,
        )
    from transformers import T5Config

    t5: dict[str, Any] = dict(
        vocab_size=vocab_size,
        d_model=cfg.hidden_size,
        d_kv=cfg.hidden_size // cfg.num_heads,
        d_ff=cfg.intermediate_size,
        num_layers=cfg.num_layers,
        num_decoder_layers=cfg.num_layers,
        num_heads=cfg.num_heads,
        dropout_rate=0.0,
        tie_word_embeddings=cfg.tie_embeddings,
        pad_token_id=PAD_ID,
        eos_token_id=EOS_ID,
        decoder_start_token_id=PAD_ID,
    )
    return T5Config(**t5)


def estimated_params(cfg: LMConfig, kind: str, vocab_size: int) -> int:
    """Parameters of a random config, from its widths (before anything is allocated)."""
    h, i = cfg.hidden_size, cfg.intermediate_size
    layer = 4 * h * h + 3 * h * i  # attention and gated feed-forward (an upper bound)
    layers = cfg.num_layers * (layer if kind == "causal" else 2 * layer + 4 * h * h)
    return vocab_size * h * (1 if cfg.tie_embeddings else 2) + layers


def load_hf_lm(cfg: LMConfig, kind: str, info: StreamInfo) -> Any:
    """The Hugging Face model of ``cfg``: pretrained from ``path`` or random from ``config``."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    auto = AutoModelForCausalLM if kind == "causal" else AutoModelForSeq2SeqLM
    dtype = DTYPES[cfg.dtype]
    if cfg.config is not None:
        conf = random_hf_config(cfg, kind, info.n_classes)
        affordable(
            estimated_params(cfg, kind, info.n_classes),
            f"model.hidden_size={cfg.hidden_size} model.intermediate_size="
            f"{cfg.intermediate_size} model.num_layers={cfg.num_layers}",
        )
        conf._attn_implementation = cfg.attn_implementation
        return auto.from_config(conf, dtype=dtype)
    if not cfg.path:
        raise ConfigError(f"{cfg.name} needs model.path (a hub name or folder) or model.config")
    try:
        model = auto.from_pretrained(
            cfg.path, dtype=dtype, attn_implementation=cfg.attn_implementation
        )
    except (OSError, ValueError) as e:
        raise DataNotFoundError(
            f"cannot load the language model {cfg.path!r} ({reason(e)}); give a local model "
            "folder as model.path, or a hub name while online"
        ) from None
    emb: Any = model.get_input_embeddings()
    n_vocab = int(emb.weight.shape[0])
    if n_vocab < info.n_classes:
        raise ConfigError(
            f"model {cfg.path!r} has {n_vocab} token embeddings but the stream's tokenizer has "
            f"{info.n_classes} tokens: set stream.tokenizer to the model's ({cfg.path})"
        )
    return model


def build_lm(cfg: LMConfig, info: StreamInfo, kind: str) -> LanguageModel:
    if info.modality != "text2text":
        raise ConfigError(
            f"model {cfg.name!r} needs a text-to-text stream (e.g. stream=text2text_offline or "
            f"stream=memorize); {info.name!r} is {info.modality}"
        )
    hf = load_hf_lm(cfg, kind, info)
    if cfg.gradient_checkpointing:
        hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.lora_rank > 0:
        attach_shared_adapter(hf, cfg)
    return LanguageModel(hf, kind=kind)


def default_targets(hf: Any) -> list[str]:
    """peft's default LoRA targets for ``hf``'s architecture (its attention projections)."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    targets = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(hf.config.model_type)
    if not targets:
        raise ConfigError(
            f"peft has no default LoRA targets for {hf.config.model_type!r} models; "
            "set model.lora_targets (module names, e.g. [q_proj,v_proj])"
        )
    return list(targets)


def attach_shared_adapter(hf: Any, cfg: LMConfig) -> None:
    """Inject one trainable LoRA/MoRA adapter (``default``) into ``hf`` and freeze the rest.

    Upstream peft edits the module tree in place: each targeted ``nn.Linear`` becomes a peft
    layer holding the original weight (``base_layer``) and the adapter; the wrapper model peft
    returns is dropped, so the :class:`LanguageModel` keeps the Hugging Face model's interface.
    """
    from peft import LoraConfig, get_peft_model

    from cl.models.mora import mora_config

    targets = list(cfg.lora_targets) or default_targets(hf)
    if cfg.lora_type == "mora":
        pc = mora_config(cfg.lora_rank, targets, cfg.mora_type, lora_dropout=cfg.lora_dropout)
    else:
        pc = LoraConfig(
            r=cfg.lora_rank,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=targets,
        )
    try:
        get_peft_model(hf, pc)
    except ValueError as e:
        raise ConfigError(f"model.lora_targets: {reason(e)}") from None


@register_model("hf_causal_lm", LMConfig)
def build_causal_lm(cfg: LMConfig, info: StreamInfo) -> LanguageModel:
    return build_lm(cfg, info, "causal")


@register_model("hf_seq2seq", Seq2SeqConfig)
def build_seq2seq(cfg: Seq2SeqConfig, info: StreamInfo) -> LanguageModel:
    return build_lm(cfg, info, "seq2seq")
