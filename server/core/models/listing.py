"""One line per model for `cvgen models list`: what it is and how big, read from headers, not weights."""

from __future__ import annotations

from typing import Any

from ...errors import ModelNotFound
from .builtin import ensure_builtin
from .entry import ModelEntry
from .files import tensor_stats
from .kinds import KINDS


def describe_entry(entry: ModelEntry) -> dict[str, Any]:
    """Kind, path, device, precision and parameter count; a model whose files fail their check says why."""
    kind = KINDS[entry.kind]
    row: dict[str, Any] = {**entry.describe(), "device": entry.device or "auto", "dtype": entry.dtype or "auto",
                           "problem": None}
    try:
        if entry.builtin:
            ensure_builtin(entry.kind)
        kind.check(entry)
        count, _ = tensor_stats(kind.weight_files(entry), 4)
        row["parameters"] = _count(count)
    except ModelNotFound as exc:
        row["parameters"] = "-"
        row["problem"] = str(exc)
    return row


def _count(count: int) -> str:
    if count >= 10**9:
        return f"{count / 1e9:.2f} B"
    if count >= 10**6:
        return f"{count / 1e6:.1f} M"
    return f"{count / 1e3:.1f} K"
