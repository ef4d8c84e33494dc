"""Input frames of a job, read from frame-sequence paths on demand."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional

from cvgen.protocol.images import Image
from cvgen.protocol.jobs import frame_path
from cvgen.protocol.limits import Limits

from ..errors import InputError
from ..io.exr import read_exr


class FileShot:
    """Frames are read when an op asks for them, so a long shot never sits in memory at once."""

    def __init__(self, inputs: dict[str, str], frames: range, base: Path | None = None,
                 open_file: Optional[Callable[[str, str], Optional[int]]] = None,
                 limits: Optional[Limits] = None) -> None:
        """`open_file(role, path)` checks a frame file by the server's path rules and opens it, or
        refuses it, before it is read; the frame is read from that descriptor (from `path` when it
        returns None). A frame over the server's `limits` on resolution is refused once read."""
        self.frames = frames
        self._open_file = open_file
        self._limits = limits
        self._inputs = {role: _resolve(path, base) for role, path in inputs.items()}

    def has(self, role: str) -> bool:
        return role in self._inputs

    def path(self, role: str, frame: int) -> str:
        if role not in self._inputs:
            raise InputError(f"the job has no {role!r} input")
        return frame_path(self._inputs[role], frame)

    def read(self, role: str, frame: int) -> Image:
        path = self.path(role, frame)
        if not os.path.exists(path):
            raise InputError(f"{role} frame {frame} is missing: {path} does not exist")
        fd = self._open_file(role, path) if self._open_file is not None else None
        try:
            image = read_exr(path, fd)
        finally:
            if fd is not None:
                os.close(fd)
        if self._limits is not None:
            self._limits.check_resolution(f"{role} frame {frame}", image.width, image.height)
        return image

    def check_complete(self) -> None:
        """Fail before any work when a frame of the range is missing, naming the first few."""
        for role in self._inputs:
            missing = [f for f in self.frames if not os.path.exists(self.path(role, f))]
            if missing:
                shown = ", ".join(str(f) for f in missing[:5]) + (" ..." if len(missing) > 5 else "")
                raise InputError(
                    f"{len(missing)} {role} frame(s) missing ({shown}); first expected at {self.path(role, missing[0])}"
                )


def _resolve(template: str, base: Path | None) -> str:
    path = Path(os.path.expanduser(template))
    if base is not None and not path.is_absolute():
        path = base / path
    return str(path)
