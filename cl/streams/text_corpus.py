"""Continual pre-training on raw text: one text domain per experience, documents chunked.

Every experience is a domain of the offline corpora (``bbc``, ``tweets``, ``rotten_tomatoes``,
``20ng``, ``reuters``, or a topic of one, ``bbc:sports``): its documents, shuffled with the
stream's seed, are tokenized, joined with end-of-sequence tokens and cut into chunks of
``chunk_len`` tokens. A chunk is an example with an empty prompt (the begin-of-sequence token
alone) whose target is the whole chunk, so training is plain language modelling. Held-out
chunks come from the corpus's test documents. The accuracy matrix is teacher-forced next-token
accuracy (``token_accuracy``); the perplexity matrix (``matrices.perplexity`` in results.json)
is always recorded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from cl.errors import ConfigError
from cl.streams import register_stream
from cl.streams.base import Stream
from cl.streams.text2text import TextTask, assemble_stream, make_tokenizer
from cl.validation import positive


@dataclass
class TextCorpusConfig:
    """Continual pre-training stream settings.

    Attributes:
        name: Stream name.
        tasks: Domains in training order: ``"source"`` or ``"source:class,class"`` (the
            documents of those classes), sources as in ``text2text_offline``.
        tokenizer: ``byte``, ``minilm`` or the model's tokenizer (path or hub name).
        chunk_len: Tokens per chunk (the target of one example).
        max_train_per_experience: Training chunks per experience (``debug=fast`` caps it).
        max_test_per_experience: Held-out chunks per experience.
        seed: Seed of the document order.
        task_labels: Task ids available at test time.
    """

    name: str = "text_corpus"
    tasks: list[str] = field(default_factory=lambda: ["bbc", "tweets", "rotten_tomatoes"])
    tokenizer: str = "byte"
    chunk_len: int = 64
    max_train_per_experience: int = 256
    max_test_per_experience: int = 64
    seed: int = 0
    task_labels: bool = False

    def validate(self) -> None:
        positive("stream", self, "chunk_len", "max_train_per_experience", "max_test_per_experience")


def chunk_documents(
    docs: list[str],
    order: torch.Tensor,
    *,
    encode: Callable[[str], list[int]],
    eos: int,
    length: int,
    n: int,
) -> list[list[int]]:
    """Up to ``n`` chunks of ``length`` tokens of the documents in ``order``, joined by ``eos``."""
    ids: list[int] = []
    for i in order.tolist():
        if len(ids) >= length * n:
            break
        ids += [*encode(docs[i]), eos]
    return [ids[s : s + length] for s in range(0, len(ids) - length + 1, length)][:n]


def _documents(spec: str, loaded: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Training and test documents of a domain (``loaded`` caches the corpora read)."""
    from cl.streams.text import parse_task
    from cl.streams.text_sources import load_source

    source, names = parse_task(spec)
    if source not in loaded:
        loaded[source] = load_source(source)
    tr_x, tr_y, te_x, te_y, classes = loaded[source]
    keep = set(names or classes)
    unknown = sorted(keep - set(classes))
    if unknown:
        raise ConfigError(f"task {spec!r}: unknown classes {unknown}; {source} has {classes}")

    def texts(xs: Sequence[str | tuple[str, ...]], ys: Sequence[str]) -> list[str]:
        return [
            x if isinstance(x, str) else "\n".join(x)
            for x, y in zip(xs, ys, strict=True)
            if y in keep
        ]

    return texts(tr_x, tr_y), texts(te_x, te_y)


@register_stream("text_corpus", TextCorpusConfig)
def text_corpus(cfg: TextCorpusConfig) -> Stream:
    if not cfg.tasks:
        raise ConfigError("stream.tasks is empty")
    tok = make_tokenizer(cfg.tokenizer)
    gen = torch.Generator().manual_seed(cfg.seed)
    tasks, coded = [], []
    loaded: dict[str, Any] = {}
    for spec in cfg.tasks:
        splits = []
        caps = (cfg.max_train_per_experience, cfg.max_test_per_experience)
        for docs, n in zip(_documents(spec, loaded), caps, strict=True):
            order = torch.randperm(len(docs), generator=gen)
            chunks = chunk_documents(
                docs, order, encode=tok.encode, eos=tok.eos_id, length=cfg.chunk_len, n=n
            )
            if not chunks:
                raise ConfigError(
                    f"task {spec!r} has too little text for one chunk of "
                    f"stream.chunk_len={cfg.chunk_len} tokens"
                )
            splits.append(([[tok.bos_id] for _ in chunks], chunks))
        tasks.append(TextTask(spec, "", [], [], metric="token_accuracy"))
        coded.append((splits[0], splits[1], None))
    return assemble_stream(
        cfg.name,
        tasks,
        coded,
        tokenizer=cfg.tokenizer,
        max_new_tokens=None,
        task_labels=cfg.task_labels,
        perplexity=True,
        packing=None,
    )
