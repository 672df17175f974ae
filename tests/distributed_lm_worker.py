"""One rank of the distributed language-model tests, started by tests/test_distributed_lm.py.

``python -m torch.distributed.run --standalone --nproc_per_node=2 distributed_lm_worker.py OUT``
runs, in one process group:

* for every registered strategy whose ``modalities`` include ``text2text``: training on
  ``cl.testing.LM_SETUP`` (a tiny causal LM on the memorisation stream) experience by
  experience, gathering every rank's hash of ``state_dict()`` after each one (a strategy that
  cannot run distributed must say so in one ``ConfigError``);
* whole ``naive`` runs with the global batch of the one-process reference, unpacked and packed
  (rows holding different numbers of target tokens).

Rank 0 writes ``OUT/results.json`` for the test to compare with its one-process references.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from distributed_worker import gathered, state_hash  # noqa: E402
from test_lm_contracts import LM_STRATEGIES, lm_overrides  # noqa: E402

from cl import distributed  # noqa: E402
from cl.errors import ConfigError  # noqa: E402

# Equivalence runs: name -> overrides on top of LM_SETUP (the packed rows hold 3, 3 and 2 pairs).
RUNS: dict[str, tuple[str, ...]] = {
    "naive": ("strategy=naive", "train.batch_size=8"),
    "naive_packed": (
        "strategy=naive",
        "stream.packing=true",
        "stream.max_length=40",
        "train.batch_size=4",
    ),
}


def contracts(world: int) -> dict[str, Any]:
    from cl.config import build
    from cl.testing import compose

    results: dict[str, Any] = {}
    for name in LM_STRATEGIES:
        t0 = time.perf_counter()
        try:
            built = build(compose(lm_overrides(name)))
        except ConfigError as e:
            results[name] = {"refused": str(e)}
            continue
        strat = built.strategy
        hashes = [gathered(state_hash(strat.state_dict()), world)]
        for exp in list(built.stream)[:2]:
            strat.train_experience(exp)
            hashes.append(gathered(state_hash(strat.state_dict()), world))
        results[name] = {"hashes": hashes, "seconds": time.perf_counter() - t0}
    return results


def runs(root: Path) -> dict[str, Any]:
    from cl.run import run_experiment
    from cl.testing import LM_SETUP, QUIET, compose

    out: dict[str, Any] = {}
    for name, extra in RUNS.items():
        rec = run_experiment(compose([*QUIET, *LM_SETUP, *extra]), root / f"run-{name}")
        out[name] = {
            "acc_matrix": rec.acc_matrix,
            "losses": [p["final_loss"] for p in rec.per_experience],
            "world_size": rec.world_size,
            "backend": rec.backend,
        }
    return out


def main() -> None:
    out_dir = Path(sys.argv[1])
    info = distributed.init_from_env()
    result = {"contracts": contracts(info.world_size), "runs": runs(out_dir)}
    if info.is_main:
        (out_dir / "results.json").write_text(json.dumps(result))
    distributed.shutdown()


if __name__ == "__main__":
    main()
