"""A CLIP tokenizer that needs no download, for the built-in tiny models.

CLIP's byte-level BPE with no merges: every byte gets a symbol, so any text tokenizes (one token
per character), and the files are the real `vocab.json`/`merges.txt` a CLIP tokenizer saves.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any


def _byte_symbols() -> list[str]:
    """CLIP's byte-to-symbol table: every byte gets a printable symbol, so any text tokenizes."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def tiny_clip_tokenizer(max_length: int = 77) -> Any:
    """A `CLIPTokenizer` of 514 tokens (start, end, and every byte as a word piece and a word end)."""
    from transformers import CLIPTokenizer

    symbols = _byte_symbols()
    vocab: dict[str, int] = {}
    for token in ["<|startoftext|>", "<|endoftext|>", *symbols, *(s + "</w>" for s in symbols)]:
        vocab.setdefault(token, len(vocab))
    raw = Path(tempfile.mkdtemp(prefix="cvgen-tokenizer-"))
    try:
        (raw / "vocab.json").write_text(json.dumps(vocab))
        (raw / "merges.txt").write_text("#version: 0.2\n")
        return CLIPTokenizer(str(raw / "vocab.json"), str(raw / "merges.txt"), model_max_length=max_length)
    finally:
        shutil.rmtree(raw)
