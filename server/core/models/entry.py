"""A configured model: a name, its kind and where its files are; nothing is loaded yet."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping


def cache_dir() -> Path:
    """Where cvgen keeps files it builds itself (the tiny models): `$CVGEN_CACHE` or ~/.cache/cvgen."""
    return Path(os.environ.get("CVGEN_CACHE") or Path.home() / ".cache" / "cvgen").expanduser()


@dataclass(frozen=True, eq=True)
class ModelEntry:
    """One entry of the models file (or a built-in): checked for shape when read, for files when loaded.

    `options` holds the kind's own keys (an SD checkpoint's `config`, a LoRA's `applies_to`, ...),
    with paths already resolved against the models file's folder.
    """

    name: str
    kind: str
    path: Path
    device: str | None = None
    dtype: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    builtin: bool = False

    def option(self, key: str) -> Any:
        return self.options.get(key)

    def describe(self) -> dict[str, Any]:
        """A plain, JSON-able summary for `hello` and `cvgen models list`."""
        return {
            "name": self.name,
            "kind": self.kind,
            "path": str(self.path),
            "device": self.device,
            "dtype": self.dtype,
            "builtin": self.builtin,
            **{key: str(value) if isinstance(value, Path) else value for key, value in self.options.items()},
        }
