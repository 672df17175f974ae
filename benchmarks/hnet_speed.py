"""Hypernetwork regulariser speed: the platform's batched HNET vs a plain per-task loop.

Both train the same hypernetwork (same initial weights, embeddings, batches and targets) on the
same permuted stream (task_il; Fashion-MNIST when its files are there, else the 8x8 digits),
with a 784-100-100-10 (or 64-100-100-10) target network, a full hypernetwork 100-100, Adam 1e-3,
batch 128, 1 epoch per task, in one process:

- platform: ``strategy=hypernet`` trained by the platform's loop (what ``run_experiment``
  times as ``train_seconds``; the regulariser is the strategy's own code): every
  old task regularised in one batched hypernetwork pass, embeddings and targets stacked once
  per experience, and (without look-ahead) the current task generated in the same pass; the
  output layer's gradient accumulated in place and the look-ahead ``theta + dtheta`` written
  into kept tensors (no per-step allocation of the millions-of-weights layer);
- per-task loop: the textbook implementation in plain PyTorch, written out here: the current
  task's weights from one pass, then one hypernetwork pass per old task, each compared with its
  target (with look-ahead: at ``theta + dtheta``, the same optimiser-step preview).

The two alternate experience by experience in one process, so both see the same machine load.
Only training is timed, in process CPU seconds (not inflated by other load on a shared machine)
and wall seconds. Prints both times, the ratio (target <= 0.5) and both runs' accuracy
and forgetting (they should match: the same computation, organised differently).

    python benchmarks/hnet_speed.py [--n-experiences 10] [--max-train 3000] [--lookahead both]
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

os.environ.setdefault("WANDB_MODE", "disabled")

import torch
from torch.nn import functional as F


def compose(args: argparse.Namespace, lookahead: bool) -> Any:
    from cl.config import compose_config
    from cl.streams.vision import fmnist_folder

    stream = "permuted_fmnist" if fmnist_folder() is not None else "permuted_digits"
    return compose_config(
        [
            f"stream={stream}",
            "stream.scenario=task_il",
            f"stream.n_experiences={args.n_experiences}",
            f"stream.max_train_per_experience={args.max_train}",
            f"stream.max_test_per_experience={args.max_test}",
            "model=mlp",
            "model.hidden_sizes=[100,100]",
            "strategy=hypernet",
            "strategy.hidden_sizes=[100,100]",
            f"strategy.beta={args.beta}",
            f"strategy.lookahead={lookahead}",
            "train.optimizer=adam",
            "train.lr=0.001",
            "train.batch_size=128",
            f"train.epochs={args.epochs}",
            "logger=none",
            "checkpoint.enabled=false",
            f"device={args.device}",
        ]
    )


class Clock:
    """Wall and process-CPU seconds of the timed blocks (CPU time is what a shared machine's
    load does not inflate)."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0

    def __enter__(self) -> None:
        self._w, self._c = time.perf_counter(), time.process_time()

    def __exit__(self, *exc: object) -> None:
        self.wall += time.perf_counter() - self._w
        self.cpu += time.process_time() - self._c


class Platform:
    """The platform's loop (what ``run_experiment`` times as ``train_seconds``)."""

    def __init__(self, cfg: Any) -> None:
        from cl.config import build

        self.built = build(cfg)
        self.clock, self.rows = Clock(), []

    def train(self, i: int) -> None:
        with self.clock:
            self.built.strategy.train_experience(self.built.stream[i])
        self.evaluate(i)

    def evaluate(self, i: int) -> None:
        from cl.evaluate import evaluate_row, primary

        b = self.built
        agn, aware = evaluate_row(
            b.strategy, b.stream, trained_upto=i, batch_size=b.train.eval_batch_size
        )
        self.rows.append(primary(b.stream.scenario, agn, aware))

    def metrics(self) -> dict[str, float]:
        from cl import metrics

        return {"avg_acc": metrics.avg_acc(self.rows), "forgetting": metrics.forgetting(self.rows)}


def plain_hnet(s: Any, theta: dict[str, torch.Tensor], emb: torch.Tensor) -> torch.Tensor:
    """The full hypernetwork's forward written with plain autograd ops at parameters ``theta``."""
    h, x = s.hnet, emb
    for i in range(len(h.hidden)):
        x = h.act(F.linear(x, theta[f"hidden.{i}.weight"], theta[f"hidden.{i}.bias"]))
    return F.linear(x, theta["out.weight"], theta["out.bias"])[..., : h.n_out] * h.scale + h.offset


class PerTaskLoop(Platform):
    """The same training with the regulariser as a loop over old tasks (hypercl's structure),
    in plain PyTorch: a fresh tensor for every gradient and every look-ahead value."""

    def train(self, i: int) -> None:
        from cl.lookahead import optimizer_delta

        s, exp, tc = self.built.strategy, self.built.stream[i], self.built.train
        beta, lookahead = s.config.beta, s.config.lookahead
        task = exp.task_id
        old = [t for t in s.learned if t != task]
        s.model.train()
        with self.clock:
            opt = s.build_optimizer([*s.hnet.parameters(), s.embeddings[task]])
            for epoch in range(tc.epochs):
                for batch in s.iterate(exp.train, epoch=epoch, exp_index=i):
                    opt.zero_grad(set_to_none=True)
                    params = dict(s.hnet.named_parameters())
                    flat = plain_hnet(s, params, s.embeddings[task])
                    loss = F.cross_entropy(s.task_logits(batch.x, task, flat), batch.y)
                    if not old or beta == 0:
                        loss.backward()
                        opt.step()
                        continue
                    theta = params
                    if lookahead:  # backprop the task loss, then preview the optimiser's step
                        loss.backward()
                        hp = list(params.values())
                        delta = optimizer_delta(opt, hp, [p.grad for p in hp])
                        theta = {
                            n: p + d.detach()
                            for (n, p), d in zip(params.items(), delta, strict=True)
                        }
                        loss = loss.new_zeros(())
                    reg = loss.new_zeros(())
                    for t in old:
                        pred = plain_hnet(s, theta, s.embeddings[t].detach())
                        reg = reg + (pred - s.targets[t]).pow(2).sum()
                    (loss + beta / len(old) * reg).backward()
                    opt.step()
            s.after_experience(exp)  # stores the targets of every learned task
        self.evaluate(i)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-experiences", type=int, default=10)
    ap.add_argument("--max-train", type=int, default=3000)
    ap.add_argument("--max-test", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--beta", type=float, default=0.01)
    ap.add_argument("--lookahead", choices=["off", "on", "both"], default="both")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    from cl.budget import warm_up

    warm_up(torch.device(args.device))
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.lookahead]
    print(
        f"threads={torch.get_num_threads()} experiences={args.n_experiences} "
        f"max_train={args.max_train} epochs={args.epochs} beta={args.beta}"
    )
    for la in modes:
        cfg = compose(args, la)
        ours, loop = Platform(cfg), PerTaskLoop(cfg)  # same seed: same weights and batches
        for i in range(len(ours.built.stream)):  # interleaved: both see the same load
            ours.train(i)
            loop.train(i)
        print(f"[{cfg.stream.name}, lookahead={la}]")
        for name, r in (("platform (batched)", ours), ("per-task loop", loop)):
            m = r.metrics()
            print(
                f"  {name:19s}: train CPU {r.clock.cpu:7.2f} s  wall {r.clock.wall:7.2f} s  "
                f"avg_acc {m['avg_acc']:.4f}  forgetting {m['forgetting']:.4f}"
            )
        a, b = ours.clock, loop.clock
        ratio = f"CPU {a.cpu / b.cpu:6.3f}  wall {a.wall / b.wall:6.3f}"
        print(f"  platform / loop    : {ratio}  (target <= 0.5)")


if __name__ == "__main__":
    main()
