"""Report definitions (``reports/*.yaml``): which runs, which panels, where to write.

Checked against the schema below when loaded, so a misspelt key or panel is an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cl.errors import ConfigError
from cl.reports.figures import FIGURES

# Every panel a report can hold, in the order they appear.
PANELS = ("metrics_table", *FIGURES, "failed_runs", "provenance")


@dataclass
class WandbReportSettings:
    """Where W&B runs are read from and the W&B Report is pushed to.

    Attributes:
        project: W&B project (null: no W&B).
        entity: W&B entity (null: the API key's default).
        filters: MongoDB-style run filters for the W&B API (e.g. ``{"group": ...}``).
        pull: Also read the project's runs when online.
        push: ``auto`` (push when online and wandb-workspaces is installed), ``true`` or
            ``false``.
    """

    project: str | None = None
    entity: str | None = None
    filters: dict[str, Any] = field(default_factory=dict)
    pull: bool = False
    push: str = "auto"


@dataclass
class ReportDefinition:
    """What a report shows.

    Attributes:
        title: Report title.
        description: A paragraph under the title.
        runs: Run directories, sweep directories, results.json files or glob patterns.
        streams: Keep only these streams (null: all).
        strategies: Keep only these strategies (null: all).
        panels: Panels to show, from ``PANELS``.
        output: Folder the report is written to.
        wandb: W&B settings.
    """

    title: str = "Continual-learning report"
    description: str = ""
    runs: list[str] = field(default_factory=lambda: ["outputs", "multirun"])
    streams: list[str] | None = None
    strategies: list[str] | None = None
    panels: list[str] = field(default_factory=lambda: list(PANELS))
    output: str = "report"
    wandb: WandbReportSettings = field(default_factory=WandbReportSettings)

    def validate(self) -> None:
        unknown = [p for p in self.panels if p not in PANELS]
        if unknown:
            raise ConfigError(f"unknown report panel(s) {unknown}; choose from {list(PANELS)}")
        self.wandb.push = str(self.wandb.push).lower()  # YAML true arrives as "True"
        if self.wandb.push not in ("auto", "true", "false"):
            raise ConfigError(f"wandb.push must be auto, true or false, got {self.wandb.push!r}")


def load_definition(path: str | Path) -> ReportDefinition:
    """Read and check a report definition file."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"report definition {p} not found")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(ReportDefinition), OmegaConf.load(p))
        defn = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise ConfigError(f"invalid report definition {p}: {str(e).splitlines()[0]}") from None
    assert isinstance(defn, ReportDefinition)
    defn.validate()
    return defn
