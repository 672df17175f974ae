"""Seed table of the frozen-heads prompt comparison (Q-tuning, Progressive Prompts, prompt tuning).

Runs the comparison of ``tests/test_qtuning.py`` (``COMPARISON``: four offline text tasks,
frozen MiniLM and head, prompt read-out, shortened) for each strategy and seed, and appends one
JSON line per run to ``--out``: average accuracy, forgetting, the accuracy matrix, what each
queue eviction saw (row norms and singular values), and the versions of torch and transformers.
The test asserts margins that this table proves; rerun it (once, in the background: minutes per
run on a CPU) after changing the method or the setting, under each torch version the README
supports, and copy the summary into the test's docstring.

Usage: ``python benchmarks/qtuning_seeds.py --seeds 0 1 2 3 4 --out qtuning_seeds.jsonl``
(``--summary FILE`` prints the per-seed table and means of an existing file).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")


def run(strategy: str, seed: int, extra: list[str]) -> dict[str, object]:
    """One run of the frozen-heads setting; its metrics and accuracy matrix."""
    import torch
    import transformers

    from cl.config import compose_config
    from cl.models.prompt_queue import PromptQueue
    from cl.run import run_experiment
    from tests.test_qtuning import COMPARISON, COMPARISON_RUNS

    evictions: list[dict[str, list[float]]] = []
    evict = PromptQueue.evict

    def logged_evict(q: PromptQueue) -> float:  # record what each eviction saw
        flat = q.rows.reshape(len(q), -1).double()
        sv = torch.linalg.svdvals(flat)
        evictions.append({"row_norms": flat.norm(dim=1).tolist(), "singular": sv.tolist()})
        return evict(q)

    PromptQueue.evict = logged_evict  # type: ignore[method-assign]
    overrides = ["logger=none", *COMPARISON, f"strategy={strategy}", f"seed={seed}"]
    cfg = compose_config([*overrides, *COMPARISON_RUNS.get(strategy, []), *extra])
    start = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory() as d:
            rec = run_experiment(cfg, Path(d))
    finally:
        PromptQueue.evict = evict  # type: ignore[method-assign]
    m = rec.metrics()
    return {
        "strategy": strategy,
        "seed": seed,
        "extra": extra,
        "avg_acc": m["avg_acc"],
        "forgetting": m["forgetting"],
        "acc_matrix": rec.acc_matrix,
        "evictions": evictions,
        "seconds": round(time.perf_counter() - start, 1),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def summary(path: Path) -> str:
    """Per-seed table and means by (torch, strategy, extra overrides)."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    groups: dict[tuple[str, str, str], list[dict[str, object]]] = {}
    for r in rows:
        groups.setdefault((str(r["torch"]), str(r["strategy"]), " ".join(r["extra"])), []).append(r)
    out = []
    for (tv, s, extra), rs in sorted(groups.items()):
        cells = " ".join(f"s{r['seed']} {r['avg_acc']:.3f}/{r['forgetting']:.3f}" for r in rs)
        acc = statistics.mean(float(r["avg_acc"]) for r in rs)  # type: ignore[arg-type]
        forg = statistics.mean(float(r["forgetting"]) for r in rs)  # type: ignore[arg-type]
        lo = min(float(r["avg_acc"]) for r in rs)  # type: ignore[arg-type]
        hi = max(float(r["forgetting"]) for r in rs)  # type: ignore[arg-type]
        out.append(
            f"torch {tv} {s} {extra}: {cells} | mean {acc:.3f}/{forg:.3f}, "
            f"min acc {lo:.3f}, max forg {hi:.3f}"
        )
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--strategies", nargs="+", default=["prompt_tuning", "progprompt", "qtuning"])
    p.add_argument("--out", type=Path, default=Path("qtuning_seeds.jsonl"))
    p.add_argument("--summary", type=Path, help="print the table of an existing file and exit")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    a = p.parse_args()
    if a.summary:
        print(summary(a.summary))
        return
    for seed in a.seeds:
        for s in a.strategies:
            r = run(s, seed, a.overrides)
            with a.out.open("a") as f:
                f.write(json.dumps(r) + "\n")
            print(f"{s} seed {seed}: {r['avg_acc']:.3f} / {r['forgetting']:.3f} ({r['seconds']} s)")
    print(summary(a.out))


if __name__ == "__main__":
    main()
