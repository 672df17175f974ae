"""The run record every sink reads, and the sink interface."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from cl import metrics as M
from cl.budget import Budget

# Extra matrices where a lower value is better (the others: higher).
LOWER_IS_BETTER = {"perplexity": "lower"}


@dataclass
class RunRecord:
    """Everything a run has measured so far; ``results.json`` is its serialisation."""

    name: str
    seed: int
    device: str
    started: str
    config: dict[str, Any]
    stream: dict[str, Any]
    scenario: str
    versions: dict[str, str]
    acc_matrix: list[list[float]] = field(default_factory=list)
    acc_matrix_task_aware: list[list[float]] | None = None
    baseline: list[float] = field(default_factory=list)
    baseline_task_aware: list[float] | None = None
    budget: Budget = field(default_factory=Budget)
    per_experience: list[dict[str, Any]] = field(default_factory=list)
    status: str = "partial"
    finished: str | None = None
    error: str | None = None
    wandb_id: str | None = None
    evaluation: str | None = None
    wandb_error: str | None = None
    world_size: int = 1
    backend: str | None = None
    # Extra per-task matrices by name (e.g. ``perplexity`` of text-to-text streams): rows after
    # each experience, like ``acc_matrix``, and the untrained model's row.
    matrices: dict[str, list[list[float]]] = field(default_factory=dict)
    matrix_baselines: dict[str, list[float]] = field(default_factory=dict)

    @property
    def n_done(self) -> int:
        return len(self.acc_matrix)

    @property
    def protocol(self) -> str:
        """``task_aware`` or ``task_agnostic``: how ``acc_matrix`` was measured (records from
        before the field existed: task_aware on task_il, else task_agnostic)."""
        return self.evaluation or M.evaluation_protocol(self.scenario, task_ids_at_test=False)

    def undefined_metrics(self) -> dict[str, str]:
        """Metrics that are null under this run's protocol -> the reason."""
        return M.undefined_metrics(self.scenario, self.protocol)

    def metrics(self) -> dict[str, float | None]:
        if not self.acc_matrix:
            return dict.fromkeys(M.METRICS)
        return M.all_metrics(self.acc_matrix, self.baseline, undefined=self.undefined_metrics())

    def metrics_task_aware(self) -> dict[str, float | None] | None:
        if not self.acc_matrix_task_aware or self.baseline_task_aware is None:
            return None
        return M.all_metrics(self.acc_matrix_task_aware, self.baseline_task_aware)

    def to_results(self) -> dict[str, Any]:
        return {
            "schema": 1,
            "evaluation": self.protocol,
            "run": {
                "name": self.name,
                "seed": self.seed,
                "started": self.started,
                "finished": self.finished,
                "device": self.device,
                "versions": self.versions,
                "status": self.status,
                "error": self.error,
                "wandb_id": self.wandb_id,
                "wandb_error": self.wandb_error,
                "world_size": self.world_size,
                "backend": self.backend,
            },
            "config": self.config,
            "stream": {**self.stream, "evaluation": self.protocol},
            "acc_matrix": self.acc_matrix,
            "acc_matrix_task_aware": self.acc_matrix_task_aware,
            "baseline_acc": self.baseline,
            "baseline_acc_task_aware": self.baseline_task_aware,
            "metrics": self.metrics(),
            "metrics_undefined": self.undefined_metrics(),
            "metrics_task_aware": self.metrics_task_aware(),
            "budget": self.budget.to_dict(),
            "per_experience": self.per_experience,
            "matrices": {
                name: {
                    "evaluation": self.protocol,
                    "better": LOWER_IS_BETTER.get(name, "higher"),
                    "matrix": m,
                    "baseline": self.matrix_baselines.get(name),
                }
                for name, m in self.matrices.items()
            },
        }

    def add_rows(self, rows: dict[str, list[float]], *, baseline: bool = False) -> None:
        """Append a row to each named extra matrix (or set its untrained baseline)."""
        for name, row in rows.items():
            if baseline:
                self.matrix_baselines[name] = row
            else:
                self.matrices.setdefault(name, []).append(row)

    def state(self) -> dict[str, Any]:
        """For checkpoints: everything needed to rebuild the record."""
        d = dict(self.__dict__)
        d["budget"] = dict(self.budget.__dict__)
        return d

    @classmethod
    def from_state(cls, d: dict[str, Any]) -> RunRecord:
        d = dict(d)
        d["budget"] = Budget(**d["budget"])
        return cls(**d)

    @classmethod
    def from_results(cls, d: dict[str, Any]) -> RunRecord:
        """Rebuild the record of a finished run from its ``results.json``."""
        run = d["run"]
        fields = Budget.__dataclass_fields__
        return cls(
            name=run["name"],
            seed=run["seed"],
            device=run["device"],
            started=run["started"],
            config=d["config"],
            stream=d["stream"],
            scenario=d["stream"].get("scenario"),
            versions=run.get("versions", {}),
            acc_matrix=d.get("acc_matrix") or [],
            acc_matrix_task_aware=d.get("acc_matrix_task_aware"),
            baseline=d.get("baseline_acc") or [],
            baseline_task_aware=d.get("baseline_acc_task_aware"),
            budget=Budget(**{k: v for k, v in d.get("budget", {}).items() if k in fields}),
            per_experience=d.get("per_experience", []),
            status=run["status"],
            finished=run.get("finished"),
            error=run.get("error"),
            wandb_id=run.get("wandb_id"),
            wandb_error=run.get("wandb_error"),
            world_size=run.get("world_size", 1),
            backend=run.get("backend"),
            matrices={k: v["matrix"] for k, v in (d.get("matrices") or {}).items()},
            matrix_baselines={
                k: v["baseline"]
                for k, v in (d.get("matrices") or {}).items()
                if v.get("baseline") is not None
            },
        )


class Sink:
    """Receives the run's events; every method is optional."""

    def start(self, record: RunRecord, *, resumed: bool) -> None:
        """The run (re)starts; ``record`` holds what earlier attempts finished."""

    def start_experience(self, index: int, n_steps: int) -> None:
        """Training on experience ``index`` begins (``n_steps`` minibatches expected)."""

    def step(self, step: int, batch_size: int, loss: Tensor) -> None:
        """One optimiser step."""

    def end_experience(self, record: RunRecord) -> None:
        """Experience done, its row evaluated; ``record.per_experience[-1]`` describes it."""

    def finish(self, record: RunRecord) -> None:
        """The run ends (``record.status`` is complete or partial)."""
