"""A synthetic memorisation stream: random key -> value strings, one set per experience.

As in the UUID memorisation experiment of MoRA (Jiang et al., "MoRA: High-Rank Updating for
Parameter-Efficient Fine-Tuning", 2024): the model must store arbitrary associations, which a
tiny language model learns in seconds and forgets when trained on the next set. The test set of
an experience is its training pairs (memorisation is the task), scored by greedy generation and
exact match.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cl.errors import ConfigError
from cl.streams import register_stream
from cl.streams.base import Stream
from cl.streams.text2text import TextTask, build_text2text_stream
from cl.validation import positive

ALPHABET = "0123456789abcdef"


@dataclass
class MemorizeConfig:
    """Memorisation stream settings.

    Attributes:
        name: Stream name.
        n_experiences: Experiences (each a fresh set of pairs).
        size: Key -> value pairs per experience.
        key_len: Characters of a key (hexadecimal; keys are distinct across the stream).
        value_len: Characters of a value.
        seed: Seed of the keys and values.
        tokenizer: ``byte`` or a tokenizer path (see ``text2text_offline``).
        max_new_tokens: Tokens generated per key (null: the target width).
        task_labels: Task ids available at test time.
        max_train_per_experience: Cap on the pairs of an experience (``debug=fast``).
        max_test_per_experience: Cap on the pairs tested per experience (the first ones).
        perplexity: Also record the held-out perplexity matrix (``matrices.perplexity``).
        packing: Pack several training pairs per row of ``max_length`` tokens (causal LMs).
        max_length: Tokens of a packed row.
    """

    name: str = "memorize"
    n_experiences: int = 3
    size: int = 32
    key_len: int = 6
    value_len: int = 6
    seed: int = 0
    tokenizer: str = "byte"
    max_new_tokens: int | None = None
    task_labels: bool = False
    max_train_per_experience: int | None = None
    max_test_per_experience: int | None = None
    perplexity: bool = False
    packing: bool = False
    max_length: int = 256

    def validate(self) -> None:
        positive("stream", self, "n_experiences", "size", "key_len", "value_len", "max_new_tokens")
        positive("stream", self, "max_length")
        positive("stream", self, "max_train_per_experience", "max_test_per_experience")


def random_strings(n: int, length: int, gen: torch.Generator) -> list[str]:
    digits = torch.randint(len(ALPHABET), (n, length), generator=gen)
    return ["".join(ALPHABET[int(d)] for d in row) for row in digits]


@register_stream("memorize", MemorizeConfig)
def memorize(cfg: MemorizeConfig) -> Stream:
    gen = torch.Generator().manual_seed(cfg.seed)
    size = min(cfg.size, cfg.max_train_per_experience or cfg.size)
    total = cfg.n_experiences * size
    if len(ALPHABET) ** cfg.key_len < 2 * total:
        raise ConfigError(
            f"stream.key_len={cfg.key_len} gives too few distinct keys for {total} pairs"
        )
    keys: list[str] = []
    seen: set[str] = set()
    while len(keys) < total:  # distinct keys: one association per key in the whole stream
        for k in random_strings(total, cfg.key_len, gen):
            if k not in seen and len(keys) < total:
                seen.add(k)
                keys.append(k)
    values = random_strings(total, cfg.value_len, gen)
    tasks = []
    for i in range(cfg.n_experiences):
        sl = slice(i * size, (i + 1) * size)
        pairs = [(f"{k}=", v) for k, v in zip(keys[sl], values[sl], strict=True)]
        test = pairs[: cfg.max_test_per_experience or size]
        tasks.append(TextTask(name=f"memorize{i}", instruction="", train=pairs, test=test))
    return build_text2text_stream(
        cfg.name,
        tasks,
        tokenizer=cfg.tokenizer,
        max_prompt_len=cfg.key_len + 2,
        max_target_len=cfg.value_len + 1,
        max_new_tokens=cfg.max_new_tokens,
        task_labels=cfg.task_labels,
        perplexity=cfg.perplexity,
        packing=cfg.max_length if cfg.packing else None,
    )
