"""Atomic file output: a reader (a host, a restarted job) sees the old file or the new one, never half.

Every file cvgen writes (frames, previews, job state, cached latents, job files, frames a host
writes itself) goes through here; it lives in the protocol package, stdlib only, so the hosts
share it with the server.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_output(path: str | os.PathLike[str], suffix: str) -> Iterator[str]:
    """A temp path next to `path` to write to; renamed onto `path` only if the block succeeds.

    The temp name starts with a dot and ends in `.tmp<suffix>` (the suffix lets writers pick
    the format by extension), so listings of finished frames skip it; on any failure it is
    removed and the destination keeps whatever it held before.
    """
    dest = Path(path)
    if not dest.parent.is_dir():
        raise FileNotFoundError(f"cannot write {dest}: the folder {dest.parent} does not exist")
    tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.tmp{suffix}")
    try:
        yield str(tmp)
        try:
            os.replace(tmp, dest)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot write {dest}: {exc.strerror}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
