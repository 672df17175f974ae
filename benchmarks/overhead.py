"""Training-loop overhead: the platform vs a bare PyTorch loop vs Avalanche's Naive.

All three train the same MLP (same initial weights) with the same SGD settings on the same
Split Fashion-MNIST stream (class_il, 5 experiences, 1 epoch), in one process. Only training
is timed (evaluation excluded everywhere). Prints the three train times and the ratios.

    python benchmarks/overhead.py [--epochs 1] [--batch-size 32] [--repeats 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("WANDB_MODE", "disabled")

import torch
from torch.nn import functional as F


def platform_time(cfg, tmp: str) -> tuple[float, float]:
    from cl.run import run_experiment

    rec = run_experiment(cfg, __import__("pathlib").Path(tmp))
    return rec.budget.train_seconds, float(rec.metrics()["avg_acc"] or 0.0)


def bare_time(cfg, device: torch.device) -> float:
    """The same work with nothing around it: slices of device tensors, forward, CE, step."""
    from cl.config import build

    built = build(cfg)  # same stream, same initial model (same seed)
    model, stream = built.model, built.stream
    tc = built.train
    total = 0.0
    for i, exp in enumerate(stream):
        opt = torch.optim.SGD(model.parameters(), lr=tc.lr, momentum=tc.momentum)
        model.train()
        x, y = exp.train.x, exp.train.y
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for epoch in range(tc.epochs):
            order = torch.randperm(len(y), generator=torch.Generator().manual_seed(i * 100 + epoch))
            order = order.to(device)
            for s in range(0, len(y), tc.batch_size):
                idx = order[s : s + tc.batch_size]
                opt.zero_grad(set_to_none=True)
                loss = F.cross_entropy(model(x[idx]), y[idx])
                loss.backward()
                opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        total += time.perf_counter() - t0
    return total


def avalanche_time(cfg, device: torch.device) -> float:
    from avalanche.training import Naive
    from avalanche.training.plugins import EvaluationPlugin

    from cl.config import build
    from cl.streams.avalanche import to_avalanche_benchmark

    built = build(cfg)
    model, stream = built.model, built.stream
    tc = built.train
    bench = to_avalanche_benchmark(stream, task_labels=False)
    opt = torch.optim.SGD(model.parameters(), lr=tc.lr, momentum=tc.momentum)
    strat = Naive(
        model=model,
        optimizer=opt,
        train_mb_size=tc.batch_size,
        train_epochs=tc.epochs,
        device=device,
        evaluator=EvaluationPlugin(loggers=[]),
        eval_every=-1,
    )
    total = 0.0
    for exp in bench.train_stream:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        strat.train(exp, num_workers=0)
        if device.type == "cuda":
            torch.cuda.synchronize()
        total += time.perf_counter() - t0
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--skip-avalanche", action="store_true")
    args = ap.parse_args()
    import tempfile

    device = torch.device(args.device)
    from cl.config import compose_config

    cfg = compose_config(
        [
            "stream=split_fmnist",
            "strategy=naive",
            "model=mlp",
            "logger=none",
            "checkpoint.enabled=false",
            f"train.epochs={args.epochs}",
            f"train.batch_size={args.batch_size}",
            f"device={args.device}",
        ]
    )
    plat, bare = [], []
    for _ in range(args.repeats):  # interleaved, so drift hits both alike
        with tempfile.TemporaryDirectory() as tmp:
            t, acc = platform_time(cfg, tmp)
        plat.append(t)
        bare.append(bare_time(cfg, device))
    p, b = statistics.median(plat), statistics.median(bare)
    print(
        f"device={device} threads={torch.get_num_threads()} epochs={args.epochs} "
        f"batch_size={args.batch_size} repeats={args.repeats}"
    )
    print(
        f"platform naive train time : {p:8.2f} s  (runs: {', '.join(f'{v:.2f}' for v in plat)};"
        f" avg_acc {acc:.3f})"
    )
    print(f"bare PyTorch loop         : {b:8.2f} s  (runs: {', '.join(f'{v:.2f}' for v in bare)})")
    print(f"platform / bare           : {p / b:8.3f}  (target <= 1.15)")
    if not args.skip_avalanche:
        a = avalanche_time(cfg, device)
        print(f"avalanche Naive           : {a:8.2f} s")
        print(f"platform / avalanche      : {p / a:8.3f}  (target <= 1.0)")


if __name__ == "__main__":
    main()
