"""Input frames of a job, read from frame-sequence paths on demand; an `image` role (one frame
for the whole shot, protocol 1.3) is one file, read for every frame."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable, Collection, Mapping, Optional, TypeVar

from cvgen.protocol.errors import ProtocolError
from cvgen.protocol.images import Image
from cvgen.protocol.jobs import frame_path
from cvgen.protocol.limits import Limits

from ..errors import InputError
from ..io.exr import check_exr_header, read_exr

_T = TypeVar("_T")

_PART = re.compile(r"^(.+\.(?:exr|sxr|mxr))#([^#/\\]+)$", re.IGNORECASE)
#: What `frame_path` takes for a frame number placeholder: a run of `#`, or `%04d` and the like.
_PLACEHOLDER = re.compile(r"#|%0?\d*d")


class FileShot:
    """Frames are read when an op asks for them, so a long shot never sits in memory at once."""

    def __init__(self, inputs: dict[str, str], frames: range, base: Path | None = None,
                 open_file: Optional[Callable[[str, str], Optional[int]]] = None,
                 limits: Optional[Limits] = None, image_roles: Collection[str] = ()) -> None:
        """`open_file(role, path)` checks a frame file by the server's path rules and opens it, or
        refuses it, before it is read; the frame is read from that descriptor (from `path` when it
        returns None). A frame over the server's `limits` on resolution is refused once read.
        `image_roles` (the op's `OpSpec.image_roles`) name one file each, read for every frame."""
        check_image_inputs(inputs, image_roles)
        self.frames = frames
        self._open_file = open_file
        self._limits = limits
        self._inputs: dict[str, str] = {}
        self._parts: dict[str, Optional[str]] = {}
        self._images = frozenset(role for role in image_roles if role in inputs)
        for role, template in inputs.items():
            path, self._parts[role] = split_part(template)
            self._inputs[role] = _resolve(path, base)

    def has(self, role: str) -> bool:
        return role in self._inputs

    def path(self, role: str, frame: int) -> str:
        if role not in self._inputs:
            raise InputError(f"the job has no {role!r} input")
        if role in self._images:
            return self._inputs[role]
        return frame_path(self._inputs[role], frame)

    def read(self, role: str, frame: int) -> Image:
        image = self._open(role, frame, read_exr)
        self._check_size(role, frame, image.width, image.height)
        return image

    def check_headers(self, check_channels: Optional[Callable[[dict[str, tuple[str, ...]]], None]] = None) -> None:
        """Fail before any work when a frame of the range has a header `read` would refuse (damaged,
        deep, over the server's limits), or channels `check_channels` (the op's rule, given each
        role's channel names for one frame) refuses, naming the first such file: otherwise a job
        renders up to that frame and stops there. Headers only, opened as `read` opens frames: on
        a local disk about 0.1 ms a frame, 1 ms where the server has input roots (the opened file
        is named through a temporary link), next to seconds of work per frame."""
        images: dict[str, tuple[str, ...]] = {}
        for role in self._images if self.frames else ():  # one file for every frame: its header once
            width, height, images[role] = self._open(role, self.frames[0], check_exr_header)
            self._check_size(role, self.frames[0], width, height)
        for frame in self.frames:
            channels = dict(images)
            for role in self._inputs:
                if role not in self._images:
                    width, height, channels[role] = self._open(role, frame, check_exr_header)
                    self._check_size(role, frame, width, height)
            if check_channels is not None:
                try:
                    check_channels(channels)
                except InputError as exc:
                    files = ", ".join(f"{role} {self.path(role, frame)}" for role in self._inputs)
                    raise InputError(f"frame {frame} ({files}): {exc}") from None

    def _check_size(self, role: str, frame: int, width: int, height: int) -> None:
        if self._limits is None:
            return
        try:
            self._limits.check_resolution(f"{role} frame {frame}", width, height)
        except ProtocolError as exc:
            raise ProtocolError(f"cannot read {self.path(role, frame)}: {exc}") from None

    def _open(self, role: str, frame: int, reader: Callable[[str, Optional[int], Optional[str]], _T]) -> _T:
        """`reader(path, fd, part)` on one frame, opened by the server's path rules where it has them."""
        path = self.path(role, frame)
        if not os.path.exists(path):
            if role in self._images:
                raise InputError(f"the {role} image is missing: {path} does not exist")
            raise InputError(f"{role} frame {frame} is missing: {path} does not exist")
        fd = self._open_file(role, path) if self._open_file is not None else None
        try:
            return reader(path, fd, self._parts[role])
        finally:
            if fd is not None:
                os.close(fd)

    def check_complete(self) -> None:
        """Fail before any work when a frame of the range is missing, naming the first few."""
        for role in self._inputs:
            if role in self._images:
                if not os.path.exists(self._inputs[role]):
                    raise InputError(f"the {role} image is missing: {self._inputs[role]} does not exist")
                continue
            missing = [f for f in self.frames if not os.path.exists(self.path(role, f))]
            if missing:
                shown = ", ".join(str(f) for f in missing[:5]) + (" ..." if len(missing) > 5 else "")
                raise InputError(
                    f"{len(missing)} {role} frame(s) missing ({shown}); first expected at {self.path(role, missing[0])}"
                )


def check_image_inputs(inputs: Mapping[str, str], image_roles: Collection[str]) -> None:
    """Refuse a frame-sequence path for an image role: it takes one file for the whole shot."""
    for role in image_roles:
        if role in inputs and _PLACEHOLDER.search(split_part(inputs[role])[0]):
            raise ProtocolError(f"input {role} is an image: it takes one file for the whole shot, not a frame "
                                f"sequence, but {inputs[role]!r} has a frame number placeholder")


def split_part(template: str) -> tuple[str, Optional[str]]:
    """An input path and the EXR part it names: `plate.####.exr#rgba_left` reads the part named
    (or the view) `rgba_left` of each frame (`read_exr`). Only after an EXR file name, so a `#`
    of the frame number placeholder is never taken for one."""
    match = _PART.match(template)
    return (match.group(1), match.group(2)) if match else (template, None)


def _resolve(template: str, base: Path | None) -> str:
    path = Path(os.path.expanduser(template))
    if base is not None and not path.is_absolute():
        path = base / path
    return str(path)
