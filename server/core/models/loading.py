"""Loading one entry: the machine's device and precision rules, the kind's file checks, then its loader."""

from __future__ import annotations

from typing import Any

from .builtin import ensure_builtin
from .devices import choose_device
from .entry import ModelEntry
from .kinds import KINDS


def load(entry: ModelEntry, device: str | None = None, dtype: str | None = None) -> Any:
    """The entry loaded on `device` (else the entry's, else the first GPU, else the CPU).

    Precision: the request's, else the entry's, else half on CUDA and float32 elsewhere. Any
    problem with the files is one `ModelNotFound` naming the path, raised before weights load.
    """
    torch_device, torch_dtype = choose_device(device or entry.device, dtype or entry.dtype)
    if entry.builtin:
        ensure_builtin(entry.kind)
    kind = KINDS[entry.kind]
    kind.check(entry)
    return kind.load(entry, torch_device, torch_dtype)


def model_bytes(model: Any) -> int:
    """Bytes a loaded model holds in its modules' parameters and buffers (each tensor once)."""
    seen: set[int] = set()
    total = 0
    for module in model.modules():
        for tensor in [*module.parameters(), *module.buffers()]:
            key = tensor.data_ptr()
            if key and key not in seen:
                seen.add(key)
                total += tensor.numel() * tensor.element_size()
    return total


def estimated_bytes(entry: ModelEntry, element_bytes: int) -> int:
    """Bytes the entry will take once loaded, from its safetensors headers (no weight is read).

    Modules also hold a few buffers their files do not (position ids): 1 % and 1 MiB cover them.
    """
    from .files import tensor_stats

    _, size = tensor_stats(KINDS[entry.kind].weight_files(entry), element_bytes)
    return int(size * 1.01) + 2**20
