"""MoRA vs LoRA at equal trainable parameters on the memorisation stream.

MoRA (Jiang et al., "MoRA: High-Rank Updating for Parameter-Efficient Fine-Tuning", 2024) claims
that its square, high-rank update memorises more new knowledge than a LoRA with the same number
of trainable parameters (their UUID memorisation experiment). This runs the platform's real
pipeline (``cl.run``: compose, build, train, evaluate, results) with naive fine-tuning of one
shared adapter (``model.lora_rank``) on ``stream=memorize`` with a small random Llama, for LoRA
rank ``r`` and MoRA at the same budget (``model.lora_type=mora``, whose square matrix has side
``r_hat = sqrt((d_in + d_out) r)``), and prints, per rank and adapter: the trainable parameters,
the exact match of each task right after training on it (``R[i][i]``) and at the end
(``R[T-1][i]``), the final average accuracy and the forgetting (mean over seeds).

``--base pretrained`` starts from :func:`cl.lm_base.memorize_base` (the same tiny Llama fully
fine-tuned on 128 other pairs of the same key and value lengths) instead of a random model,
whose logits stay near uniform when only an adapter trains.

Measured (3 tasks, key and value 6 characters, width 64, 2 layers, every linear, MoRA type 6,
Adam, batch 16, alpha 2r; seeds 0 1 2, means; learned = ``R[i][i]``, final = ``R[T-1][i]``):

=================================  ====  =======  ==================  ===================
setting                            rank  adapter  learned             final
=================================  ====  =======  ==================  ===================
random base, 32 pairs, 60 epochs,  8     LoRA     0.88 0.65 0.27      0.00 0.00 0.27
lr 0.005 (the defaults)            8     MoRA     1.00 0.99 1.00      0.00 0.00 1.00
(same)                             32    LoRA     0.67 0.52 0.14      0.00 0.00 0.14
(same)                             32    MoRA     1.00 1.00 1.00      0.00 0.00 1.00
pretrained base, 32 pairs,         8/32  both     1.00 1.00 1.00      0.00 0.00 1.00
60 epochs, lr 0.005
pretrained base, 128 pairs,        8     LoRA     0.29 0.17 0.15      0.00 0.00 0.15
20 epochs, lr 0.005                8     MoRA     0.48 0.43 0.38      0.00 0.00 0.38
(same)                             32    LoRA     0.03 0.00 0.00      0.00 0.00 0.00
(same)                             32    MoRA     0.23 0.14 0.07      0.00 0.00 0.07
=================================  ====  =======  ==================  ===================

MoRA memorises more than LoRA at the same budget wherever the task is not already easy (as the
paper claims); both forget the earlier tasks completely when one adapter is fine-tuned in
sequence. The rank-32 rows at lr 0.005 on 128 pairs learn little: that lr is too high there
for them (lr 0.001 for 20 epochs learned nothing at rank 8 either).

Usage::

    python benchmarks/mora_vs_lora.py                      # ranks 8 and 32, one seed
    python benchmarks/mora_vs_lora.py --seeds 0 1 2 --epochs 40 --size 16
    python benchmarks/mora_vs_lora.py --seeds 0 1 2 --base pretrained
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

from cl.lm_base import memorize_base
from cl.metrics import forgetting
from cl.run import run_experiment
from cl.testing import compose

# Every linear layer of the Llama blocks (as in MoRA's experiments).
LLAMA_LINEARS = "[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj]"


def model_overrides(args: argparse.Namespace) -> list[str]:
    if args.base_path:
        return ["model.config=null", f"model.path={args.base_path}"]
    return [
        f"model.hidden_size={args.hidden}",
        f"model.intermediate_size={2 * args.hidden}",
        f"model.num_layers={args.layers}",
    ]


def overrides(args: argparse.Namespace, kind: str, rank: int, seed: int) -> list[str]:
    return [
        "logger=none",
        f"device={args.device}",
        f"seed={seed}",
        "strategy=naive",
        "stream=memorize",
        f"stream.seed={seed}",
        f"stream.n_experiences={args.tasks}",
        f"stream.size={args.size}",
        f"stream.key_len={args.key_len}",
        f"stream.value_len={args.value_len}",
        "model=hf_causal_lm",
        *model_overrides(args),
        f"model.lora_rank={rank}",
        f"model.lora_type={kind}",
        f"model.lora_alpha={2 * rank}",
        f"model.mora_type={args.mora_type}",
        f"model.lora_targets={LLAMA_LINEARS}",
        f"train.epochs={args.epochs}",
        f"train.batch_size={args.batch}",
        "train.optimizer=adam",
        f"train.lr={args.lr}",
    ]


def run_one(args: argparse.Namespace, kind: str, rank: int, seed: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        rec = run_experiment(compose(overrides(args, kind, rank, seed)), Path(tmp))
    r = rec.acc_matrix
    t = len(r)
    return {
        "params": rec.budget.trainable_params,
        "learned": [r[i][i] for i in range(t)],
        "final": list(r[t - 1]),
        "avg_acc": sum(r[t - 1]) / t,
        "forgetting": forgetting(r),
        "seconds": rec.budget.train_seconds,
    }


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ranks", type=int, nargs="+", default=[8, 32])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--tasks", type=int, default=3)
    p.add_argument("--size", type=int, default=32, help="key -> value pairs per task")
    p.add_argument("--key-len", type=int, default=6)
    p.add_argument("--value-len", type=int, default=6)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=0.005)
    p.add_argument("--mora-type", type=int, default=6, choices=[1, 6])
    p.add_argument("--device", default="cpu")
    p.add_argument("--base", choices=["random", "pretrained"], default="random")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as base_dir:
        args.base_path = None
        if args.base == "pretrained":
            args.base_path = memorize_base(
                base_dir,
                hidden_size=args.hidden,
                num_layers=args.layers,
                key_len=args.key_len,
                value_len=args.value_len,
            )
        run(args)


def run(args: argparse.Namespace) -> None:

    print(
        f"memorize: {args.tasks} tasks x {args.size} pairs (key {args.key_len}, value "
        f"{args.value_len} chars); {args.base} Llama width {args.hidden}, {args.layers} layers; "
        f"naive fine-tuning of one adapter on every linear layer; {args.epochs} epochs, batch "
        f"{args.batch}, adam lr {args.lr}; MoRA type {args.mora_type}; seeds {args.seeds}"
    )
    cols = ["rank", "adapter", "trainable", "R[i][i] (learned)", "R[T-1][i] (final)"]
    cols += ["avg_acc", "forgetting", "train s"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * 8)
    start = time.time()
    for rank in args.ranks:
        for kind in ("lora", "mora"):
            runs = [run_one(args, kind, rank, s) for s in args.seeds]
            learned = [mean([r["learned"][i] for r in runs]) for i in range(args.tasks)]
            final = [mean([r["final"][i] for r in runs]) for i in range(args.tasks)]
            row = " | ".join(" ".join(f"{v:.2f}" for v in vs) for vs in (learned, final))
            print(
                f"| {rank} | {kind} | {runs[0]['params']} | {row} | "
                f"{mean([r['avg_acc'] for r in runs]):.3f} | "
                f"{mean([r['forgetting'] for r in runs]):.3f} | "
                f"{mean([r['seconds'] for r in runs]):.1f} |",
                flush=True,
            )
    print(f"total {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
