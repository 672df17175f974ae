"""results.json and metrics.csv, rewritten atomically after every experience."""

from __future__ import annotations

import csv
import io
import json
import os
import secrets
from pathlib import Path

from cl.logging.base import RunRecord, Sink


def temp_name(path: Path) -> Path:
    """A temp file next to ``path``, unique per process and call (pid and a random suffix)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``path`` via a unique temp file and a rename; no temp file outlives a failure."""
    tmp = temp_name(path)
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class FileSink(Sink):
    """Writes ``results.json`` (the source of truth) and ``metrics.csv`` in the run dir."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    def _write(self, record: RunRecord) -> None:
        atomic_write_text(self.run_dir / "results.json", json.dumps(record.to_results(), indent=2))
        atomic_write_text(self.run_dir / "metrics.csv", metrics_csv(record))

    def start(self, record: RunRecord, *, resumed: bool) -> None:
        self._write(record)

    def end_experience(self, record: RunRecord) -> None:
        self._write(record)

    def finish(self, record: RunRecord) -> None:
        self._write(record)


def metrics_csv(record: RunRecord) -> str:
    """One row per experience: protocol, timings, loss, metrics so far and the accuracy row.

    Row i's metrics use the rows and experiences seen so far (``avg_acc`` = mean_{j<=i}
    R[i][j]); an undefined metric (e.g. ``fwt`` in task-agnostic class_il) is empty.
    """
    t = len(record.stream.get("classes", [])) or record.n_done
    cols = [
        "index",
        "evaluation",
        "train_seconds",
        "eval_seconds",
        "final_loss",
        "steps",
        "samples",
        "trainable_params",
        "extra_state_bytes",
        "avg_acc",
        "avg_incremental_acc",
        "forgetting",
        "bwt",
        "fwt",
    ] + [f"acc_exp{j}" for j in range(t)]
    cols += [f"{name}_exp{j}" for name in record.matrices for j in range(t)]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    w.writeheader()
    for i, pe in enumerate(record.per_experience):
        row = dict(pe)
        row.update(pe.get("metrics", {}))
        row["evaluation"] = record.protocol
        row.update({f"acc_exp{j}": a for j, a in enumerate(record.acc_matrix[i])})
        for name, m in record.matrices.items():
            if i < len(m):
                row.update({f"{name}_exp{j}": v for j, v in enumerate(m[i])})
        w.writerow(row)
    return buf.getvalue()
