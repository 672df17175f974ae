"""Sinks that record a run: files (always), console and Weights & Biases."""

from cl.logging.base import RunRecord, Sink

__all__ = ["RunRecord", "Sink"]
