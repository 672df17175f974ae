"""One rank of the distributed tests, started by ``torchrun`` from tests/test_distributed.py.

``python -m torch.distributed.run --standalone --nproc_per_node=2 distributed_worker.py OUT``
runs, in one process group:

* the cross-rank state contract for every registered strategy: each trains its contract setup
  (``Strategy.test_setup``) experience by experience and, after each one, every rank's hash of
  ``state_dict()`` is gathered (a strategy that cannot run distributed must say so in one
  ``ConfigError``);
* whole runs of the equivalence strategies with the global batch of the one-process reference,
  and one run killed on all ranks inside an experience and resumed;
* whole runs of the :data:`EXTRA` setups: the closed-form strategies (own loops, statistics
  summed over ranks), the hypernetwork with look-ahead, and naive training on an image-folder
  stream (a Dataset: each rank loads only its shard);
* the batches each rank loads from that image-folder stream.

Rank 0 writes ``OUT/results.json`` for the test to compare with its one-process references.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from cl import distributed
from cl.errors import ConfigError

EQUIVALENCE = ("naive", "ewc", "replay", "lwf", "l2p")
RESUME = "replay"
FSDP = "l2p"
FSDP_ARGS = ("train.distributed=fsdp",)


def image_folder_args(root: str) -> tuple[str, ...]:
    """A tiny split ImageNet-R read from image files under ``root`` (a Dataset stream)."""
    return (
        "stream=split_imagenet_r",
        f"stream.data_root={root}",
        "stream.download=false",
        "stream.img_size=8",
        "stream.n_experiences=2",
        "train.batch_size=8",
    )


def extra_runs(root: str, batch_size: int) -> dict[str, list[str]]:
    """Whole runs compared with one process: run name -> overrides (shared with the test)."""
    from cl.testing import setup_overrides

    b = f"train.batch_size={batch_size}"
    return {
        "simplecil": setup_overrides("simplecil", b),
        "ranpac": setup_overrides("ranpac", b),
        "hypernet-lookahead": setup_overrides(
            "hypernet", b, "strategy.lookahead=true", "stream.n_experiences=2"
        ),
        "naive-images": setup_overrides("naive", *image_folder_args(root), "train.epochs=2"),
        "simplecil-images": setup_overrides("simplecil", *image_folder_args(root)),
    }


def state_hash(obj: Any) -> str:
    """A hash of a nested state (tensors by dtype, shape and bytes)."""
    h = hashlib.sha256()

    def visit(o: Any) -> None:
        if isinstance(o, torch.Tensor):
            t = o.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(o, dict):
            for k in sorted(o, key=repr):
                h.update(f"K{k!r}".encode())
                visit(o[k])
        elif isinstance(o, list | tuple):
            h.update(f"L{len(o)}".encode())
            for v in o:
                visit(v)
        else:
            h.update(repr(o).encode())

    visit(obj)
    return h.hexdigest()


def gathered(value: Any, world: int) -> list[Any]:
    out: list[Any] = [None] * world
    dist.all_gather_object(out, value)
    return out


def contracts(world: int) -> dict[str, Any]:
    from cl.config import build
    from cl.strategy import list_strategies
    from cl.testing import compose, setup_overrides

    results: dict[str, Any] = {}
    for name in list_strategies():
        t0 = time.perf_counter()
        try:
            built = build(compose(setup_overrides(name)))
        except ConfigError as e:
            results[name] = {"refused": str(e)}
            continue
        strat = built.strategy
        hashes = [gathered(state_hash(strat.state_dict()), world)]  # as built
        for exp in list(built.stream)[:2]:  # two experiences: the second sees earlier state
            strat.train_experience(exp)
            hashes.append(gathered(state_hash(strat.state_dict()), world))
        results[name] = {"hashes": hashes, "seconds": time.perf_counter() - t0}
    return results


def runs(world: int, root: Path, batch_size: int) -> dict[str, Any]:
    from omegaconf import OmegaConf

    from cl.run import run_experiment
    from cl.testing import check_resume, compose, setup_overrides

    out: dict[str, Any] = {}
    for name in EQUIVALENCE:
        cfg = compose(setup_overrides(name, f"train.batch_size={batch_size}"))
        rec = run_experiment(cfg, root / f"run-{name}")
        out[name] = {
            "acc_matrix": rec.acc_matrix,
            "losses": [p["final_loss"] for p in rec.per_experience],
            "world_size": rec.world_size,
            "backend": rec.backend,
        }
        if name == FSDP:  # the frozen ViT blocks sharded with FSDP2: the same matrix
            cfg = compose(setup_overrides(name, f"train.batch_size={batch_size}", *FSDP_ARGS))
            rec = run_experiment(cfg, root / "run-fsdp")
            out["fsdp"] = {"acc_matrix": rec.acc_matrix}
        if name == RESUME:
            resumed = check_resume(cfg, root / "resume", reference=rec, kill_step=(1, 2))
            out["resume"] = {"acc_matrix": resumed.acc_matrix}
            assert OmegaConf.select(cfg, "strategy.name") == name
    return out


def more_runs(root: Path, images: str, batch_size: int) -> dict[str, Any]:
    from cl.run import run_experiment
    from cl.testing import compose

    out: dict[str, Any] = {}
    for name, overrides in extra_runs(images, batch_size).items():
        t0 = time.perf_counter()
        rec = run_experiment(compose(overrides), root / f"run-{name}")
        losses = [p["final_loss"] for p in rec.per_experience]
        seconds = time.perf_counter() - t0
        out[name] = {"acc_matrix": rec.acc_matrix, "losses": losses, "seconds": seconds}
    return out


def loaded_batches(world: int, images: str) -> list[Any]:
    """Per rank, the batches of one epoch of the image-folder stream: share, labels, and each
    image's pixel sum (naive's loop shards them no further)."""
    from cl.config import build
    from cl.testing import compose, setup_overrides

    built = build(compose(setup_overrides("naive", *image_folder_args(images))))
    exp = built.stream[0]
    mine = [
        (b.share, b.y.tolist(), b.x.flatten(1).sum(1).tolist())
        for b in built.strategy.train_batches(exp, 0)
    ]
    return gathered(mine, world)


def fsdp_refusal() -> str:
    """SimpleCIL's float64 features with ``train.distributed=fsdp``: refused in one line."""
    from cl.config import build
    from cl.testing import compose, setup_overrides

    try:
        build(compose(setup_overrides("simplecil", *FSDP_ARGS)))
    except ConfigError as e:
        return str(e)
    return "built"


def main() -> None:
    out_dir = Path(sys.argv[1])
    batch_size = int(sys.argv[2])
    images = sys.argv[3]
    info = distributed.init_from_env()
    world = info.world_size
    result = {
        "contracts": contracts(world),
        "runs": runs(world, out_dir, batch_size),
        "more": more_runs(out_dir, images, batch_size),
        "loaded": loaded_batches(world, images),
        "fsdp_refusal": fsdp_refusal(),
    }
    if info.is_main:
        (out_dir / "results.json").write_text(json.dumps(result))
    distributed.shutdown()


if __name__ == "__main__":
    main()
