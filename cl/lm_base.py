"""A small pretrained base language model, built offline from the platform itself.

Adapter methods whose papers start from a pretrained language model (O-LoRA, MoRA, ...) are
measured here on tiny models built from a config. A random tiny Llama is a poor stand-in for a
frozen base: its tied embeddings (initialised with std 0.02) and unit final norm bound every
logit by ``||h|| max ||e||``, about ``sqrt(d) * 0.02 sqrt(d) = 0.02 d`` (1.3 at width 64; an
adapter trains neither factor), so a model trained only through adapters stays close to uniform
over the vocabulary (measured on ``stream=memorize``: perplexity 70-90 on the pairs of tasks it
reproduces at exact match 0.75-1.0) and any later change flips its argmax.

:func:`memorize_base` fully fine-tunes a random tiny causal LM on memorisation pairs from a
seed the continual stream does not use, then saves it as a Hugging Face folder: load it with
``model.config=null model.path=<folder>`` (byte tokenizer, the stream's default). Its logits
have a trained scale, as a pretrained model's have, and it already knows the task's format.
The base must be trained to convergence: with 256 pairs for 50 epochs (loss not yet near 0)
O-LoRA kept no more than naive LoRA in ``benchmarks/olora_forgetting.py``; with the defaults
(128 pairs, 100 epochs, ~20 s on one CPU core) it keeps most of the earlier tasks.
"""

from __future__ import annotations

import json
from pathlib import Path

from cl.errors import ConfigError

# Stream seed of the pretraining pairs: continual runs use their own stream.seed (0 by default).
PRETRAIN_SEED = 999


def memorize_base(
    folder: str | Path,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    pairs: int = 128,
    key_len: int = 4,
    value_len: int = 4,
    epochs: int = 100,
    lr: float = 0.003,
    seed: int = PRETRAIN_SEED,
) -> Path:
    """A tiny Llama fully fine-tuned on ``pairs`` memorisation pairs, saved in ``folder``.

    A model already in ``folder`` is reused (the build is deterministic on CPU) if its width and
    depth are the ones asked for; otherwise the call is refused.

    Args:
        folder: Where the Hugging Face model is written (``config.json`` + weights).
        hidden_size: Width (the MLP is twice as wide), as ``model.hidden_size``.
        num_layers: Decoder layers.
        pairs: Memorisation pairs of the pretraining set (``stream.size``).
        key_len: Characters of each key (use the continual stream's).
        value_len: Characters of each value (use the continual stream's).
        epochs: Passes over the pairs (batch 16, Adam).
        lr: Adam learning rate.
        seed: Seed of the pairs and of the initialisation.

    Returns:
        ``folder``, for ``model.path``.

    Raises:
        ConfigError: ``folder`` holds a model of another width or depth.
    """
    from cl.config import build, compose_config

    out = Path(folder)
    if (out / "config.json").exists():
        saved = json.loads((out / "config.json").read_text())
        got = (saved.get("hidden_size"), saved.get("num_hidden_layers"))
        if got != (hidden_size, num_layers):
            raise ConfigError(
                f"{out} holds a model of width {got[0]} and {got[1]} layers, not "
                f"{hidden_size} and {num_layers}: give another folder"
            )
        return out
    cfg = compose_config(
        [
            "logger=none",
            "device=cpu",
            "strategy=naive",
            "stream=memorize",
            "stream.n_experiences=1",
            f"stream.size={pairs}",
            f"stream.key_len={key_len}",
            f"stream.value_len={value_len}",
            f"stream.seed={seed}",
            "model=hf_causal_lm",
            f"model.hidden_size={hidden_size}",
            f"model.intermediate_size={2 * hidden_size}",
            f"model.num_layers={num_layers}",
            f"train.epochs={epochs}",
            "train.batch_size=16",
            "train.optimizer=adam",
            f"train.lr={lr}",
            f"seed={seed}",
        ]
    )
    built = build(cfg)
    built.strategy.train_experience(built.stream[0])
    out.mkdir(parents=True, exist_ok=True)
    built.model.hf.save_pretrained(out)  # type: ignore[union-attr, operator]
    return out
