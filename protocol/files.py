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
def atomic_output(path: str | os.PathLike[str], suffix: str, dir_fd: int | None = None) -> Iterator[str]:
    """A temp path next to `path` to write to; renamed onto `path` only if the block succeeds.

    The temp name starts with a dot and ends in `.tmp<suffix>` (the suffix lets writers pick
    the format by extension), so listings of finished frames skip it; on any failure it is
    removed and the destination keeps whatever it held before.

    `dir_fd`, an open folder (Linux only: the server's checked output folder), is where the
    file named `path.name` goes whatever `path`'s folder leads to by now: see `_atomic_at`.
    """
    if dir_fd is not None:
        with _atomic_at(dir_fd, Path(path), suffix) as opened:
            yield opened
        return
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


@contextmanager
def _atomic_at(dir_fd: int, dest: Path, suffix: str) -> Iterator[str]:
    """The temp file is created (exclusively, never through a symlink) in the open folder, and the
    name handed out is `/proc/self/fd/N` of that file: whatever happens to the folder's path or to
    the temp file's name meanwhile, the writer writes this file, and the rename stays in this folder."""
    tmp = f".{dest.name}.{secrets.token_hex(4)}.tmp{suffix}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666, dir_fd=dir_fd)
    try:
        yield f"/proc/self/fd/{fd}"
        try:
            os.replace(tmp, dest.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot write {dest}: {exc.strerror}") from None
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
        raise
    finally:
        os.close(fd)
