"""Our EWC, LwF and replay (and naive) against Avalanche's, in one process.

Same stream (converted to an Avalanche benchmark), same initial weights, same optimiser,
batch size, epochs and hyperparameters; both are evaluated by our evaluator, so accuracy and
forgetting (max-based, ours) are defined identically. Only training is timed.

Where the definitions agree and how the hyperparameters map:
* EWC: our ``batched`` estimator is Avalanche's (squared minibatch-mean gradient, averaged
  over minibatches of the training batch size, model in eval mode). Our penalty has the
  paper's 1/2, Avalanche's does not: Avalanche gets ``ewc_lambda / 2``.
* LwF: KL with temperature T on old-class logits, weight alpha, no T^2; our teacher is in eval
  mode, Avalanche's is a deep copy left in training mode (same outputs without dropout or
  batch norm, as here).
* Replay: our ``experience_balanced`` policy is Avalanche's default buffer (equal slots per
  experience); both add one buffer sample per current sample to each minibatch. Buffer
  contents are random in both, so the runs differ by sampling noise.

    python benchmarks/compare_avalanche.py [--stream permuted_fmnist] [--max-train N]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

os.environ.setdefault("WANDB_MODE", "disabled")

import torch

from cl.config import compose_config

METHODS = ("naive", "ewc", "lwf", "replay")


def _ours(method: str, hp: dict[str, float]) -> list[str]:
    return {
        "naive": ["strategy=naive"],
        "ewc": [
            "strategy=ewc",
            "strategy.estimator=batched",
            "strategy.fisher_max_samples=null",  # Avalanche uses every sample
            "strategy.penalty_step=explicit",  # Avalanche's plain gradient step
            f"strategy.ewc_lambda={hp['ewc']}",
        ],
        "lwf": ["strategy=lwf", f"strategy.alpha={hp['alpha']}", "strategy.temperature=2"],
        "replay": [
            "strategy=replay",
            f"strategy.buffer_size={int(hp['mem'])}",
            "strategy.policy=experience_balanced",
        ],
    }[method]


def _avalanche(method: str, hp: dict[str, float], **common: Any) -> Any:
    import avalanche.training as avt

    if method == "naive":
        return avt.Naive(**common)
    if method == "ewc":
        return avt.EWC(ewc_lambda=hp["ewc"] / 2, mode="separate", **common)
    if method == "lwf":
        return avt.LwF(alpha=hp["alpha"], temperature=2.0, **common)
    return avt.Replay(mem_size=int(hp["mem"]), **common)


def _run_avalanche(cfg: Any, method: str, hp: dict[str, float]) -> dict[str, Any]:
    from avalanche.training.plugins import EvaluationPlugin

    from cl import metrics
    from cl.config import build
    from cl.evaluate import evaluate_row, primary
    from cl.run import experience_seed, seed_all
    from cl.streams.avalanche import to_avalanche_benchmark

    seed_all(int(cfg.seed))
    b = build(cfg)  # same stream and the same initial weights as our run (seeded build)
    bm = to_avalanche_benchmark(b.stream)
    tc = b.train
    strat = _avalanche(
        method,
        hp,
        model=b.model,
        optimizer=torch.optim.SGD(b.model.parameters(), lr=tc.lr, momentum=tc.momentum),
        criterion=torch.nn.CrossEntropyLoss(),
        train_mb_size=tc.batch_size,
        train_epochs=tc.epochs,
        eval_mb_size=tc.eval_batch_size,
        device=b.context.device,
        evaluator=EvaluationPlugin(loggers=[]),
    )
    matrix, seconds = [], 0.0
    for i, exp in enumerate(bm.train_stream):
        torch.manual_seed(experience_seed(int(cfg.seed), i))
        t0 = time.perf_counter()
        strat.train(exp, eval_streams=[], num_workers=0)
        seconds += time.perf_counter() - t0
        b.strategy.model = strat.model
        agn, aware = evaluate_row(b.strategy, b.stream, trained_upto=i, batch_size=1024)
        matrix.append(primary(b.stream.scenario, agn, aware))
    return {
        "avg_acc": metrics.avg_acc(matrix),
        "forgetting": metrics.forgetting(matrix),
        "train_seconds": seconds,
        "matrix": matrix,
    }


def bridge_vs_avalanche(
    method: str, overrides: list[str], hp: dict[str, float] | None = None
) -> tuple[list[list[float]], list[list[float]]]:
    """Accuracy matrices of ``method`` (``naive`` or ``replay``) run through our ``avalanche``
    bridge (``cl-run`` in-process) and directly in Avalanche, with the same seed, stream,
    initial weights and optimizer (SGD with ``train.momentum``, state kept across
    experiences in both); both are evaluated by our evaluator."""
    hp = {"mem": 100, **(hp or {})}
    name = {"naive": ["strategy.strategy_name=Naive"], "replay": ["strategy.strategy_name=Replay"]}
    extra = [f"+strategy.kwargs.mem_size={int(hp['mem'])}"] if method == "replay" else []
    base = ["device=cpu", "logger=none", "checkpoint.enabled=false", *overrides]
    cfg = compose_config([*base, "strategy=avalanche", *name[method], *extra])
    with TemporaryDirectory() as d:
        from cl.run import run_experiment

        bridge = run_experiment(cfg, Path(d)).acc_matrix
    direct = _run_avalanche(cfg, method, hp)["matrix"]
    return bridge, direct


def _run_ours(cfg: Any) -> dict[str, Any]:
    from cl.run import run_experiment

    with TemporaryDirectory() as d:
        rec = run_experiment(cfg, Path(d))
    m = rec.metrics()
    return {
        "avg_acc": m["avg_acc"],
        "forgetting": m["forgetting"],
        "train_seconds": rec.budget.train_seconds,
    }


def _base(
    *,
    stream: str,
    max_train: int | None,
    max_test: int | None,
    epochs: int,
    batch_size: int,
    lr: float,
) -> list[str]:
    """Overrides both sides share: stream, loop settings, plain SGD, no sinks."""
    return [
        f"stream={stream}",
        f"train.epochs={epochs}",
        f"train.batch_size={batch_size}",
        f"train.lr={lr}",
        "train.optimizer=sgd",
        "device=cpu",
        "logger=none",
        "checkpoint.enabled=false",
        f"stream.max_test_per_experience={max_test if max_test else 'null'}",
        f"stream.max_train_per_experience={max_train if max_train else 'null'}",
    ]


def _mean(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = [k for k, v in runs[0].items() if isinstance(v, int | float)]
    return {k: sum(x[k] for x in runs) / len(runs) for k in keys}


def compare(
    *,
    stream: str = "permuted_fmnist",
    max_train: int | None = None,
    max_test: int | None = 2000,
    epochs: int = 1,
    batch_size: int = 32,
    lr: float = 0.05,
    seed: int = 0,
    repeats: int = 1,
    hp: dict[str, float] | None = None,
    methods: tuple[str, ...] = METHODS,
    verbose: bool = True,
) -> list[dict[str, Any]]:
    """Run every method both ways; returns one row per method (means over ``repeats``)."""
    hp = {"ewc": 100.0, "alpha": 1.0, "mem": 1000, **(hp or {})}
    base = _base(
        stream=stream,
        max_train=max_train,
        max_test=max_test,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
    )
    rows = []
    for method in methods:
        runs: dict[str, list[dict[str, Any]]] = {"ours": [], "avalanche": []}
        for r in range(repeats):
            cfg = compose_config([*base, f"seed={seed + r}", *_ours(method, hp)])
            runs["ours"].append(_run_ours(cfg))
            runs["avalanche"].append(_run_avalanche(cfg, method, hp))
        row: dict[str, Any] = {"method": method}
        for side, rs in runs.items():
            row[side] = _mean(rs)
        row["time_ratio"] = row["ours"]["train_seconds"] / row["avalanche"]["train_seconds"]
        row["acc_diff"] = row["ours"]["avg_acc"] - row["avalanche"]["avg_acc"]
        rows.append(row)
        if verbose:
            _print_row(row)
    return rows


def default_ewc(base: list[str], *, seed: int, repeats: int, ewc_lambda: float) -> dict[str, Any]:
    """Our EWC with its defaults (exact Fisher on a 10k-sample subset, the implicit penalty step
    under SGD), means over ``repeats`` seeds; its train time includes the Fisher pass."""
    runs = [
        _run_ours(
            compose_config(
                [*base, f"seed={seed + r}", "strategy=ewc", f"strategy.ewc_lambda={ewc_lambda}"]
            )
        )
        for r in range(repeats)
    ]
    return _mean(runs)


def _print_row(r: dict[str, Any]) -> None:
    o, a = r["ours"], r["avalanche"]
    print(
        f"{r['method']:<7} ours: acc {o['avg_acc']:.4f} forg {o['forgetting']:.4f} "
        f"time {o['train_seconds']:7.2f}s | avalanche: acc {a['avg_acc']:.4f} "
        f"forg {a['forgetting']:.4f} time {a['train_seconds']:7.2f}s | "
        f"acc diff {r['acc_diff']:+.4f} time ratio ours/avl {r['time_ratio']:.2f}",
        flush=True,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stream", default="permuted_fmnist")
    p.add_argument("--max-train", type=int, default=None, help="train samples per experience")
    p.add_argument("--max-test", type=int, default=2000, help="test samples per experience")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--ewc-lambda", type=float, default=100.0)
    # The default EWC (exact Fisher, implicit penalty step under SGD) at its default lambda.
    p.add_argument("--default-ewc-lambda", type=float, default=100.0)
    p.add_argument("--mem-size", type=int, default=1000)
    p.add_argument("--methods", default=",".join(METHODS))
    a = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    common: dict[str, Any] = dict(
        stream=a.stream,
        max_train=a.max_train,
        max_test=a.max_test,
        epochs=a.epochs,
        batch_size=a.batch_size,
        lr=a.lr,
    )
    methods = tuple(a.methods.split(","))
    rows = compare(
        **common,
        seed=a.seed,
        repeats=a.repeats,
        hp={"ewc": a.ewc_lambda, "mem": a.mem_size},
        methods=methods,
    )
    if "naive" in methods and "ewc" in methods:
        t = {r["method"]: r["ours"]["train_seconds"] for r in rows}
        print(f"ours: ewc (batched, all samples)/naive train time = {t['ewc'] / t['naive']:.2f}")
        d = default_ewc(
            _base(**common), seed=a.seed, repeats=a.repeats, ewc_lambda=a.default_ewc_lambda
        )
        print(
            f"ours: default ewc (exact Fisher, 10k samples, lambda {a.default_ewc_lambda:g}): "
            f"acc {d['avg_acc']:.4f} forg {d['forgetting']:.4f} time {d['train_seconds']:.2f}s; "
            f"/naive train time = {d['train_seconds'] / t['naive']:.2f}"
        )


if __name__ == "__main__":
    main()
