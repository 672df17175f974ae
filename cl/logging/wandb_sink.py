"""Weights & Biases sink: namespaced keys, matrix table and heatmap, per-task curves.

One W&B run per cl-run job, finished before the next job of a multirun starts. The run id is
kept in the run record, so ``resume=`` continues the same W&B run. W&B is never what loses a
run: if it cannot start or write, the sink warns once, stops, and the error goes into
``results.json`` (``run.wandb_error``) while the file sinks carry on.
"""

from __future__ import annotations

import contextlib
import netrc
import os
import secrets
import sys
from pathlib import Path
from typing import Any

from torch import Tensor

from cl.errors import reason
from cl.logging.base import RunRecord, Sink


def has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        auth = netrc.netrc().authenticators(
            os.environ.get("WANDB_BASE_URL", "api.wandb.ai").split("//")[-1]
        )
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    return bool(auth and auth[2])


def new_run_id() -> str:
    """A fresh W&B run id (8 characters from ``[a-z0-9]``, like W&B's own)."""
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(secrets.choice(alphabet) for _ in range(8))


def resolve_mode(mode: str) -> str:
    """``auto`` -> WANDB_MODE if set, else online with an API key, offline without."""
    if mode != "auto":
        return mode
    env = os.environ.get("WANDB_MODE")
    if env:
        return "offline" if env == "dryrun" else env
    return "online" if has_api_key() else "offline"


def heatmap_figure(matrix: list[list[float]], title: str, *, unit_range: bool = True) -> Any:
    """The matrix as a heatmap; ``unit_range``: colours span [0, 1] (else the values' range)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t_rows, t = len(matrix), len(matrix[0])
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * t, 0.8 + 0.6 * t_rows))
    lo, hi = (0.0, 1.0) if unit_range else (min(map(min, matrix)), max(map(max, matrix)))
    im = ax.imshow(matrix, vmin=lo, vmax=hi, cmap="viridis")
    for i in range(t_rows):
        for j in range(t):
            ax.text(
                j,
                i,
                f"{matrix[i][j]:.2f}",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if matrix[i][j] < lo + 0.6 * (hi - lo) else "black",
            )
    ax.set_xlabel("test experience j")
    ax.set_ylabel("after training on i")
    ax.set_xticks(range(t))
    ax.set_yticks(range(t_rows))
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


class WandbSink(Sink):
    """Logs to W&B (online or offline)."""

    def __init__(
        self,
        *,
        run_dir: Path,
        project: str,
        entity: str | None,
        group: str | None,
        tags: list[str],
        mode: str,
        log_every_n_steps: int,
    ) -> None:
        self.run_dir = run_dir
        self.project = project
        self.entity = entity
        self.group = group
        self.tags = tags
        self.mode = resolve_mode(mode)
        self.every = max(1, log_every_n_steps)
        self.run: Any = None
        self.global_step = 0
        self.error: str | None = None

    def start(self, record: RunRecord, *, resumed: bool) -> None:
        if self.mode == "disabled":
            return
        self.global_step = sum(int(p.get("steps", 0)) for p in record.per_experience)
        try:
            self._init(record)
        except Exception as e:
            self._failed(record, "could not start", e)

    def _init(self, record: RunRecord) -> None:
        import wandb

        self.run = wandb.init(
            project=self.project,
            entity=self.entity,
            group=self.group
            or f"{record.stream.get('name')}/{record.config.get('strategy', {}).get('name')}",
            tags=list(self.tags),
            name=record.name,
            id=record.wandb_id,
            resume="allow" if record.wandb_id else None,
            dir=str(self.run_dir),
            # The protocol in the config too: reports group by it, never mixing protocols.
            config={**record.config, "evaluation": record.protocol},
            mode=self.mode,  # type: ignore[arg-type]
            # Flush the local transaction log often: a killed run keeps what it logged.
            settings=wandb.Settings(
                console="off", silent=True, x_transaction_log_flush_interval=2.0
            ),
        )
        record.wandb_id = self.run.id
        self.run.define_metric("train/step")
        self.run.define_metric("train/*", step_metric="train/step")
        self.run.define_metric("experience")
        for ns in ("eval/*", "cl/*", "budget/*"):
            self.run.define_metric(ns, step_metric="experience")

    def _failed(self, record: RunRecord | None, what: str, e: Exception) -> None:
        """W&B failed: warn once, stop using it, keep the error for ``results.json``."""
        if self.error is None:
            text = " ".join(str(e).split()) or reason(e)  # one line, whatever W&B raised
            self.error = f"{what}: {type(e).__name__}: {text[:300]}"
            print(
                f"warning: W&B {self.error}; the run goes on with results.json and "
                "metrics.csv only",
                file=sys.stderr,
            )
        if record is not None:
            record.wandb_error = self.error
        run, self.run = self.run, None
        if run is not None:
            with contextlib.suppress(Exception):
                run.finish(exit_code=1)

    def step(self, step: int, batch_size: int, loss: Tensor) -> None:
        self.global_step += 1
        if self.run is not None and self.global_step % self.every == 0:
            try:
                self.run.log({"train/loss": float(loss), "train/step": self.global_step})
            except Exception as e:
                self._failed(None, "failed to log", e)

    def end_experience(self, record: RunRecord) -> None:
        if self.error is not None:
            record.wandb_error = self.error
        if self.run is None:
            return
        i = record.n_done - 1
        pe = record.per_experience[-1]
        data: dict[str, Any] = {"experience": i + 1}
        data.update({f"eval/acc_exp{j}": a for j, a in enumerate(record.acc_matrix[i])})
        if record.acc_matrix_task_aware:
            data.update(
                {
                    f"eval/task_aware_acc_exp{j}": a
                    for j, a in enumerate(record.acc_matrix_task_aware[i])
                }
            )
        for name, m in record.matrices.items():
            data.update({f"eval/{name}_exp{j}": v for j, v in enumerate(m[i])})
        data.update({f"cl/{k}": v for k, v in pe["metrics"].items() if v is not None})
        data["train/final_loss"] = pe["final_loss"]
        data["train/step"] = self.global_step
        for k in ("train_seconds", "eval_seconds", "trainable_params", "extra_state_bytes"):
            data[f"budget/{k}"] = pe[k]
        try:
            self.run.log(data)
        except Exception as e:
            self._failed(record, "failed to log", e)

    def finish(self, record: RunRecord) -> None:
        if self.error is not None:
            record.wandb_error = self.error
        if self.run is None:
            return
        try:
            self._summarise(record)
        except Exception as e:
            self._failed(record, "failed to log the summary", e)
            return
        offline = self.mode == "offline"
        run, self.run = self.run, None
        try:
            run_path = Path(run.dir).parent
            run.finish(exit_code=0 if record.status == "complete" else 1)
        except Exception as e:
            self._failed(record, "failed to finish", e)
            return
        if offline:
            print(f"W&B run saved offline; upload it with: wandb sync {run_path}", file=sys.stderr)

    def _summarise(self, record: RunRecord) -> None:
        import wandb

        if record.acc_matrix:
            self._log_matrix(wandb, record.acc_matrix, "acc_matrix", record.n_done)
            if record.acc_matrix_task_aware:
                self._log_matrix(
                    wandb, record.acc_matrix_task_aware, "acc_matrix_task_aware", record.n_done
                )
        for name, m in record.matrices.items():  # extra matrices (perplexity, ...)
            if m:
                self._log_matrix(wandb, m, name, len(m), unit_range=False)
                self.run.summary.update({f"eval/final_{name}": m[-1]})
        summary: dict[str, Any] = {
            f"cl/{k}": v for k, v in record.metrics().items() if v is not None
        }
        # Never rank task-aware runs beside task-agnostic ones: the summary names the protocol.
        summary["evaluation"] = record.protocol
        summary.update({f"undefined/{k}": why for k, why in record.undefined_metrics().items()})
        aware = record.metrics_task_aware()
        if aware is not None and record.protocol != "task_aware":
            summary.update({f"cl_task_aware/{k}": v for k, v in aware.items() if v is not None})
        summary.update({f"budget/{k}": v for k, v in record.budget.to_dict().items()})
        summary["status"] = record.status
        summary["n_experiences_done"] = record.n_done
        self.run.summary.update(summary)

    def _log_matrix(
        self,
        wandb: Any,
        matrix: list[list[float]],
        key: str,
        n_done: int,
        *,
        unit_range: bool = True,
    ) -> None:
        import matplotlib.pyplot as plt

        t = len(matrix[0])
        table = wandb.Table(
            columns=["after_experience"] + [f"exp{j}" for j in range(t)],
            data=[[i, *row] for i, row in enumerate(matrix)],
        )
        fig = heatmap_figure(matrix, key.replace("_", " "), unit_range=unit_range)
        curves = wandb.plot.line_series(
            xs=list(range(n_done)),
            ys=[[matrix[i][j] for i in range(n_done)] for j in range(t)],
            keys=[f"exp{j}" for j in range(t)],
            title=f"per-task {key}" if not unit_range else f"per-task accuracy ({key})",
            xname="after experience",
        )
        self.run.log(
            {
                f"eval/{key}": table,
                f"eval/{key}_heatmap": wandb.Image(fig),
                f"eval/{key}_curves": curves,
            }
        )
        plt.close(fig)
