"""Console sink: a tqdm progress bar per experience and a final metrics table."""

from __future__ import annotations

import sys
from typing import Any

from torch import Tensor
from tqdm import tqdm

from cl.logging.base import RunRecord, Sink


class ConsoleSink(Sink):
    """Progress bars on stderr, the summary table on stdout."""

    def __init__(self, *, refresh_every: int = 20) -> None:
        self.bar: Any = None
        self.refresh_every = refresh_every
        self.n_exp = 0

    def start(self, record: RunRecord, *, resumed: bool) -> None:
        self.n_exp = int(record.stream.get("n_experiences", 0))
        what = "resuming" if resumed else "starting"
        print(
            f"{what} {record.name}: stream {record.stream.get('name')} "
            f"({record.scenario}, {self.n_exp} experiences) on {record.device}"
            + (f", {record.n_done} already done" if resumed else ""),
            file=sys.stderr,
        )

    def start_experience(self, index: int, n_steps: int) -> None:
        self.bar = tqdm(
            total=n_steps,
            desc=f"experience {index + 1}/{self.n_exp}",
            unit="step",
            file=sys.stderr,
            leave=True,
            dynamic_ncols=True,
            mininterval=0.5,
        )

    def step(self, step: int, batch_size: int, loss: Tensor) -> None:
        if self.bar is None:
            return
        self.bar.update(1)
        if step % self.refresh_every == 0:
            self.bar.set_postfix(loss=f"{float(loss):.4f}", refresh=False)

    def end_experience(self, record: RunRecord) -> None:
        pe = record.per_experience[-1]
        if self.bar is not None:
            self.bar.set_postfix(
                loss=f"{pe['final_loss']:.4f}", avg_acc=f"{pe['metrics']['avg_acc']:.3f}"
            )
            self.bar.close()
            self.bar = None

    def finish(self, record: RunRecord) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        print(format_summary(record))


def format_summary(record: RunRecord) -> str:
    """The accuracy matrix and the final metrics as plain-text tables."""
    lines = [
        f"run {record.name} [{record.status}]",
        f"evaluation: {record.protocol} ({record.scenario} stream)",
    ]
    if record.acc_matrix:
        t = len(record.acc_matrix[0])
        lines.append(
            f"{record.protocol} accuracy matrix "
            "(row: after experience i, column: test on experience j)"
        )
        lines.append("      " + " ".join(f"{f'e{j}':>6}" for j in range(t)))
        for i, row in enumerate(record.acc_matrix):
            lines.append(f"{f'e{i}':>5} " + " ".join(f"{a:6.3f}" for a in row))
    for name, matrix in record.matrices.items():  # extra matrices (perplexity, ...)
        if matrix:
            lines.append(f"{record.protocol} {name} matrix (row: after experience i)")
            lines.append("      " + " ".join(f"{f'e{j}':>9}" for j in range(len(matrix[0]))))
            for i, row in enumerate(matrix):
                lines.append(f"{f'e{i}':>5} " + " ".join(f"{a:9.3f}" for a in row))
    m = record.metrics()
    lines.append(f"{'metric':<22}{'value':>10}")
    for k, v in m.items():
        lines.append(f"{k:<22}{'-' if v is None else f'{v:.4f}':>10}")
    aware = record.metrics_task_aware() if record.protocol != "task_aware" else None
    for k, why in record.undefined_metrics().items():
        lines.append(f"  {k} is null: {why}")
        if aware is not None and aware.get(k) is not None:
            lines.append(f"{f'{k} (task-aware)':<22}{aware[k]:>10.4f}")
    b = record.budget
    lines.append(f"{'trainable_params':<22}{b.trainable_params:>10}")
    lines.append(f"{'extra_state_bytes':<22}{b.extra_state_bytes:>10}")
    lines.append(f"{'train_seconds':<22}{b.train_seconds:>10.2f}")
    lines.append(f"{'eval_seconds':<22}{b.eval_seconds:>10.2f}")
    return "\n".join(lines)
