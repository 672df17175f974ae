"""``cl-adapters delete RUN_DIR PARTITION``: remove a partition from a finished run on disk.

Strategies never touch files, so deleting a partition from a live ``adapters`` strategy
(:meth:`Adapters.delete`) leaves the run's checkpoints and any exported adapters behind. This
command completes the deletion on disk: it rewrites every checkpoint of the run without the
partition (its adapter, head, routing entry, access entry and optimiser state; each file
replaced atomically), removes every export of that adapter (peft directories and merged models,
recognised by the adapter fingerprint in their ``partition.json``) under the run directory and
any ``--exports`` folders, and appends what it removed to ``deletions.json`` in the run
directory. The run directory is locked meanwhile, so a running ``cl-run`` is never edited.

Because every partition of the adapters strategy is trained independently of the others (own
seed, own adapter, the shared head only from a public partition), a purged checkpoint is the
checkpoint of a run that never saw the partition, up to the metrics already recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from cl.adapter_bank import PARTITION_FILE, adapter_keys, fingerprint
from cl.errors import CLError, ConfigError
from cl.logging.files import atomic_write_text, temp_name
from cl.rundir import run_dir_lock

AUDIT_FILE = "deletions.json"


def purge_state(state: dict[str, Any], optimizer: dict[str, Any] | None, name: str) -> None:
    """Remove partition ``name`` from an ``adapters`` strategy's saved state and the saved
    optimiser state (:func:`cl.optim.optimizer_state`), in place.

    Raises:
        ConfigError: The partition trained the shared head (every output depends on it).
    """
    if state.get("head_owner") == name:
        raise ConfigError(f"the shared head was trained on {name!r}: retrain from scratch")
    state["meta"].pop(name, None)
    for part in ("adapters", "heads"):
        for k in adapter_keys(state[part], name) + [
            k for k in state[part] if k.startswith(f"{name}.")
        ]:
            state[part].pop(k, None)
    for part in ("router", "access"):
        state[part].pop(name, None)
    if state.get("current") == name:
        state["current"] = None
    if optimizer is not None:
        gone = set(adapter_keys(optimizer["state"], name))
        gone |= {p for g in optimizer["param_groups"] for p in adapter_keys(g["params"], name)}
        for k in gone:
            optimizer["state"].pop(k, None)
        for g in optimizer["param_groups"]:
            g["params"] = [p for p in g["params"] if p not in gone]


def _write_atomic(path: Path, payload: dict[str, Any]) -> None:
    tmp = temp_name(path)
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # also unlinks a hard link shared with another checkpoint
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _purge_checkpoints(run_dir: Path, name: str) -> tuple[list[Path], set[str], set[str]]:
    """Rewrite the run's checkpoints without ``name``; the rewritten files, the fingerprints
    of the versions of its adapter they held, and the partitions the run has."""
    files = sorted((run_dir / "checkpoints").glob("*.pt"))
    if not files:
        raise ConfigError(f"{run_dir} has no checkpoints (checkpoint.enabled=false?)")
    changed, prints, names = [], set(), set()
    for path in files:
        try:
            payload = torch.load(path, map_location="cpu", weights_only=False)
            state = payload["strategy"]
            names |= set(state["meta"])
        except Exception as e:
            raise ConfigError(f"{path} is not a checkpoint of an adapters run ({e})") from None
        if name not in state["meta"]:
            continue
        prints.add(fingerprint(state["adapters"], name))
        purge_state(state, payload.get("optimizer"), name)
        _write_atomic(path, payload)
        changed.append(path)
    return changed, prints, names


def _purge_exports(roots: list[Path], name: str, prints: set[str]) -> list[Path]:
    removed = []
    for root in roots:
        for info in sorted(root.rglob(PARTITION_FILE)) if root.is_dir() else []:
            try:
                meta = json.loads(info.read_text())
            except (OSError, ValueError):
                continue
            if meta.get("partition") == name and meta.get("fingerprint") in prints:
                shutil.rmtree(info.parent)
                removed.append(info.parent)
    return removed


def delete_partition(
    run_dir: str | Path, name: str, exports: list[str | Path] | tuple[()] = ()
) -> dict[str, Any]:
    """Purge partition ``name`` from run ``run_dir``'s checkpoints and from the exports of its
    adapter under ``run_dir`` and ``exports``; returns the audit record it appended.

    Raises:
        ConfigError: No such run, no such partition, or the partition trained the shared head.
        RunDirError: The run is in use by a ``cl-run``.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise ConfigError(f"no run directory {run}")
    with run_dir_lock(run):
        changed, prints, names = _purge_checkpoints(run, name)
        if not prints:
            raise ConfigError(f"run {run} has no partition {name!r}; have {sorted(names)}")
        removed = _purge_exports([run, *map(Path, exports)], name, prints)
        record = {
            "partition": name,
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
            "checkpoints": [str(p.relative_to(run)) for p in changed],
            "exports": [str(p) for p in removed],
        }
        audit = run / AUDIT_FILE
        past = json.loads(audit.read_text()) if audit.exists() else []
        atomic_write_text(audit, json.dumps([*past, record], indent=1) + "\n")
    return record


def main(argv: list[str] | None = None) -> int:
    """Console script ``cl-adapters``; returns the exit code."""
    parser = argparse.ArgumentParser(prog="cl-adapters", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("delete", help="purge a partition from a run's checkpoints and exports")
    d.add_argument("run_dir", help="the run directory (holds checkpoints/)")
    d.add_argument("partition", help="the partition's adapter name, e.g. exp2")
    d.add_argument("--exports", nargs="*", default=[], help="more folders holding exports to purge")
    args = parser.parse_args(argv)
    try:
        record = delete_partition(args.run_dir, args.partition, args.exports)
    except CLError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    print(f"deleted {args.partition}: {len(record['checkpoints'])} checkpoints rewritten")
    for path in record["exports"]:
        print(f"removed export {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
