"""O-LoRA vs naive LoRA fine-tuning (same rank) on the memorisation stream, over seeds.

O-LoRA (``strategy=olora``: a LoRA per task, orthogonality loss against the previous tasks' LoRA
``A`` subspaces) against naive fine-tuning of one shared LoRA of the same rank
(``strategy=naive model.lora_rank=r``) and O-LoRA without its orthogonality loss
(``strategy.lambda_1=0``: frozen per-task adapters only), all through the platform's pipeline on
``stream=memorize`` with a small random Llama, adapters on every linear layer. Prints each run's
learned (``R[i][i]``) and final exact match and the forgetting, then the mean forgetting.

Usage::

    python benchmarks/olora_forgetting.py                    # seeds 1 2 3
    python benchmarks/olora_forgetting.py --seeds 1 2 3 4 5 --lambda-1 0.5 5
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

from cl.metrics import forgetting
from cl.run import run_experiment
from cl.testing import compose

LLAMA_LINEARS = "[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj]"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--lambda-1", type=float, nargs="+", default=[0.5, 0.0])
    p.add_argument("--size", type=int, default=8)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--lr", type=float, default=0.003)
    p.add_argument("--targets", default=LLAMA_LINEARS, help="adapted modules, e.g. [q_proj,v_proj]")
    p.add_argument(
        "--overrides",
        nargs="*",
        default=[],
        help="extra overrides for every run, e.g. stream.task_prefix=true stream.disjoint_keys=true",
    )
    args = p.parse_args()
    common = [
        "logger=none",
        "device=cpu",
        "stream=memorize",
        f"stream.size={args.size}",
        "stream.key_len=4",
        "stream.value_len=4",
        "model=hf_causal_lm",
        f"train.epochs={args.epochs}",
        f"train.batch_size={args.size}",
        "train.optimizer=adam",
        f"train.lr={args.lr}",
        *args.overrides,
    ]
    r = args.rank
    methods = {
        "naive LoRA": [
            "strategy=naive",
            f"model.lora_rank={r}",
            f"model.lora_alpha={2 * r}",
            f"model.lora_targets={args.targets}",
        ]
    }
    for lam in args.lambda_1:
        methods[f"O-LoRA lambda_1={lam:g}"] = [
            "strategy=olora",
            f"strategy.r={r}",
            f"strategy.lora_alpha={2 * r}",
            "strategy.lora_dropout=0",
            f"strategy.target_modules={args.targets}",
            f"strategy.lambda_1={lam}",
        ]
    summary: dict[str, list[float]] = {m: [] for m in methods}
    print("| method | seed | R[i][i] (learned) | R[T-1][i] (final) | forgetting |")
    print("|---|---|---|---|---|")
    for seed in args.seeds:
        for name, extra in methods.items():
            cfg = compose([*common, f"seed={seed}", f"stream.seed={seed}", *extra])
            with tempfile.TemporaryDirectory() as tmp:
                acc = run_experiment(cfg, Path(tmp)).acc_matrix
            f = forgetting(acc)
            summary[name].append(f)
            learned = " ".join(f"{acc[i][i]:.2f}" for i in range(len(acc)))
            final = " ".join(f"{v:.2f}" for v in acc[-1])
            print(f"| {name} | {seed} | {learned} | {final} | {f:.3f} |", flush=True)
    for name, fs in summary.items():
        print(f"{name}: mean forgetting {sum(fs) / len(fs):.3f} over seeds {args.seeds}")


if __name__ == "__main__":
    main()
