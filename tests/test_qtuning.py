"""Q-tuning: bounded queue, PCA eviction against its Eckart-Young bound, old-task accuracy
after an eviction, flat prompt length, frozen backbone and the ledger, and accuracy/forgetting
against Progressive Prompts and plain prompt tuning on the offline text stream (MiniLM)."""

from __future__ import annotations

import pytest
import torch

from cl.config import build
from cl.evaluate import accuracy
from cl.models import CLModel, ModelConfig, make_head
from cl.models.hf import HFEncoder
from cl.models.prompt_queue import PromptQueue, info_nce
from cl.run import run_experiment
from cl.strategy import RunContext, TrainConfig
from cl.streams.base import Experience, StreamInfo, TensorData
from strategies.progprompt import ProgPrompt, ProgPromptConfig
from strategies.qtuning import QTuning, QTuningConfig

TEXT = [
    "stream=text_offline",
    # Pinned: the measured bounds below belong to these tasks, not to the stream's default list.
    "stream.tasks=['bbc:business,tech',tweets,'bbc:entertainment,politics,sports']",
    "stream.max_len=32",
    "stream.k_shot=8",
    "stream.max_test_per_class=20",
    "model=hf_encoder",
    "train.optimizer=adam",
    "train.batch_size=8",
    "train.eval_batch_size=256",
]


def tiny_setup(n_tasks: int, strategy: str, **cfg: object):
    """A small random BERT and synthetic token tasks (structure tests need no pretrained model)."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    bert = BertModel(
        BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    )
    tc = [[2 * t, 2 * t + 1] for t in range(n_tasks)]
    info = StreamInfo.of("synthetic", tc, scenario="task_il", modality="text")
    backbone = HFEncoder(bert, pooling="mean", freeze=True)
    model = CLModel(backbone, make_head(ModelConfig(), 32, info), 32)
    train = TrainConfig(epochs=1, batch_size=4, lr=0.05, optimizer="adam")
    ctx = RunContext(device=torch.device("cpu"), seed=0, stream=info, train=train)
    if strategy == "qtuning":
        strat = QTuning(config=QTuningConfig(**cfg), model=model, context=ctx)  # type: ignore[arg-type]
    else:
        strat = ProgPrompt(config=ProgPromptConfig(**cfg), model=model, context=ctx)  # type: ignore[arg-type]
    exps = []
    for t in range(n_tasks):
        ids = torch.randint(1000, 5000, (8, 12), generator=torch.Generator().manual_seed(t))
        x = torch.stack([ids, torch.ones_like(ids)], dim=1)
        y = torch.tensor(tc[t]).repeat(4)
        data = TensorData(x, y, torch.full((8,), t))
        exps.append(Experience(index=t, task_id=t, classes=tc[t], train=data, test=data))
    return strat, exps


def test_pca_eviction_is_the_best_subspace_and_respects_the_error_bound():
    torch.manual_seed(0)
    q = PromptQueue(capacity=3, length=2, dim=5)
    for t in range(3):
        q.push(torch.randn(2, 5) * (t + 1), task=t)
    before = {t: q.task_prompts(t).clone() for t in range(3)}
    flat = q.rows.reshape(3, -1).double()
    sigma = torch.linalg.svdvals(flat)
    a_norm = {t: torch.linalg.matrix_norm(q.coefs[t], ord=2).item() for t in range(3)}
    dropped = q.evict()
    assert len(q) == 2 and dropped == pytest.approx(sigma[2].item(), rel=1e-6)
    errs = [(q.task_prompts(t) - before[t]).norm().item() for t in range(3)]
    assert all(e <= a_norm[t] * dropped + 1e-5 for t, e in enumerate(errs))  # ||A_t|| sigma_C
    # Eckart-Young: task 2 read all three prompts; the best rank-2 basis misses exactly sigma_3.
    assert errs[2] == pytest.approx(dropped, rel=1e-4)
    # A naive FIFO eviction (drop the oldest prompt) loses more of what task 2 read.
    assert errs[2] < before[2][:2].norm().item()
    with pytest.raises(RuntimeError, match="full"):
        q.push(torch.zeros(2, 5), task=3)
        q.push(torch.zeros(2, 5), task=4)


def test_info_nce_bound_rises_with_dependence():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(16, 8, generator=g)
    _, mi_same = info_nce(a, a + 0.01 * torch.randn(16, 8, generator=g), 0.1)
    _, mi_indep = info_nce(a, torch.randn(16, 8, generator=g), 0.1)
    assert mi_same > 2.5 > 0.5 > mi_indep  # log 16 = 2.77 caps the bound


def test_queue_bounded_prompt_length_flat_and_ledger_counts_everything():
    c, lp, p, d, r, b = 3, 2, 2, 32, 2, 8
    strat, exps = tiny_setup(
        8,
        "qtuning",
        capacity=c,
        prompt_length=lp,
        prefix_length=p,
        agg_rank=r,
        mlp_bottleneck=b,
        mr_always=True,
    )
    prog, pexps = tiny_setup(8, "progprompt", prompt_length=lp, mlp_bottleneck=b)
    init = {k: v.clone() for k, v in strat.backbone.state_dict().items()}
    head = d * 16 + 16
    for t, (e, pe) in enumerate(zip(exps, pexps, strict=True)):
        stats = strat.train_experience(e)
        prog.train_experience(pe)
        n = min(t, c - 1) + 1  # prompts the task read: the (compressed) queue plus its own
        mlp = d * b + b + b * d + d
        assert stats.trainable_params == p * d + lp * d + n * lp * r + d * r + mlp + head
        assert len(strat.queue) <= c
        assert len(strat.prompts_for(t, training=False)) == p + n * lp
        assert len(prog.prompts_for(t, training=False)) == (t + 1) * lp
        rows = len(strat.queue) * lp * d
        coefs = sum(x.numel() for x in strat.queue.coefs.values())
        agg = (t + 1) * d * r + sum(min(i, c - 1) + 1 for i in range(t + 1)) * lp * r
        own = p * d + mlp + lp * d + (n * lp + d) * r  # prefix, MLP, last prompt and its U, V
        assert strat.extra_state_bytes() == 4 * (rows + coefs + agg + own)
    assert len(strat.queue.dropped) == 8 - c
    assert strat.last_mi > 0
    assert all(torch.equal(v, init[k]) for k, v in strat.backbone.state_dict().items())


def test_state_round_trip_after_evictions():
    a, exps = tiny_setup(4, "qtuning", capacity=2)
    for e in exps:
        a.train_experience(e)
    b, _ = tiny_setup(4, "qtuning", capacity=2)
    b.load_state_dict(a.state_dict())
    x, t = exps[0].test.x, exps[0].test.t
    with torch.inference_mode():
        assert torch.equal(a.predict(x, t), b.predict(x, t))


def _task_acc(strat, stream, j):
    strat.model.eval()
    return accuracy(
        strat,
        stream[j],
        n_classes=stream.n_classes,
        batch_size=256,
        task_aware=True,
        allowed_classes=None,
    )


def test_eviction_keeps_old_task_accuracy(make_cfg):
    """Bound: compressing a full queue (C=2 -> 1 principal direction) costs every old task at
    most 0.1 accuracy on the offline text tasks (frozen MiniLM, prompt read-out; measured:
    0.075 on BBC business/tech, 0 on tweets). Rank one out of two prompts is the harshest case."""
    cfg = make_cfg(
        *TEXT,
        "strategy=qtuning",
        "strategy.capacity=2",
        "strategy.readout=prompt",
        "train.lr=0.03",
        "train.epochs=6",
        "checkpoint.enabled=false",
    )
    built = build(cfg)
    strat, stream = built.strategy, built.stream
    init = {k: v.clone() for k, v in strat.backbone.state_dict().items()}
    for exp in list(stream)[:2]:
        strat.train_experience(exp)
    before = [_task_acc(strat, stream, j) for j in range(2)]
    strat.queue.evict()
    after = [_task_acc(strat, stream, j) for j in range(2)]
    assert len(strat.queue) == 1
    assert all(a >= b - 0.1 for a, b in zip(after, before, strict=True)), (before, after)
    assert max(before) > 0.8  # the tasks were learned (BBC topics)
    assert all(torch.equal(v, init[k]) for k, v in strat.backbone.state_dict().items())


@pytest.mark.slow
def test_qtuning_matches_progprompt_and_forgets_less_than_prompt_tuning(make_cfg, tmp_path):
    common = [
        *TEXT,
        "strategy.readout=prompt",
        "train.lr=0.03",
        "train.epochs=8",
        "checkpoint.enabled=false",
    ]
    recs = {
        s: run_experiment(make_cfg(*common, f"strategy={s}", *extra), tmp_path / s)
        for s, extra in {
            "prompt_tuning": [],
            "progprompt": [],
            "qtuning": ["strategy.capacity=2"],  # bounded: 3 tasks through a 2-prompt queue
        }.items()
    }
    m = {s: r.metrics() for s, r in recs.items()}
    # Measured 0.789/0.004 (qtuning), 0.789/0 (progprompt), 0.736/0.021 (prompt_tuning). Only
    # "less", not "far less": per-task heads on the frozen encoder absorb the shared prompt's
    # drift. With frozen heads (train_head=false) prompt_tuning forgets 0.2-0.3, but a bounded
    # queue forgets about as much (0.16-0.37): task prompts are near-orthogonal, so keeping C-1
    # directions loses a whole prompt's worth, and the shared prefix drifts.
    assert m["qtuning"]["avg_acc"] >= m["progprompt"]["avg_acc"] - 0.02, m
    assert m["progprompt"]["forgetting"] == 0.0  # frozen prompts up to the task: exact
    assert m["qtuning"]["forgetting"] <= 0.02, m
    assert m["prompt_tuning"]["forgetting"] > max(m["qtuning"]["forgetting"], 0.0), m


def test_experiment_config_composes_with_a_bounded_queue(make_cfg):
    cfg = make_cfg("experiment=qtuning_text_offline")
    assert cfg.strategy.name == "qtuning" and cfg.stream.name == "text_offline"
    assert cfg.strategy.capacity < len(cfg.stream.tasks)  # the eviction runs
    assert cfg.stream.scenario == "task_il" and cfg.model.freeze
