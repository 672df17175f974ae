"""Training-loop overhead: the platform vs a bare PyTorch loop vs Avalanche's Naive.

All three train the same MLP (same initial weights) with the same SGD settings on the same
Split Fashion-MNIST stream (class_il, 5 experiences, 1 epoch), in one process. Only training
is timed (evaluation excluded everywhere). Prints the three train times and the ratios.

Cold figures (``--cold``, on by default): each in a fresh process, as a user meets them:
``cl-run`` of naive on split_fmnist (its ``train_seconds`` and ``startup_seconds``) against
the bare loop in its own fresh process, and ``cl-run``'s default experiment (no overrides):
seconds from starting the process to its first training step. Wall and CPU seconds are both
printed: on a shared machine, CPU seconds are the ones other load does not inflate.

    python benchmarks/overhead.py [--epochs 1] [--batch-size 32] [--repeats 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "disabled")

import torch
from torch.nn import functional as F


def platform_time(cfg, tmp: str) -> tuple[float, float]:
    from cl.run import run_experiment

    rec = run_experiment(cfg, __import__("pathlib").Path(tmp))
    return rec.budget.train_seconds, float(rec.metrics()["avg_acc"] or 0.0)


def bare_time(cfg, device: torch.device, cpu: list[float] | None = None) -> float:
    """The same work with nothing around it: slices of device tensors, forward, CE, step.

    Returns the wall seconds of the loops; their CPU seconds are appended to ``cpu``."""
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
        t0, c0 = time.perf_counter(), time.process_time()
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
        if cpu is not None:
            cpu.append(time.process_time() - c0)
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


FMNIST_RUN = ["stream=split_fmnist", "strategy=naive", "model=mlp", "logger=none"]


def child_platform(out: str, argv: list[str]) -> None:
    """In a fresh process: ``cl-run argv``, noting when the first training step starts."""
    from cl.run import cli
    from cl.strategy import Strategy

    train = Strategy.train_experience
    marks: dict[str, float] = {"train_cpu": 0.0}

    def timed(self, exp, **kw):  # the benchmark's own probe, not the platform's code
        marks.setdefault("first_step", time.time())
        marks.setdefault("first_step_cpu", time.process_time())
        c = time.process_time()
        try:
            return train(self, exp, **kw)
        finally:
            marks["train_cpu"] += time.process_time() - c

    Strategy.train_experience = timed  # type: ignore[method-assign]
    code = cli(argv)
    Path(out).write_text(json.dumps({**marks, "code": code}))


def child_bare(out: str, argv: list[str]) -> None:
    """In a fresh process: the bare loop on the same stream and model, timed the same way."""
    from cl.config import compose_config

    cfg = compose_config(argv)
    cpu: list[float] = []
    wall = bare_time(cfg, torch.device(str(cfg.device)), cpu)
    Path(out).write_text(json.dumps({"train_seconds": wall, "train_cpu": sum(cpu)}))


FLOOR = (
    "import time, torch; p = torch.nn.Parameter(torch.zeros(4)); "
    "o = torch.optim.SGD([p], lr=0.1, momentum=0.9); p.grad = torch.ones(4); o.step(); "
    "print(time.time())"
)


def torch_floor() -> float:
    """Seconds from spawning ``python`` to the end of one ``torch.optim`` step on a 4-vector.

    No program that trains with a ``torch.optim`` optimizer reaches its first step sooner:
    the step itself imports ``torch._dynamo`` (``torch/optim/optimizer.py``, every step runs
    ``torch._dynamo.graph_break()``), on top of ``import torch``.
    """
    t0 = time.time()
    done = subprocess.run([sys.executable, "-c", FLOOR], capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1]) - t0


def spawn(mode: str, argv: list[str]) -> tuple[float, dict]:
    """Run this script as a child in ``mode``; (its wall time from spawn, what it reported)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out.json")
        t0 = time.time()
        done = subprocess.run(
            [sys.executable, __file__, f"--child-{mode}", out, *argv],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            sys.exit(f"error: the {mode} child failed:\n{done.stderr[-2000:]}")
        return t0, json.loads(Path(out).read_text())


def cold_figures(args: argparse.Namespace) -> None:
    common = [f"train.epochs={args.epochs}", f"train.batch_size={args.batch_size}"]
    common.append(f"device={args.device}")
    plat, bare = [], []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            run = [*FMNIST_RUN, *common, "checkpoint.enabled=false", f"hydra.run.dir={tmp}"]
            _, marks = spawn("platform", run)
            budget = json.loads((Path(tmp) / "results.json").read_text())["budget"]
        plat.append((budget["train_seconds"], budget["startup_seconds"], marks["train_cpu"]))
        got = spawn("bare", [*FMNIST_RUN, *common])[1]
        bare.append((got["train_seconds"], got["train_cpu"]))
    p, b = statistics.median(v[0] for v in plat), statistics.median(v[0] for v in bare)
    pc, bc = statistics.median(v[2] for v in plat), statistics.median(v[1] for v in bare)
    print("cold processes (one fresh process per run):")
    print(
        f"  cl-run naive split_fmnist train_seconds : {p:8.2f} s  (runs: "
        f"{', '.join(f'{v[0]:.2f}' for v in plat)}; CPU "
        f"{', '.join(f'{v[2]:.2f}' for v in plat)}; startup_seconds "
        f"{', '.join(f'{v[1]:.2f}' for v in plat)})"
    )
    runs = ", ".join(f"{v[0]:.2f}" for v in bare)
    cpus = ", ".join(f"{v[1]:.2f}" for v in bare)
    print(f"  bare loop, fresh process               : {b:8.2f} s  (runs: {runs}; CPU {cpus})")
    print(f"  cold platform / bare, wall             : {p / b:8.3f}  (target <= 1.15)")
    print(f"  cold platform / bare, CPU              : {pc / bc:8.3f}")
    firsts = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            t0, marks = spawn("platform", [f"hydra.run.dir={tmp}"])
        firsts.append((marks["first_step"] - t0, marks["first_step_cpu"]))
    print(
        "  default experiment, process start -> first training step: "
        f"{statistics.median(f[0] for f in firsts):.2f} s wall (runs: "
        f"{', '.join(f'{f[0]:.2f}' for f in firsts)}; the child's own CPU: "
        f"{', '.join(f'{f[1]:.2f}' for f in firsts)} s)  (target < 5)"
    )
    floors = [torch_floor() for _ in range(args.repeats)]
    print(
        "  floor: python + import torch + one torch.optim step (imports torch._dynamo): "
        f"{statistics.median(floors):.2f} s wall (runs: {', '.join(f'{f:.2f}' for f in floors)})"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--skip-avalanche", action="store_true")
    ap.add_argument("--no-cold", dest="cold", action="store_false", help="skip the cold runs")
    ap.add_argument("--no-warm", dest="warm", action="store_false", help="skip the warm runs")
    ap.add_argument("--child-platform", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    ap.add_argument("--child-bare", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_platform:
        return child_platform(args.child_platform[0], args.child_platform[1:])
    if args.child_bare:
        return child_bare(args.child_bare[0], args.child_bare[1:])
    if args.cold:
        cold_figures(args)
    if not args.warm:
        return
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
