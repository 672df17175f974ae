"""A bank of named peft adapters (LoRA or MoRA) on one frozen backbone.

The bank adds, activates, deletes, exports and merges adapters; it knows nothing of experiences,
heads' training or routing, so any adapter-based strategy can stand on it. peft edits module
trees in place: the bank hands it a structural copy of the backbone that shares the backbone's
(frozen) tensors, so the backbone itself never changes and no second copy of its weights exists.

Exported adapters are standard peft adapter directories plus ``partition.json``, which names the
partition and carries a fingerprint of the adapter's tensors (:func:`fingerprint`), so that a
later deletion can find and remove every export of exactly that adapter.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

PARTITION_FILE = "partition.json"


def linear_names(module: nn.Module) -> list[str]:
    """Names of every ``nn.Linear`` inside ``module`` (the default adapter targets)."""
    return sorted(n for n, m in module.named_modules() if isinstance(m, nn.Linear))


def adapter_config(
    adapter_type: str, r: int, alpha: int, dropout: float, mora_type: int, targets: list[str]
) -> Any:
    """A peft ``LoraConfig`` for a LoRA or (with the MoRA registration) a MoRA adapter."""
    from peft import LoraConfig

    from cl.models.mora import mora_config

    if adapter_type == "mora":
        return mora_config(r, targets, mora_type, lora_dropout=dropout)
    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets)


def adapter_keys(keys: Any, name: str) -> list[str]:
    """The keys among ``keys`` (state-dict or parameter names) that belong to adapter ``name``."""
    mark = f".{name}."
    return [k for k in keys if mark in k]


def fingerprint(state: Mapping[str, Tensor], name: str) -> str:
    """SHA-256 of adapter ``name``'s tensors in ``state`` (a peft state dict or a subset)."""
    h = hashlib.sha256()
    for k in sorted(adapter_keys(state, name)):
        t = state[k].detach().to("cpu").contiguous()
        h.update(k.encode())
        h.update(str(t.dtype).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class AdapterBank(nn.Module):
    """Named peft adapters on a frozen backbone; at most the activated ones change its output.

    A module, so that the adapters' parameters are reachable like any other (optimiser state,
    ``named_parameters``); the backbone it adapts is given with the first adapter.
    """

    def __init__(self) -> None:
        super().__init__()
        self.peft: Any = None

    @property
    def names(self) -> list[str]:
        return [] if self.peft is None else list(self.peft.peft_config)

    def add(self, name: str, config: Any, backbone: nn.Module, device: torch.device) -> None:
        """Create adapter ``name`` on ``backbone`` from a peft config (inactive until
        :meth:`activate`); every adapter of the bank must be given the same backbone."""
        if self.peft is None:
            bb = backbone
            shared = {id(t): t for t in [*bb.parameters(), *bb.buffers()]}
            shell = copy.deepcopy(bb, memo=shared)
            from peft import get_peft_model  # heavy: imported only when used

            self.peft = get_peft_model(shell, config, adapter_name=name)
        else:
            self.peft.add_adapter(name, config)
        self.peft.to(device)

    def activate(self, names: list[str], *, train_dropout: str | None = None) -> None:
        """Make ``names`` the active adapters (all frozen; empty: the plain backbone).

        The backbone always runs in eval mode (no dropout, fixed norm statistics); only
        ``train_dropout``'s adapter dropout, if given, runs in training mode.
        """
        self.peft.base_model.set_adapter(names, inference_mode=True)
        self.peft.eval()
        if train_dropout is not None:
            for mod_name, mod in self.peft.named_modules():
                if mod_name.endswith(f"lora_dropout.{train_dropout}"):
                    mod.train()

    def forward(self, x: Tensor) -> Tensor:
        return self.peft(x)

    def adapter_parameters(self, name: str) -> list[nn.Parameter]:
        """Adapter ``name``'s own parameters."""
        named = dict(self.peft.named_parameters())
        return [named[k] for k in adapter_keys(named, name)]

    def delete(self, name: str) -> None:
        """Remove adapter ``name``; the last one leaves the bank empty (the plain backbone)."""
        if name not in self.names:
            raise KeyError(f"no adapter {name!r}; have {sorted(self.names)}")
        if len(self.names) == 1:
            self.peft = None
        else:
            self.peft.delete_adapter(name)

    def adapter_state(self) -> dict[str, Tensor]:
        """The adapters' own tensors (the frozen base tensors are the backbone's)."""
        if self.peft is None:
            return {}
        sd = self.peft.state_dict()
        keys = {k for n in self.names for k in adapter_keys(sd, n)}
        return {k: v for k, v in sd.items() if k in keys}

    def load_adapter_state(self, state: dict[str, Tensor]) -> None:
        """Load :meth:`adapter_state` into adapters already added under the same names."""
        if set(state) != set(self.adapter_state()):
            raise ValueError("adapter state does not match the adapters being restored")
        if self.peft is not None:
            self.peft.load_state_dict(state, strict=False)

    def fingerprint(self, name: str) -> str:
        return fingerprint(self.adapter_state(), name)

    def export(self, name: str, head: nn.Module, path: str | Path, meta: dict[str, Any]) -> Path:
        """Save adapter ``name`` as a standard peft adapter directory ``path/name``.

        The directory holds peft's ``adapter_config.json`` and weights, ``mora.json`` for MoRA
        adapters, the classification head (``head.pt``) and ``partition.json`` (``meta``, the
        partition's name and the adapter's fingerprint).
        """
        from cl.models.mora import save_mora_metadata

        root = Path(path)
        self.peft.save_pretrained(str(root), selected_adapters=[name])
        out = root / name if name != "default" else root
        save_mora_metadata(out, self.peft.peft_config[name])
        torch.save(head.state_dict(), out / "head.pt")
        self._write_partition(out, name, meta)
        return out

    def merged(
        self,
        name: str,
        head: nn.Module,
        feature_dim: int,
        path: str | Path | None = None,
        meta: dict[str, Any] | None = None,
        *,
        wrap: Callable[[nn.Module], nn.Module] | None = None,
    ) -> nn.Module:
        """A plain model (backbone with adapter ``name`` merged in, then ``head``; or
        ``wrap(backbone)``, e.g. a language model with no head).

        Saved to ``path/model.pt`` as a state dict (and with ``save_pretrained`` for HF
        backbones) with ``partition.json`` when ``path`` is given. The bank is untouched: the
        merge runs on a copy.
        """
        from cl.models import CLModel

        work = copy.deepcopy(self.peft)
        work.base_model.set_adapter(name, inference_mode=True)
        backbone = work.merge_and_unload(adapter_names=[name])
        for p in backbone.parameters():
            p.requires_grad_(False)
        plain = (
            CLModel(backbone, copy.deepcopy(head), feature_dim) if wrap is None else wrap(backbone)
        )
        if path is not None:
            root = Path(path)
            root.mkdir(parents=True, exist_ok=True)
            torch.save(plain.state_dict(), root / "model.pt")
            # HF backbones (an HF LM, or the inner transformer of cl.models.hf) also get their
            # own format.
            inner: Any = backbone if wrap is not None else getattr(backbone, "model", None)
            if inner is not None and hasattr(inner, "save_pretrained"):
                inner.save_pretrained(str(root / "backbone"))
            self._write_partition(root, name, {**(meta or {}), "merged": True})
        return plain

    def _write_partition(self, out: Path, name: str, meta: dict[str, Any]) -> None:
        info = {**meta, "partition": name, "fingerprint": self.fingerprint(name)}
        (out / PARTITION_FILE).write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
