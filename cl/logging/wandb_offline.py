"""Read an offline W&B run (``run-<id>.wandb``) back: run id, config, history and summary.

The file is W&B's transaction log: a 7-byte header (``:W&B``, magic 0xBEE1, version 0),
then 32 KiB blocks of LevelDB-style records (crc32 u32, length u16, type u8; FULL=1,
FIRST=2, MIDDLE=3, LAST=4) whose payloads are ``wandb_internal_pb2.Record`` messages.
Used by tests and reports to read what a run logged without a server.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BLOCK = 32 * 1024
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def iter_payloads(path: Path) -> list[bytes]:
    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B transaction log")
    out: list[bytes] = []
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < HEADER:  # block trailer padding
            pos += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        pos += HEADER
        chunk = data[pos : pos + length]
        pos += length
        if kind == FULL:
            out.append(chunk)
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            out.append(pending + chunk)
            pending = b""
        elif kind == 0 and length == 0:
            continue
    return out


@dataclass
class OfflineRun:
    """What an offline run recorded."""

    run_id: str = ""
    name: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    exit_code: int | None = None


def _key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


def read_offline_run(run_path: Path) -> OfflineRun:
    """Parse ``run_path`` (an ``offline-run-*`` folder or its ``.wandb`` file)."""
    from wandb.proto import wandb_internal_pb2 as pb

    f = run_path if run_path.is_file() else next(run_path.glob("run-*.wandb"))
    run = OfflineRun()
    for payload in iter_payloads(f):
        rec = pb.Record()  # type: ignore[attr-defined]
        rec.ParseFromString(payload)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            run.run_id = rec.run.run_id
            run.name = rec.run.display_name
            for it in rec.run.config.update:
                run.config[_key(it)] = json.loads(it.value_json)
        elif kind == "config":
            for it in rec.config.update:
                run.config[_key(it)] = json.loads(it.value_json)
        elif kind == "history":
            run.history.append({_key(it): json.loads(it.value_json) for it in rec.history.item})
        elif kind == "summary":
            for it in rec.summary.update:
                run.summary[_key(it)] = json.loads(it.value_json)
        elif kind == "exit":
            run.exit_code = rec.exit.exit_code
    return run


def offline_runs(folder: Path) -> list[Path]:
    """All offline run folders under ``folder`` (e.g. a cl-run or multirun directory)."""
    return sorted(p for p in folder.rglob("offline-run-*") if p.is_dir())
