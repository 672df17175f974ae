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
# Letters of the per-task prefixes (``task_prefix``): none is a key or value character.
PREFIX_ALPHABET = "ghijklmnopqrstuvwxyz"
PREFIX_LEN = 4


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
        task_prefix: Start every prompt of an experience with that experience's own instruction
            (4 random letters outside the hex alphabet, distinct per experience), so tasks differ
            in their inputs as instruction-tuned tasks do (O-LoRA's premise).
        disjoint_keys: Draw each experience's keys from its own share of the hex alphabet
            (disjoint character sets across experiences).
        disjoint_values: Likewise for the values (each experience's values use its share).
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
    task_prefix: bool = False
    disjoint_keys: bool = False
    disjoint_values: bool = False

    def validate(self) -> None:
        positive("stream", self, "n_experiences", "size", "key_len", "value_len", "max_new_tokens")
        positive("stream", self, "max_length")
        positive("stream", self, "max_train_per_experience", "max_test_per_experience")
        for key in ("disjoint_keys", "disjoint_values"):
            if getattr(self, key) and self.n_experiences > len(ALPHABET) // 2:
                raise ConfigError(
                    f"stream.{key} needs n_experiences <= {len(ALPHABET) // 2}, "
                    f"got {self.n_experiences}"
                )


def distinct_strings(
    n: int, length: int, gen: torch.Generator, alphabet: str, seen: set[str]
) -> list[str]:
    """``n`` random strings not in ``seen`` (added to it), drawn ``n`` at a time."""
    out: list[str] = []
    while len(out) < n:
        for k in random_strings(n, length, gen, alphabet):
            if k not in seen and len(out) < n:
                seen.add(k)
                out.append(k)
    return out


def alphabets(cfg: MemorizeConfig, disjoint: bool) -> list[str]:
    """Each experience's characters: the whole alphabet, or its share of it if ``disjoint``."""
    if not disjoint:
        return [ALPHABET] * cfg.n_experiences
    share = len(ALPHABET) // cfg.n_experiences
    return [ALPHABET[i * share : (i + 1) * share] for i in range(cfg.n_experiences)]


def task_prefixes(n: int, gen: torch.Generator) -> list[str]:
    """``n`` distinct random prefixes of :data:`PREFIX_LEN` letters from ``PREFIX_ALPHABET``."""
    out: list[str] = []
    while len(out) < n:
        p = random_strings(1, PREFIX_LEN, gen, PREFIX_ALPHABET)[0]
        if p not in out:
            out.append(p)
    return out


def random_strings(
    n: int, length: int, gen: torch.Generator, alphabet: str = ALPHABET
) -> list[str]:
    digits = torch.randint(len(alphabet), (n, length), generator=gen)
    return ["".join(alphabet[int(d)] for d in row) for row in digits]


def memorize_tasks(cfg: MemorizeConfig) -> list[TextTask]:
    """The experiences' (prompt, value) pairs: ``"<prefix><key>="`` -> value."""
    gen = torch.Generator().manual_seed(cfg.seed)
    size = min(cfg.size, cfg.max_train_per_experience or cfg.size)
    key_chars = alphabets(cfg, cfg.disjoint_keys)
    total = cfg.n_experiences * size
    if min(len(a) for a in key_chars) ** cfg.key_len < 2 * (size if cfg.disjoint_keys else total):
        raise ConfigError(
            f"stream.key_len={cfg.key_len} gives too few distinct keys for {total} pairs"
        )
    seen: set[str] = set()
    if cfg.disjoint_keys:
        keys = [k for a in key_chars for k in distinct_strings(size, cfg.key_len, gen, a, seen)]
    else:
        keys = distinct_strings(total, cfg.key_len, gen, ALPHABET, seen)
    if cfg.disjoint_values:
        value_chars = alphabets(cfg, True)
        values = [v for a in value_chars for v in random_strings(size, cfg.value_len, gen, a)]
    else:
        values = random_strings(total, cfg.value_len, gen)
    n = cfg.n_experiences
    prefixes = task_prefixes(n, gen) if cfg.task_prefix else [""] * n
    tasks = []
    for i in range(cfg.n_experiences):
        sl = slice(i * size, (i + 1) * size)
        pairs = [(f"{prefixes[i]}{k}=", v) for k, v in zip(keys[sl], values[sl], strict=True)]
        test = pairs[: cfg.max_test_per_experience or size]
        tasks.append(TextTask(name=f"memorize{i}", instruction="", train=pairs, test=test))
    return tasks


@register_stream("memorize", MemorizeConfig)
def memorize(cfg: MemorizeConfig) -> Stream:
    return build_text2text_stream(
        cfg.name,
        memorize_tasks(cfg),
        tokenizer=cfg.tokenizer,
        max_prompt_len=cfg.key_len + 2 + (PREFIX_LEN if cfg.task_prefix else 0),
        max_target_len=cfg.value_len + 1,
        max_new_tokens=cfg.max_new_tokens,
        task_labels=cfg.task_labels,
        perplexity=cfg.perplexity,
        packing=cfg.max_length if cfg.packing else None,
    )
