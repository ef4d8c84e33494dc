"""What every kind does with files: look for what must be there, refuse pickles, read sizes, fingerprint.

Weights load from safetensors only: a pickle (`.bin`, `.ckpt`, `.pt`, `.pth`) can run code when
loaded, and a models file is often written from a download. Sizes and parameter counts come from
the safetensors headers (a few KiB read per file), so listing models and planning memory never
loads a weight.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Iterable

PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")
#: Bytes per element of the safetensors dtypes; floating ones are cast to the load precision.
_ELEMENT_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
                  "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
_FLOATS = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}
#: Files that define a model (configs, weights, tokenizer and processor files), not READMEs or images.
DEFINING_SUFFIXES = (".json", ".safetensors", ".txt", ".model")


def missing(folder: Path, needed: Iterable[str]) -> list[str]:
    """The relative paths of `needed` (files, or folders when they end in "/") absent from `folder`."""
    gone = []
    for name in needed:
        target = folder / name
        if not (target.is_dir() if name.endswith("/") else target.is_file()):
            gone.append(name)
    return gone


def pickle_only(folder: Path) -> bool:
    """Whether a folder holds weights only as pickles: the one case worth a sentence of its own."""
    if not folder.is_dir():
        return False
    found = [p.suffix for p in folder.rglob("*") if p.is_file()]
    return any(s in PICKLE_SUFFIXES for s in found) and ".safetensors" not in found


def safetensors_header(file: Path) -> dict[str, dict]:
    """The tensor table of a safetensors file (name -> dtype, shape, offsets), without its data."""
    with file.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        if length > 100 * 2**20:
            raise ValueError(f"{file} has a {length}-byte header: not a safetensors file")
        header = json.loads(handle.read(length))
    header.pop("__metadata__", None)
    return header


def tensor_stats(files: Iterable[Path], element_bytes: int) -> tuple[int, int]:
    """(parameter count, bytes once loaded with floating tensors at `element_bytes` per element)."""
    count = size = 0
    for file in files:
        for tensor in safetensors_header(file).values():
            numel = 1
            for side in tensor["shape"]:
                numel *= side
            count += numel
            dtype = tensor["dtype"]
            size += numel * (element_bytes if dtype in _FLOATS else _ELEMENT_BYTES.get(dtype, 8))
    return count, size


def read_config(path: Path) -> dict:
    """A config.json as written ({} when absent or unreadable: the caller says what it needed)."""
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def weight_files(path: Path) -> list[Path]:
    """The safetensors files of a model: the file itself, or every one in its folder.

    Published folders often hold a precision variant beside the weights (`x.fp16.safetensors`
    next to `x.safetensors`); only one of the two loads, so the variant is not counted.
    """
    if path.is_file():
        return [path] if path.suffix == ".safetensors" else []
    found = sorted(p for p in path.rglob("*.safetensors") if p.is_file())
    present = set(found)
    return [p for p in found if not (len(p.suffixes) > 1 and p.with_name(p.name.split(".")[0] + ".safetensors")
                                     in present and p.name.count(".") == 2)]


def folder_files(folder: Path, prefix: str = "") -> dict[str, Path]:
    """The files that define a model, by their path inside its folder: where it sits does not change it."""
    if folder.is_file():
        return {prefix + folder.name: folder}
    return {prefix + file.relative_to(folder).as_posix(): file
            for file in sorted(folder.rglob("*")) if file.is_file() and file.suffix in DEFINING_SUFFIXES}


def fingerprint(files: dict[str, Path], extra: str = "") -> str:
    """A short, stable id of the weights for cache keys: names, sizes and mtimes (hashing gigabytes is too slow).

    `extra` carries settings that change what the weights mean (an SD entry's prediction type).
    """
    digest = hashlib.sha256(f"{extra}\n".encode())
    for label, file in sorted(files.items()):
        stat = file.stat()
        digest.update(f"{label}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]
