"""Training throughput of one run on 1 vs N processes (``torchrun``, data parallel).

Each process count runs the same experiment with the same global batch (``train.batch_size``)
through ``cl-run`` under ``torchrun --standalone``; the training samples per second come from
``results.json`` (``budget.samples_per_second``, global samples over rank 0's training time).
Scaling efficiency is ``(samples/s on N) / (N * samples/s on 1)``. The accuracy matrices are
printed equal or not: data parallelism here is exact up to float rounding.

    python benchmarks/distributed_scaling.py [--procs 1 2 4] [--device cpu|cuda] [overrides...]

On CPU each process uses ``--threads`` threads (default 1), so N processes use N cores; on
CUDA each process drives one GPU (``cuda:<local rank>``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from tempfile import TemporaryDirectory

DEFAULT = (
    "stream=split_fmnist",
    "strategy=naive",
    "model.hidden_sizes=[1024,1024]",
    "train.epochs=1",
    "train.batch_size=256",
    "stream.max_train_per_experience=6000",
    "stream.n_experiences=2",
)


def run(procs: int, device: str, threads: int, overrides: list[str], out: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "WANDB_MODE": "disabled"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += [f"--nproc_per_node={procs}", "-m", "cl.run", "logger=none", f"device={device}"]
    cmd += [*overrides, "checkpoint.enabled=false", f"hydra.run.dir={out}"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"error: {procs} process(es) failed:\n{proc.stderr[-2000:]}")
    return json.loads((out / "results.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("overrides", nargs="*", help="cl-run overrides (default: a wide MLP)")
    args = ap.parse_args()
    overrides = args.overrides or list(DEFAULT)
    print(f"workload: {' '.join(overrides)} on {args.device}")
    print(f"{'procs':>5} {'samples/s':>10} {'speedup':>8} {'efficiency':>10}  matrix")
    base = None
    first = None
    with TemporaryDirectory() as tmp:
        for n in args.procs:
            res = run(n, args.device, args.threads, overrides, Path(tmp) / f"p{n}")
            sps = res["budget"]["samples_per_second"]
            base = base or sps / (n if n else 1)
            first = first or res["acc_matrix"]
            same = "equal" if res["acc_matrix"] == first else "differs"
            print(f"{n:>5} {sps:>10.0f} {sps / base:>8.2f} {sps / (n * base):>10.0%}  {same}")


if __name__ == "__main__":
    main()
