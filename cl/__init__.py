"""Continual-learning experiment platform: streams, strategies, metrics and sinks."""

__version__ = "0.1.0"
