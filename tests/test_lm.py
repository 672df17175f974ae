"""Language models on text-to-text streams: learning and forgetting on the memorisation stream,
rank classification's batch-size invariance, padding and KV-cache consistency of the models,
ROUGE-L, the complete runs of the offline stream, and the online loaders offline."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

from cl.config import build, validate_config
from cl.errors import ConfigError
from cl.evaluate import evaluate_row
from cl.evaluate_lm import extra_rows, rouge_l
from cl.logging.base import RunRecord
from cl.logging.console import format_summary
from cl.metrics import forgetting
from cl.run import cli, run_experiment
from cl.strategy import Batch
from cl.streams.text2text import (
    ByteTokenizer,
    Encoder,
    TextTask,
    _pack,
    build_text2text_stream,
    make_tokenizer,
)
from cl.testing import QUIET, compose

# A tiny Llama memorises 8 random 4-character values per experience in 60 full-batch steps.
MEMORIZE = (
    *QUIET,
    "stream=memorize",
    "model=hf_causal_lm",
    "stream.size=8",
    "stream.key_len=4",
    "stream.value_len=4",
    "train.epochs=60",
    "train.batch_size=8",
    "train.optimizer=adam",
    "train.lr=0.005",
)
# The offline classification corpora as instruction tasks, shrunk.
OFFLINE = (
    *QUIET,
    "stream=text2text_offline",
    "stream.k_shot=2",
    "stream.max_test_per_class=3",
    "stream.max_prompt_len=32",
    "train.epochs=1",
    "train.optimizer=adam",
    "train.lr=0.003",
)


@pytest.fixture(scope="module")
def memorize_runs(tmp_path_factory) -> dict[str, object]:
    return {
        name: run_experiment(
            compose([*MEMORIZE, f"strategy={name}", *extra]), tmp_path_factory.mktemp(name)
        )
        for name, extra in (("naive", ()), ("replay", ("strategy.buffer_size=16",)))
    }


@pytest.mark.slow
def test_memorize_tiny_lm_learns_each_task(memorize_runs):
    for name, rec in memorize_runs.items():
        r = rec.acc_matrix  # type: ignore[attr-defined]
        assert all(r[i][i] >= 0.9 for i in range(len(r))), (name, r)
        assert r[0][1] <= 0.25, (name, r)  # nothing known before training on it


@pytest.mark.slow
def test_naive_forgets_and_replay_forgets_less(memorize_runs):
    naive = forgetting(memorize_runs["naive"].acc_matrix)  # type: ignore[attr-defined]
    replay = forgetting(memorize_runs["replay"].acc_matrix)  # type: ignore[attr-defined]
    assert naive >= 0.5, naive
    assert replay <= naive - 0.3, (naive, replay)


@pytest.mark.parametrize("model", ["hf_causal_lm", "hf_seq2seq"])
def test_offline_text2text_run_is_complete_with_task_metrics(model, tmp_path):
    rec = run_experiment(compose([*OFFLINE, f"model={model}", "strategy=naive"]), tmp_path)
    assert rec.status == "complete"
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["run"]["status"] == "complete"
    assert res["stream"]["task_metrics"] == ["rank", "rank", "rank"]
    assert res["stream"]["tasks"] == ["bbc", "tweets", "rotten_tomatoes"]
    r = res["acc_matrix"]
    assert len(r) == 3 and all(len(row) == 3 and all(0 <= v <= 1 for v in row) for row in r)
    assert res["metrics"]["avg_acc"] is not None


def test_rank_classification_is_batch_size_invariant():
    b = build(compose([*OFFLINE, "model=hf_causal_lm", "strategy=naive"]))
    rows: dict[int, list[list[float] | None]] = {1: [], 64: []}
    for upto in (-1, 0):  # untrained, then trained on the first task
        if upto == 0:
            b.strategy.train_experience(b.stream[0])
        for bs in rows:
            rows[bs].append(evaluate_row(b.strategy, b.stream, trained_upto=upto, batch_size=bs)[0])
    assert rows[1] == rows[64]
    assert all(0 <= v <= 1 for row in rows[1] for v in row or [])


def test_language_model_too_large_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    big = ["model.hidden_size=4000000", "model.num_heads=1", "stream.size=2"]
    rc = cli([*QUIET, "stream=memorize", "model=hf_causal_lm", *big])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "needs about" in err[0], err


def _packed(prompt_pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One example packed with ``prompt_pad`` extra prompt columns; and its target."""
    tok = ByteTokenizer()
    enc = Encoder(tok, max_prompt_len=32, max_target_len=8)
    task = TextTask(name="t", instruction="Say it.", train=[], test=[])
    p, t = enc.prompt(task, "abc"), enc.target("xyz")
    return _pack([p], [t], len(p) + prompt_pad, len(t) + 2, tok.pad_id), torch.tensor(t)


@pytest.mark.parametrize("model", ["hf_causal_lm", "hf_seq2seq"])
def test_padding_does_not_change_logits_and_generation_matches_forward(model):
    torch.manual_seed(0)
    b = build(compose([*MEMORIZE, f"model={model}", "strategy=naive", "stream.size=2"]))
    lm = b.model.eval()
    (x0, t), (x1, _) = _packed(0), _packed(5)
    with torch.no_grad():
        l0, l1 = lm(x0), lm(x1)
    assert l0.shape == (1, 259, len(t) + 2)
    torch.testing.assert_close(l0, l1, atol=1e-4, rtol=1e-4)
    # Greedy generation with the KV cache = argmax of the forward pass fed its own output.
    lp = x1.shape[-1] - len(t) - 2
    gen = lm.generate_ids(x1[:, 0, :lp], x1[:, 1, :lp] == 1, max_new_tokens=4, eos_id=-1, pad_id=0)
    assert gen.shape == (1, 4)
    x = torch.cat([x1[:, :, :lp], torch.stack([gen, torch.full_like(gen, 2)], 1)], dim=2)
    with torch.no_grad():
        greedy = lm(x).argmax(dim=1)
    assert torch.equal(greedy[0], gen[0])


def test_rouge_l():
    assert rouge_l("the cat sat", "The cat sat on the mat") == pytest.approx(2 * 0.5 / 1.5)
    assert rouge_l("a b c", "a b c") == 1.0
    assert rouge_l("x", "y") == 0.0


def test_trace_reads_the_release_layout_with_per_task_metrics(tmp_path):
    for task in ("FOMC", "MeetingBank"):
        (tmp_path / task).mkdir()
        for split in ("train", "test"):
            rows = [{"prompt": f"{task} prompt {i}", "answer": f"answer {i}"} for i in range(3)]
            (tmp_path / task / f"{split}.json").write_text(json.dumps(rows))
    overrides = [*QUIET, "stream=trace", f"stream.data_root={tmp_path}", "model=hf_causal_lm"]
    b = build(compose([*overrides, "stream.tasks=[FOMC,MeetingBank]"]))
    assert b.stream.extra["task_metrics"] == ["exact_match", "rouge_l"]
    assert [len(e.train) for e in b.stream] == [3, 3]
    # Generation-scored rows (exact match, ROUGE-L) of the untrained model are in [0, 1].
    row, _ = evaluate_row(b.strategy, b.stream, trained_upto=-1, batch_size=2)
    assert row is not None and all(0 <= v <= 1 for v in row)


def test_online_streams_compose_without_downloading():
    for stream in ("text2text_standard", "text2text_long", "trace"):
        cfg = compose([*QUIET, f"stream={stream}", "model=hf_causal_lm"])
        validate_config(cfg)
        assert len(cfg.stream.tasks) == {"text2text_standard": 4, "text2text_long": 15}.get(
            stream, 8
        )


@pytest.mark.parametrize(
    ("stream", "task", "expected"),
    [("text2text_standard", "ag_news", "datasets"), ("trace", "FOMC", "stream.data_root")],
)
def test_missing_online_data_is_one_line(stream, task, expected, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    rc = cli([*QUIET, f"stream={stream}", "model=hf_causal_lm", f"stream.tasks=[{task}]"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert expected in err[0], err[0]


# ------------------------------------------ perplexity, packing, chat templates, option checks
CORPUS = (
    *QUIET,
    "stream=text_corpus",
    "stream.tasks=[bbc:sports,bbc:tech,bbc:politics]",
    "model=hf_causal_lm",
    "model.hidden_size=32",
    "model.intermediate_size=64",
    "model.num_layers=1",
    "stream.chunk_len=16",
    "stream.max_train_per_experience=16",
    "stream.max_test_per_experience=4",
    "train.epochs=1",
    "train.batch_size=8",
    "train.optimizer=adam",
    "train.lr=0.01",
)


def test_perplexity_is_exp_of_the_mean_token_nll_computed_by_hand():
    b = build(compose(CORPUS))
    data = b.stream[1].test
    rows = extra_rows(b.strategy, b.stream, batch_size=3)  # batches that split the test set
    assert list(rows) == ["perplexity"] and len(rows["perplexity"]) == 3
    # By hand: the bare Hugging Face model on [bos, chunk], no padding, no packing layout.
    ids = data.x[:, 0][data.x[:, 1] > 0].view(len(data), -1)
    with torch.no_grad():
        logits = b.model.hf(input_ids=ids).logits[:, :-1].float()
    nll = -logits.log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    assert nll.shape == (len(data), 16)
    assert rows["perplexity"][1] == pytest.approx(math.exp(nll.mean().item()), rel=1e-5)
    acc = (logits.argmax(-1) == ids[:, 1:]).float().mean().item()
    row, _ = evaluate_row(b.strategy, b.stream, trained_upto=-1, batch_size=64)
    assert row is not None and row[1] == pytest.approx(acc, abs=1e-6)  # token_accuracy


def test_text_corpus_run_records_the_perplexity_matrix(tmp_path):
    rec = run_experiment(compose(CORPUS), tmp_path)
    res = json.loads((tmp_path / "results.json").read_text())
    ppl = res["matrices"]["perplexity"]
    assert ppl["evaluation"] == res["evaluation"] == "task_agnostic" and ppl["better"] == "lower"
    m, base = ppl["matrix"], ppl["baseline"]
    assert len(m) == 3 and all(len(row) == 3 and all(v > 1 for v in row) for row in m)
    # Training on domain 0 lowers its held-out perplexity well below the untrained model's.
    assert m[0][0] < 0.8 * base[0], (m, base)
    assert res["stream"]["task_metrics"] == ["token_accuracy"] * 3
    assert "perplexity_exp2" in (tmp_path / "metrics.csv").read_text().splitlines()[0]
    assert "perplexity matrix" in format_summary(rec)
    assert RunRecord.from_results(res).matrices == rec.matrices


@pytest.fixture(scope="module")
def packed_and_plain() -> tuple[object, object]:
    """The memorisation stream packed (with the perplexity option) and not: same model init."""
    setup = [*MEMORIZE, "strategy=naive", "stream.size=8", "model.num_layers=1"]
    extra = ("stream.packing=true", "stream.max_length=64", "stream.perplexity=true")
    return build(compose([*setup, *extra])), build(compose(setup))


def test_perplexity_option_on_a_text2text_stream(packed_and_plain):
    packed, plain = packed_and_plain
    rows = extra_rows(packed.strategy, packed.stream, batch_size=64)
    assert len(rows["perplexity"]) == 3 and all(v > 1 for v in rows["perplexity"])
    assert extra_rows(plain.strategy, plain.stream, batch_size=64) == {}


def test_packed_loss_equals_the_unpacked_loss(packed_and_plain):
    packed, plain = packed_and_plain
    assert torch.equal(packed.model.hf.lm_head.weight, plain.model.hf.lm_head.weight)
    p, u = packed.stream[0].train, plain.stream[0].train
    assert p.x.shape[1] == 3 and len(p) < len(u)  # several examples per row
    # The same target tokens: the loss of the packed batch is the token mean of the unpacked.
    assert int((p.y != -100).sum()) == int((u.y != -100).sum())
    lp = packed.strategy.loss(packed.strategy.forward(p.x, None), Batch(p.x, p.y, None))
    per = [
        plain.strategy.loss(
            plain.strategy.forward(u.x[i : i + 1], None), Batch(u.x, u.y[i : i + 1], None)
        )
        for i in range(len(u))
    ]
    counts = (u.y != -100).sum(dim=1).float()
    unpacked = (torch.stack(per) * counts).sum() / counts.sum()
    assert abs(lp.item() - unpacked.item()) < 1e-5, (lp.item(), unpacked.item())
    lp.backward()  # finite gradients through the block-diagonal mask
    assert all(
        torch.isfinite(q.grad).all() for q in packed.model.parameters() if q.grad is not None
    )


MEMORIZE2 = ("stream=memorize", "stream.size=2")


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ((*MEMORIZE2, "model=hf_seq2seq", "stream.packing=true"), "packing=true needs a causal"),
        ((*MEMORIZE2, "model=hf_causal_lm", "train.logit_mask=seen"), "train.logit_mask=seen"),
        (
            (*MEMORIZE2, "model=hf_causal_lm", "stream.packing=true", "strategy=prompt_tuning"),
            "does not train on packed rows",
        ),
        (
            ("stream=text2text_offline", "model=hf_causal_lm", "stream.max_new_tokens=4"),
            "metric=rank generates nothing",
        ),
    ],
)
def test_lm_options_that_cannot_apply_are_refused(extra, expected):
    with pytest.raises(ConfigError, match=re.escape(expected)) as e:
        build(compose([*QUIET, "strategy=naive", *extra]))  # a later strategy= wins
    assert "\n" not in str(e.value)


def _chat_tokenizer(path) -> None:
    """A character-level tokenizer with a chat template, built and saved locally."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>", "<|user|>", "<|assistant|>"]
    chars = [chr(c) for c in range(32, 127)] + ["\n"]
    vocab = {t: i for i, t in enumerate(specials + chars)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        additional_special_tokens=["<|user|>", "<|assistant|>"],
    )
    tok.chat_template = (
        "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}"
        "{% if m.role == 'assistant' %}</s>\n{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    tok.save_pretrained(path)


def test_chat_template_wraps_prompt_and_target(tmp_path):
    _chat_tokenizer(tmp_path)
    task = TextTask(name="t", instruction="Say it.", train=[("abc", "xyz")], test=[("abc", "xyz")])
    kw = dict(tokenizer=str(tmp_path), max_prompt_len=48, max_target_len=8)
    chat = build_text2text_stream("s", [task], chat_template="auto", **kw)
    tok = make_tokenizer(str(tmp_path))
    assert tok.chat_template
    x, y = chat[0].train.x[0], chat[0].train.y[0]
    prompt, target = x[0][x[1] == 1].tolist(), x[0][x[1] == 2].tolist()
    user, assistant = tok.tok.convert_tokens_to_ids(["<|user|>", "<|assistant|>"])
    assert prompt == [user, *tok.encode("Say it.\nabc\nAnswer:"), assistant]
    assert target == [*tok.encode("xyz"), tok.eos_id]  # the assistant's turn, up to </s>
    assert y[y != -100].tolist() == target  # the loss stays on the target tokens
    plain = build_text2text_stream("s", [task], chat_template="none", **kw)[0].train.x[0]
    assert plain[0][plain[1] == 1].tolist() == [tok.bos_id, *tok.encode("Say it.\nabc\nAnswer:")]
