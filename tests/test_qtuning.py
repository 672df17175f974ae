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
from cl.strategies.progprompt import ProgPrompt, ProgPromptConfig
from cl.strategies.qtuning import QTuning, QTuningConfig
from cl.strategy import RunContext, TrainConfig
from cl.streams.base import Experience, StreamInfo, TensorData


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
        agg += (t + 1) * p * d  # each trained task's own prefix
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


# The papers' setting: the output layer stays frozen (T5's verbaliser there, the seeded random
# head here), so the prompts carry all task knowledge. Four learnable tasks (tweet polarity is
# the hard one), 16 shots per class, 50 test texts per class.
FROZEN_HEADS = [
    "stream=text_offline",
    "stream.tasks=['bbc:business,tech','bbc:entertainment,politics',"
    "'tweets:negative,positive','bbc:politics,sports']",
    "stream.max_len=32",
    "stream.k_shot=16",
    "stream.max_test_per_class=50",
    "model=hf_encoder",
    "strategy.train_head=false",
    "strategy.readout=prompt",
    "train.optimizer=adam",
    "train.lr=0.1",
    "train.epochs=20",
    "train.batch_size=8",
    "train.eval_batch_size=256",
    "checkpoint.enabled=false",
]
# The three-method comparison, made cheaper (about a third of the compute per run): shorter
# texts, 10 epochs, 40 test texts per class. Its seed table: benchmarks/qtuning_seeds.py.
_SHORTENED = ("stream.max_len", "stream.max_test_per_class", "train.epochs")
COMPARISON = [
    *(o for o in FROZEN_HEADS if not o.startswith(_SHORTENED)),
    "stream.max_len=16",
    "stream.max_test_per_class=40",
    "train.epochs=10",
]
# The strategies compared (strategy -> its extra overrides).
COMPARISON_RUNS = {
    "prompt_tuning": [],
    "progprompt": [],
    "qtuning": ["strategy.capacity=3"],  # bounded: 4 tasks through a 3-prompt queue
}


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
    most 0.1 accuracy (frozen MiniLM and head, the first two tasks of FROZEN_HEADS; measured:
    0.90 / 0.88 before, 0.90 / 0.91 after). Rank one out of two prompts is the harshest case.
    With trained heads (the linear probe fitted to the full prompt's features) one BBC task
    lost 0.15."""
    cfg = make_cfg(*FROZEN_HEADS, "strategy=qtuning", "strategy.capacity=2")
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
    assert min(before) > 0.8  # both tasks were learned (BBC topics)
    assert all(torch.equal(v, init[k]) for k, v in strat.backbone.state_dict().items())


@pytest.mark.slow
@pytest.mark.heavy
def test_frozen_heads_qtuning_near_progprompt_and_both_forget_far_less(make_cfg, tmp_path):
    """One seed of COMPARISON, with margins that every seed of the table below satisfies.

    Seed table (``benchmarks/qtuning_seeds.py``), avg_acc / forgetting:

    ======  =============  =============  =============
    seed    prompt_tuning  progprompt     qtuning C=3
    ======  =============  =============  =============
    0       0.634 / 0.146  0.784 / 0      0.713 / 0.000
    1       0.628 / 0.221  0.691 / 0      0.791 / -0.004
    2       0.600 / 0.254  0.666 / 0      0.716 / 0.071
    3       0.569 / 0.146  0.756 / 0      0.731 / 0.008
    4       0.678 / 0.183  0.591 / 0      0.606 / 0.108
    mean    0.622 / 0.190  0.698 / 0      0.711 / 0.037
    ======  =============  =============  =============

    Per seed, qtuning - progprompt accuracy lies in [-0.071, +0.100], prompt tuning's
    forgetting minus qtuning's in [0.075, 0.225], qtuning - prompt_tuning accuracy in
    [-0.072, +0.163] (seed 4: both prompt methods failed to learn task 0).

    One seed moves a method's accuracy by up to 0.1, in either direction between Q-tuning and
    Progressive Prompts, so the old assertion (qtuning >= progprompt - 0.02, means of two
    seeds) held on one machine and failed on another: a machine whose kernels round
    differently draws other seeds, in effect. On this machine torch 2.14.1 and 2.15.0 (and
    transformers 5.23 and 5.24) give bit-identical matrices (qtuning seed 0, progprompt seed 1), so
    the table mixes them: seed 0 and prompt_tuning under 2.14.1, the rest under 2.15.0.
    Q-tuning's forgetting comes from the eviction only: the trained prompts reach norms of
    1.5e4-5e4 (the MLP under Adam 0.1) and are nearly orthogonal, so the PCA drops most of
    the smallest one: task 0's with seed 2 (0.675 -> 0.525), task 1's with seed 4 (0.787 ->
    0.600). Bounded here: about one old task lost.
    """
    m = {
        s: run_experiment(
            make_cfg(*COMPARISON, f"strategy={s}", "seed=0", *extra), tmp_path / s
        ).metrics()
        for s, extra in COMPARISON_RUNS.items()
    }
    acc = {s: float(r["avg_acc"]) for s, r in m.items()}
    forg = {s: float(r["forgetting"]) for s, r in m.items()}
    assert forg["progprompt"] == 0.0, m  # frozen prompts up to the task: exact
    assert forg["qtuning"] <= 0.15, m  # only the eviction can cost old tasks
    # "Far less": prompt tuning loses a large share of old tasks.
    assert forg["prompt_tuning"] >= 0.12, m
    assert forg["prompt_tuning"] >= forg["qtuning"] + 0.05, m
    assert acc["qtuning"] >= acc["progprompt"] - 0.12, m
    assert acc["qtuning"] >= acc["prompt_tuning"] - 0.1, m  # above it on average, not always


def test_old_tasks_read_their_own_prefix(make_cfg):
    """Without an eviction nothing an old task reads changes (its prompts, aggregation factors
    and its own prefix are frozen), so its predictions are bit-identical after later tasks;
    reading the latest prefix instead lets them move."""
    preds = {}
    for mode in ("own", "latest"):
        strat, exps = tiny_setup(3, "qtuning", capacity=3, prefix_at_test=mode)
        x, t, own = exps[0].test.x, exps[0].test.t, exps[0].classes  # its logits only
        strat.train_experience(exps[0])
        with torch.inference_mode():
            first = strat.predict(x, t)[:, own]
        for e in exps[1:]:
            strat.train_experience(e)
        with torch.inference_mode():
            preds[mode] = (first, strat.predict(x, t)[:, own])
    assert torch.equal(*preds["own"])
    assert not torch.allclose(*preds["latest"])


def test_experiment_config_composes_with_a_bounded_queue(make_cfg):
    cfg = make_cfg("experiment=qtuning_text_offline")
    assert cfg.strategy.name == "qtuning" and cfg.stream.name == "text_offline"
    assert cfg.strategy.capacity < len(cfg.stream.tasks)  # the eviction runs
    assert cfg.stream.scenario == "task_il" and cfg.model.freeze
