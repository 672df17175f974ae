"""Cost per training step and per inference batch as tasks accumulate: progprompt vs qtuning.

Progressive Prompts add ``prompt_length`` tokens per task, so the newest task's input grows
linearly; Q-tuning's queue holds at most ``capacity`` prompts, so once it is full the input
length (and the time per step) stays flat. For each task ``t`` the script builds the
strategies' state exactly as a run does (``before_experience`` -> training steps ->
``after_experience``, evictions included) on synthetic token inputs of a fixed length, and
reports the fastest of its timed training steps and inference batches of the newest task, in
CPU seconds of this process (``time.process_time``), which other jobs on a shared machine
disturb far less than wall time.

What it measures: wall time on this machine's device of the strategies' real code paths over
the chosen encoder (default: the offline MiniLM, frozen); the inputs are random token ids, since
cost does not depend on the text. ``--encoder tiny`` swaps in a small random BERT for a quick
run; ``--encoder tiny_t5`` runs the papers' setting on a small random T5 (prompts in front of
the encoder input, loss on target tokens, no head; ``--t5-width`` sets its width) and reports
Q-tuning's step time at task ``2C`` against task ``C``. Q-tuning's memory-retention
regulariser starts with the first eviction (task index ``C``, 0-based), adding one prefix-only
pass per step (and, on a language model, one pass without gradient for the Q-prompt's
read-out): the steady state is measured from there.

Usage: ``python benchmarks/qtuning_cost.py --tasks 24 --capacity 4`` or
``python benchmarks/qtuning_cost.py --encoder tiny_t5 --tasks 9 --capacity 4``
"""

from __future__ import annotations

import argparse
import itertools
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from cl.models import CLModel, ModelConfig, make_head
from cl.models.hf import HFEncoder, default_text_model_path, load_hf_encoder
from cl.models.lm import LanguageModel, Seq2SeqConfig, random_hf_config
from cl.strategies.progprompt import ProgPrompt, ProgPromptConfig
from cl.strategies.qtuning import QTuning, QTuningConfig
from cl.strategy import RunContext, TrainConfig
from cl.streams.base import Experience, StreamInfo, TensorData

# CPU time of this process, not wall time: on a machine shared with other jobs, wall time
# measures their load as much as ours (run with OMP_NUM_THREADS=1 for single-thread numbers).
CLOCK = time.process_time


def encoder(kind: str) -> torch.nn.Module:
    if kind == "minilm":
        return load_hf_encoder(default_text_model_path())
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    conf = BertConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128
    )
    return BertModel(conf)


def synthetic_task(t: int, n: int, max_len: int, classes: list[int]) -> TensorData:
    g = torch.Generator().manual_seed(t)
    ids = torch.randint(1000, 20000, (n, max_len), generator=g)
    ids[:, 0] = 101
    x = torch.stack([ids, torch.ones_like(ids)], dim=1)
    y = torch.tensor(classes, dtype=torch.long).repeat(n // len(classes) + 1)[:n]
    return TensorData(x, y, torch.full((n,), t))


VOCAB = 259  # the byte-level tokenizer's


def tiny_t5(width: int) -> LanguageModel:
    from transformers import AutoModelForSeq2SeqLM

    torch.manual_seed(0)
    cfg = Seq2SeqConfig(hidden_size=width, intermediate_size=2 * width)
    hf = AutoModelForSeq2SeqLM.from_config(random_hf_config(cfg, "seq2seq", VOCAB))
    return LanguageModel(hf, kind="seq2seq")


def synthetic_text2text(t: int, n: int, max_len: int, target_len: int = 4) -> TensorData:
    """Packed text-to-text rows (prompt ids, then target ids) of random byte tokens."""
    g = torch.Generator().manual_seed(t)
    ids = torch.randint(3, VOCAB, (n, max_len + target_len), generator=g)
    code = torch.ones_like(ids)
    code[:, max_len:] = 2
    return TensorData(
        torch.stack([ids, code], dim=1), ids[:, max_len:].clone(), torch.full((n,), t)
    )


def timed(fn, repeats: int) -> float:
    out = []
    for _ in range(repeats):
        t0 = CLOCK()
        fn()
        out.append(CLOCK() - t0)
    return min(out)


def measure(name: str, args: argparse.Namespace) -> list[tuple[int, float, float, int]]:
    n_tasks, bs = args.tasks, args.batch_size
    lm = args.encoder == "tiny_t5"
    task_classes = [[VOCAB - 1] if lm else [2 * t, 2 * t + 1] for t in range(n_tasks)]
    modality = "text2text" if lm else "text"
    info = StreamInfo.of("synthetic", task_classes, scenario="task_il", modality=modality)
    model: torch.nn.Module
    if lm:
        model = tiny_t5(args.t5_width)
    else:
        backbone = HFEncoder(encoder(args.encoder), pooling="mean", freeze=True)
        head = make_head(ModelConfig(), backbone.embed_dim, info)
        model = CLModel(backbone, head, backbone.embed_dim)
    train = TrainConfig(epochs=1, batch_size=bs, lr=0.01, optimizer="adam")
    ctx = RunContext(device=torch.device("cpu"), seed=0, stream=info, train=train)
    if name == "qtuning":
        cfg: QTuningConfig | ProgPromptConfig = QTuningConfig(capacity=args.capacity)
        strat: QTuning | ProgPrompt = QTuning(config=cfg, model=model, context=ctx)
    else:
        strat = ProgPrompt(config=ProgPromptConfig(), model=model, context=ctx)
    rows = []
    for t in range(n_tasks):
        n = bs * args.steps
        if lm:
            data = synthetic_text2text(t, n, args.max_len)
        else:
            data = synthetic_task(t, n, args.max_len, task_classes[t])
        exp = Experience(index=t, task_id=t, classes=task_classes[t], train=data, test=data)
        # One "epoch" of `steps` minibatches, timed per step (the first, warm-up, excluded).
        step_times: list[float] = []

        def on_step(step: int, n: int, loss: torch.Tensor, times: list[float] = step_times) -> None:
            times.append(CLOCK())

        t0 = CLOCK()
        strat.train_experience(exp, on_step=on_step)
        marks = [t0, *step_times]
        per_step = min(b - a for a, b in itertools.pairwise(marks[1:]))
        x, tid = data.x[: args.eval_batch_size], data.t[: args.eval_batch_size]
        strat.model.eval()
        with torch.inference_mode():
            infer = timed(lambda x=x, tid=tid: strat.predict(x, tid), args.repeats)
        n_prompt = len(strat.prompts_for(t, training=False))
        rows.append((t, per_step, infer, n_prompt))
        print(
            f"{name:10s} task {t:2d}: prompt tokens {n_prompt:3d}  train step {per_step * 1e3:7.1f}"
            f" ms  inference batch {infer * 1e3:7.1f} ms",
            flush=True,
        )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", type=int, default=24)
    p.add_argument("--capacity", type=int, default=4)
    p.add_argument("--encoder", choices=("minilm", "tiny", "tiny_t5"), default="minilm")
    p.add_argument("--t5-width", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--eval-batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-len", type=int, default=32)
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    c, last = args.capacity, min(20, args.tasks - 1)
    for name in ("progprompt", "qtuning"):
        rows = measure(name, args)
        tr = {t: s for t, s, _, _ in rows}
        inf = {t: i for t, _, i, _ in rows}
        if 2 * c < args.tasks:
            print(
                f"{name}: task {2 * c} / task {c} (0-based; 2C vs C): train step "
                f"x{tr[2 * c] / tr[c]:.2f}, inference x{inf[2 * c] / inf[c]:.2f}"
            )
        print(
            f"{name}: task {last} / task {c} (0-based, steady state from the first eviction): "
            f"train step x{tr[last] / tr[c]:.2f}, inference x{inf[last] / inf[c]:.2f}; "
            f"task {last} / task {c - 1}: train x{tr[last] / tr[c - 1]:.2f}, "
            f"inference x{inf[last] / inf[c - 1]:.2f}"
        )


if __name__ == "__main__":
    main()
