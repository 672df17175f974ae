"""Naive fine-tuning: train on each experience in turn with no protection against forgetting.

The lower bound of continual learning (e.g. Lopez-Paz & Ranzato, "Gradient Episodic Memory
for Continual Learning", NeurIPS 2017, "single" baseline).
"""

from __future__ import annotations

from dataclasses import dataclass

from cl.strategy import Strategy, StrategyConfig, register_strategy


@dataclass
class NaiveConfig(StrategyConfig):
    """Naive fine-tuning has no hyperparameters of its own."""

    name: str = "naive"


@register_strategy("naive")
class Naive(Strategy[NaiveConfig]):
    """Sequential fine-tuning: the base loop with no extra hooks."""

    config_cls = NaiveConfig
    modalities = ("vision", "text", "text2text")
    packed_rows = True
