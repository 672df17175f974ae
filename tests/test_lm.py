"""Language models on text-to-text streams: learning and forgetting on the memorisation stream,
rank classification's batch-size invariance, padding and KV-cache consistency of the models,
ROUGE-L, the complete runs of the offline stream, and the online loaders offline."""

from __future__ import annotations

import json

import pytest
import torch

from cl.config import build, validate_config
from cl.evaluate import evaluate_row
from cl.evaluate_lm import rouge_l
from cl.metrics import forgetting
from cl.run import cli, run_experiment
from cl.streams.text2text import ByteTokenizer, Encoder, TextTask, _pack
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
