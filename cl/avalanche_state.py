"""Checkpointing and measuring the state of a wrapped Avalanche strategy (for the bridge).

The strategy's attributes are pickled as Avalanche's own checkpointing does (dill), with live
objects (the model, its tensors, the optimizer) named instead of copied; the ledger walks the
same attributes and counts tensors and buffered samples in real bytes.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

import torch
from torch import Tensor, nn

# Attributes of a trained Avalanche strategy that do not outlive a training call.
TRANSIENT = frozenset(
    {"model", "experience", "adapted_dataset", "dataloader", "mbatch", "mb_output", "loss"}
)


def dump_state(av: Any, refs: dict[str, Any]) -> bytes:
    """Pickle the Avalanche strategy's attributes, naming ``refs`` instead of copying them."""
    import dill

    by_id = {id(v): k for k, v in refs.items()}

    class Pickler(dill.Pickler):
        def persistent_id(self, obj: Any) -> str | None:
            return by_id.get(id(obj))

    buf = io.BytesIO()
    data = {k: v for k, v in vars(av).items() if k not in TRANSIENT}
    Pickler(buf).dump(data)
    return buf.getvalue()


def load_state(blob: bytes, refs: dict[str, Any]) -> dict[str, Any]:
    """The attributes pickled by :func:`dump_state`, with the named objects from ``refs``."""
    import dill

    class Unpickler(dill.Unpickler):
        def persistent_load(self, pid: str) -> Any:
            return refs[pid]

    with contextlib.redirect_stdout(io.StringIO()):  # Avalanche prints its device mapping
        out: dict[str, Any] = Unpickler(io.BytesIO(blob)).load()
    return out


def _sample_bytes(dataset: Any) -> int:
    """Bytes of one sample of ``dataset`` (input, label, task id, ...), as tensors."""
    if len(dataset) == 0:
        return 0
    parts = [torch.as_tensor(v) for v in dataset[0]]
    return sum(t.element_size() * t.nelement() for t in parts)


def tensor_bytes(obj: Any, seen: set[int], depth: int) -> int:
    """Bytes (numel x element size) of the tensors and buffered samples reachable from ``obj``.

    Args:
        obj: An object graph (the strategy's attributes).
        seen: Ids of objects not to count (the model's tensors); every object counted once.
        depth: How deep to follow attributes and containers.
    """
    from avalanche.training.storage_policy import ExemplarsBuffer

    if id(obj) in seen or depth < 0:
        return 0
    seen.add(id(obj))
    if isinstance(obj, ExemplarsBuffer):  # its samples once (group buffers and their
        # concatenation hold the same samples), plus its own tensors (sampling weights)
        inner = tensor_bytes(vars(obj), seen, depth - 1)
        return len(obj.buffer) * _sample_bytes(obj.buffer) + inner
    if isinstance(obj, torch.utils.data.Dataset):  # a buffer: a subset of a dataset
        return len(obj) * _sample_bytes(obj)  # type: ignore[arg-type]
    if isinstance(obj, Tensor):
        return obj.element_size() * obj.nelement()
    if isinstance(obj, nn.Module):
        return sum(tensor_bytes(t, seen, depth) for t in obj.state_dict().values())
    if isinstance(obj, dict):
        return sum(tensor_bytes(v, seen, depth - 1) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(tensor_bytes(v, seen, depth - 1) for v in obj)
    if hasattr(obj, "__dict__") and not isinstance(obj, type):
        return sum(tensor_bytes(v, seen, depth - 1) for v in vars(obj).values())
    return 0
