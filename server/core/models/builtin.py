"""The built-in tiny models: every kind at toy size, with seeded random weights.

Real weights cannot be downloaded where cvgen is built and tested, so tests and the demo use
these. Each is written once, in the real on-disk format of its kind, into `$CVGEN_CACHE/models`
and then loaded through exactly the code that loads a user's models, so loading is exercised
too. Their pictures are noise: they prove plumbing and numerics (agreement with diffusers'
pipelines), never quality. Tiny models that work together share what they must (the tiny video
model has the tiny SD's VAE and text encoder; the tiny ControlNet is made from the tiny UNet).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from .entry import ModelEntry, cache_dir
from .kinds import KINDS


def builtin_folder(kind: str) -> Path:
    spec = KINDS[kind]
    return cache_dir() / "models" / f"{spec.builtin_name}-v{spec.tiny_version}"


def builtin_entries() -> dict[str, ModelEntry]:
    """Every kind's tiny model by name; folders are built on first load, not here (listing stays cheap)."""
    entries = {}
    for kind in KINDS.values():
        path, options = kind.tiny_entry(builtin_folder(kind.name))
        entries[kind.builtin_name] = ModelEntry(kind.builtin_name, kind.name, path, options=options, builtin=True)
    return entries


def ensure_builtin(kind: str) -> Path:
    """The saved tiny model of `kind`, built on first use (atomically: no half-built model is ever seen)."""
    folder = builtin_folder(kind)
    if folder.is_dir():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        KINDS[kind].build_tiny(staging, ensure_builtin)
        try:
            os.replace(staging, folder)
        except OSError:
            if not folder.is_dir():  # lost a race to another process building the same: fine
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder
