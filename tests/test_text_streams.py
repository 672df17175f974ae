"""Text streams: real registry data tokenized once and cached, few-shot sampling, label spaces."""

from __future__ import annotations

import pytest
import torch

from cl.config import build, to_dataclass
from cl.errors import ConfigError, DataNotFoundError
from cl.run import run_experiment
from cl.streams import STREAMS
from cl.streams.text import (
    BBC_CLASSES,
    TextStreamConfig,
    build_text_stream,
    default_tokenizer,
    long_task_specs,
    tokenized_source,
)

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


def test_long_stream_and_configs_compose(make_cfg):
    assert len(long_task_specs()) >= 20
    cfg = make_cfg("stream=text_long", "stream.k_shot=2", "stream.max_test_per_class=2")
    entry = STREAMS.get("text_long")
    s = entry.builder(to_dataclass(cfg.stream, entry.config_cls, "stream"))
    assert len(s) == len(long_task_specs()) and s.scenario == "task_il"
    assert s.n_classes == sum(len(c) for c in s.classes)
    cfg = make_cfg("stream=text_standard")
    assert list(cfg.stream.tasks) == ["yelp", "ag_news", "dbpedia", "amazon", "yahoo"]


def test_bad_arguments_and_online_sources_offline(tmp_path):
    with pytest.raises(ConfigError, match="unknown text source"):
        build_text_stream(TextStreamConfig(tasks=["imdb"]))
    with pytest.raises(ConfigError, match="unknown classes"):
        build_text_stream(TextStreamConfig(tasks=["bbc:weather"]))
    with pytest.raises(ConfigError, match="task_il or class_il"):
        build_text_stream(TextStreamConfig(scenario="domain_il"))
    # No `datasets` / no internet here: a clear error, not a traceback from deep inside.
    with pytest.raises(DataNotFoundError, match="ag_news"):
        build_text_stream(TextStreamConfig(tasks=["ag_news"], cache_dir=str(tmp_path)))


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
