"""Text task streams: each experience is one dataset or one group of its classes.

Tensor layout: ``TensorData.x`` is a LongTensor ``[N, 2, L]``: ``x[:, 0]`` holds the input ids
and ``x[:, 1]`` the attention mask (1 for tokens, 0 for padding), padded to ``max_len``; the
text encoders in :mod:`cl.models.hf` take it as is. Each source dataset is tokenized once with
the backbone's tokenizer and cached on disk under ``cache_dir``, keyed by source, tokenizer and
``max_len``; few-shot sampling (``k_shot`` per class, seeded) happens on the cached tensors.

Tasks are strings ``"source"`` (all its classes) or ``"source:class,class"``; the sources are
in :mod:`cl.streams.text_sources`: offline ``bbc``, ``tweets``, ``rotten_tomatoes`` and the
optional ``20ng``, ``reuters``, ``reuters52``; online (Hugging Face ``datasets``) the standard
sequence and the 15-task long one.

Label spaces: ``task_il`` gives every task its own global ids (disjoint across tasks even when a
source class recurs); ``class_il`` gives each (source, class) one global id and rejects a class
that appears in two tasks.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from cl.errors import ConfigError, DataNotFoundError
from cl.streams import register_stream
from cl.streams.base import Experience, Stream, TensorData
from cl.streams.text_sources import (
    BBC_CLASSES,
    RT_CLASSES,
    SOURCES,
    TWEET_CLASSES,
    Text,
    load_source,
)
from cl.validation import one_of, positive

CACHE_VERSION = 1


@dataclass
class Tokenized:
    """One source tokenized: ids/mask ``[N, L]``, class index per row, test-row flags."""

    ids: Tensor
    mask: Tensor
    labels: Tensor
    is_test: Tensor
    classes: list[str]


def default_tokenizer() -> str:
    from cl.models.hf import default_text_model_path

    return default_text_model_path()


def default_cache_dir() -> Path:
    return Path(os.environ.get("CL_CACHE_DIR", Path.home() / ".cache" / "cl-platform")) / "text"


def _encode(tok: Any, texts: list[Text], max_len: int) -> Any:
    """Tokenize to ``max_len``; segmented texts go in as the tokenizer's sentence pairs."""
    kw: dict[str, Any] = dict(
        truncation=True, max_length=max_len, padding="max_length", return_tensors="pt"
    )
    if not any(isinstance(t, tuple) for t in texts):
        return tok(texts, **kw)
    segs = [t if isinstance(t, tuple) else (t,) for t in texts]
    sep = f" {tok.sep_token} " if tok.sep_token else " "
    return tok([s[0] for s in segs], [sep.join(s[1:]) for s in segs], **kw)


def tokenized_source(source: str, tokenizer: str, max_len: int, cache_dir: Path) -> Tokenized:
    """Tokenize ``source`` with ``tokenizer`` once; later calls read the cache file."""
    key = hashlib.sha1(f"{CACHE_VERSION}|{source}|{tokenizer}|{max_len}".encode()).hexdigest()[:16]
    path = cache_dir / f"{source}-{max_len}-{key}.pt"
    if path.exists():
        return Tokenized(**torch.load(path, weights_only=True))
    tr_x, tr_y, te_x, te_y, classes = load_source(source)
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(tokenizer)
    except OSError as e:
        raise DataNotFoundError(
            f"cannot load tokenizer {tokenizer!r}: {str(e).splitlines()[0]}"
        ) from None
    enc = _encode(tok, tr_x + te_x, max_len)
    index = {c: i for i, c in enumerate(classes)}
    data = {
        "ids": enc["input_ids"].to(torch.int32),
        "mask": enc["attention_mask"].to(torch.int8),
        "labels": torch.tensor([index[y] for y in tr_y + te_y], dtype=torch.long),
        "is_test": torch.tensor([False] * len(tr_x) + [True] * len(te_x)),
        "classes": classes,
    }
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(data, tmp)
    tmp.replace(path)  # atomic: concurrent runs never read a half-written file
    return Tokenized(**data)


@dataclass
class TextStreamConfig:
    """Text stream settings.

    Attributes:
        name: Stream name.
        tasks: Task specs ``"source"`` or ``"source:class,class"`` in training order.
        scenario: ``task_il`` (per-task label spaces) or ``class_il`` (union label space).
        task_labels: Task ids available at test time (always true for task_il).
        tokenizer: Tokenizer path or hub name; null: the offline MiniLM (match model.path).
        max_len: Tokens per text (truncation and padding).
        k_shot: Training examples per class (null: all).
        max_test_per_class: Test examples per class (null: all).
        seed: Seed of the few-shot and test sampling.
        max_train_per_experience: Cap on an experience's training rows (smoke tests,
            ``debug=fast``), applied after the per-class sampling.
        max_test_per_experience: Cap on an experience's test rows.
        cache_dir: Folder of the tokenization cache (null: ``$CL_CACHE_DIR`` or
            ``~/.cache/cl-platform``, then ``text/``).
    """

    name: str = "text_offline"
    tasks: list[str] = field(
        default_factory=lambda: ["bbc:business,tech", "tweets", "bbc:entertainment,politics,sports"]
    )
    scenario: str = "task_il"
    task_labels: bool = True
    tokenizer: str | None = None
    max_len: int = 64
    k_shot: int | None = 16
    max_test_per_class: int | None = 100
    seed: int = 0
    max_train_per_experience: int | None = None
    max_test_per_experience: int | None = None
    cache_dir: str | None = None

    def validate(self) -> None:
        positive("stream", self, "max_len", "k_shot", "max_test_per_class")
        positive("stream", self, "max_train_per_experience", "max_test_per_experience")
        one_of("stream", self, "scenario", ("task_il", "class_il"))


def long_task_specs() -> list[str]:
    """24 tasks: every BBC topic pair (10) and triple (10), every tweet-sentiment pair (3), and
    Rotten Tomatoes review polarity (1)."""
    pairs = [f"bbc:{a},{b}" for a, b in combinations(BBC_CLASSES, 2)]
    triples = [f"bbc:{','.join(t)}" for t in combinations(BBC_CLASSES, 3)]
    sentiment = [f"tweets:{a},{b}" for a, b in combinations(TWEET_CLASSES, 2)]
    sentiment.insert(1, f"rotten_tomatoes:{','.join(RT_CLASSES)}")
    # Interleave: a sentiment task after every five topic tasks.
    return [
        *pairs[:5],
        sentiment[0],
        *triples[:5],
        sentiment[1],
        *pairs[5:],
        sentiment[2],
        *triples[5:],
        sentiment[3],
    ]


# The 15-task long sequence of Progressive Prompts (Razdaibiedina et al., 2023, orders 4-6),
# also used by O-LoRA and later text CL work. Sources: cl.streams.text_sources.HF_SOURCES.
LONG_STANDARD_ORDERS: dict[int, list[str]] = {
    4: [
        "mnli", "cb", "wic", "copa", "qqp", "boolq", "rte", "imdb",
        "yelp", "amazon", "sst2", "dbpedia", "ag_news", "multirc", "yahoo",
    ],
    5: [
        "multirc", "boolq", "wic", "mnli", "cb", "copa", "qqp", "rte",
        "imdb", "sst2", "dbpedia", "ag_news", "yelp", "amazon", "yahoo",
    ],
    6: [
        "yelp", "amazon", "mnli", "cb", "copa", "qqp", "rte", "imdb",
        "sst2", "dbpedia", "ag_news", "yahoo", "multirc", "boolq", "wic",
    ],
}  # fmt: skip


def parse_task(spec: str) -> tuple[str, list[str] | None]:
    source, _, names = spec.partition(":")
    if source not in SOURCES:
        raise ConfigError(
            f"unknown text source {source!r} in task {spec!r}; valid: {', '.join(SOURCES)}"
        )
    return source, [n.strip() for n in names.split(",")] if names else None


def _sample(rows: Tensor, k: int | None, gen: torch.Generator) -> Tensor:
    if k is None or k >= len(rows):
        return rows
    return rows[torch.randperm(len(rows), generator=gen)[:k].sort().values]


def build_text_stream(cfg: TextStreamConfig) -> Stream:
    """Experiences from task specs, over cached tokenizations."""
    if cfg.scenario not in ("task_il", "class_il"):
        raise ConfigError(f"text streams support task_il or class_il, got {cfg.scenario!r}")
    if not cfg.tasks:
        raise ConfigError("stream.tasks is empty")
    if cfg.max_len < 2 or (cfg.k_shot is not None and cfg.k_shot <= 0):
        raise ConfigError("stream.max_len must be >= 2 and stream.k_shot positive (or null)")
    tokenizer = cfg.tokenizer or default_tokenizer()
    cache = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
    gen = torch.Generator().manual_seed(cfg.seed)
    global_ids: dict[tuple[str, str], int] = {}
    owner: dict[tuple[str, str], int] = {}
    n_classes = 0
    exps = []
    for i, spec in enumerate(cfg.tasks):
        source, names = parse_task(spec)
        data = tokenized_source(source, tokenizer, cfg.max_len, cache)
        names = names or list(data.classes)
        unknown = sorted(set(names) - set(data.classes))
        if unknown:
            raise ConfigError(
                f"task {spec!r}: unknown classes {unknown}; {source} has {data.classes}"
            )
        ids = []
        for n in names:
            key = (source, n)
            if cfg.scenario == "class_il":
                if key in owner:
                    raise ConfigError(
                        f"class_il needs each class in one task; {source}:{n} is in tasks "
                        f"{owner[key]} and {i}"
                    )
                owner[key] = i
                global_ids.setdefault(key, len(global_ids))
                ids.append(global_ids[key])
            else:
                ids.append(n_classes + len(ids))
        n_classes = len(global_ids) if cfg.scenario == "class_il" else n_classes + len(ids)
        parts: dict[bool, list[Tensor]] = {False: [], True: []}
        ys: dict[bool, list[Tensor]] = {False: [], True: []}
        for n, gid in zip(names, ids, strict=True):
            c = data.classes.index(n)
            for test, k in ((False, cfg.k_shot), (True, cfg.max_test_per_class)):
                rows = _sample(
                    ((data.labels == c) & (data.is_test == test)).nonzero()[:, 0], k, gen
                )
                parts[test].append(rows)
                ys[test].append(torch.full((len(rows),), gid, dtype=torch.long))
        split = []
        for test, cap in (
            (False, cfg.max_train_per_experience),
            (True, cfg.max_test_per_experience),
        ):
            rows, y = torch.cat(parts[test]), torch.cat(ys[test])
            keep = _sample(torch.arange(len(rows)), cap, gen)
            rows, y = rows[keep], y[keep]
            x = torch.stack([data.ids[rows], data.mask[rows]], dim=1).long()
            split.append(TensorData(x, y, torch.full((len(rows),), i)))
        exps.append(
            Experience(index=i, task_id=i, classes=sorted(ids), train=split[0], test=split[1])
        )
    return Stream(
        name=cfg.name,
        scenario=cfg.scenario,
        n_classes=n_classes,
        experiences=exps,
        modality="text",
        input_shape=None,
        has_task_ids=cfg.task_labels or cfg.scenario == "task_il",
        extra={"tokenizer": tokenizer, "max_len": cfg.max_len, "tasks": list(cfg.tasks)},
    )


@dataclass
class FourTaskTextStreamConfig(TextStreamConfig):
    """text_offline with Rotten Tomatoes polarity after the tweets (two sentiment tasks in a
    row); a separate stream because results measured on text_offline rely on its three tasks."""

    name: str = "text_offline4"
    tasks: list[str] = field(
        default_factory=lambda: [
            "bbc:business,tech",
            "tweets",
            "rotten_tomatoes",
            "bbc:entertainment,politics,sports",
        ]
    )


@dataclass
class LongTextStreamConfig(TextStreamConfig):
    """The long offline sequence (24 tasks; task_il because source classes recur)."""

    name: str = "text_long"
    tasks: list[str] = field(default_factory=long_task_specs)


@dataclass
class StandardTextStreamConfig(TextStreamConfig):
    """The standard text CL sequence (online; Hugging Face ``datasets``)."""

    name: str = "text_standard"
    tasks: list[str] = field(
        default_factory=lambda: ["yelp", "ag_news", "dbpedia", "amazon", "yahoo"]
    )
    max_len: int = 256


@dataclass
class LongStandardTextStreamConfig(StandardTextStreamConfig):
    """The 15-task long sequence (online; order 4 of ``LONG_STANDARD_ORDERS`` by default)."""

    name: str = "text_standard_long"
    tasks: list[str] = field(default_factory=lambda: list(LONG_STANDARD_ORDERS[4]))
    max_test_per_class: int | None = 500


@register_stream("text_offline", TextStreamConfig)
def text_offline(cfg: TextStreamConfig) -> Stream:
    """BBC topics and tweet sentiment as successive tasks (offline)."""
    return build_text_stream(cfg)


@register_stream("text_offline4", FourTaskTextStreamConfig)
def text_offline4(cfg: FourTaskTextStreamConfig) -> Stream:
    """BBC topics, tweet sentiment, Rotten Tomatoes polarity, BBC topics (offline)."""
    return build_text_stream(cfg)


@register_stream("text_long", LongTextStreamConfig)
def text_long(cfg: LongTextStreamConfig) -> Stream:
    """24 tasks split from BBC topics, tweet sentiment and Rotten Tomatoes (offline)."""
    return build_text_stream(cfg)


@register_stream("text_standard", StandardTextStreamConfig)
def text_standard(cfg: StandardTextStreamConfig) -> Stream:
    """Yelp, AG News, DBpedia, Amazon, Yahoo (de Masson d'Autume et al., 2019; online)."""
    return build_text_stream(cfg)


@register_stream("text_standard_long", LongStandardTextStreamConfig)
def text_standard_long(cfg: LongStandardTextStreamConfig) -> Stream:
    """The standard five, GLUE, SuperGLUE and IMDB: 15 tasks (Razdaibiedina et al., 2023)."""
    return build_text_stream(cfg)
