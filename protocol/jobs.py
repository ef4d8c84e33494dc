"""The job description: what a host submits, what `cvgen render` runs, what a farm task carries.

A job file (JSON) is this dataclass's `to_dict()`; hosts write it with nothing but this module,
so the format lives here, beside the wire protocol, rather than in the server.
"""

from __future__ import annotations

import json
import numbers
import os
import re
from pathlib import Path
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import ProtocolError

DEFAULT_COLORSPACE = "Linear Rec.709 (sRGB)"

#: Frame numbers beyond this are a typo or garbage, not a shot (and would not fit file names).
MAX_FRAME = 10**8
#: Longest shot name, in UTF-8 bytes: a frame file's name adds
#: a frame number and extension, and its temporary name while written adds 18 more, all within
#: the 255 bytes file systems allow a name.
MAX_NAME_BYTES = 200
#: Longest output folder, leaving room under Linux's 4096-byte path limit for a frame file's name.
MAX_FOLDER_BYTES = 3800
_NAME_MAX = 255
_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_HASHES = re.compile(r"#+")
_PRINTF = re.compile(r"%0?(\d*)d")


def frame_path(template: str, frame: int) -> str:
    """Expand a frame-sequence path: `plate.####.exr` and `plate.%04d.exr` both give `plate.1001.exr`."""
    match = _PRINTF.search(template)
    if match:
        if int(match.group(1) or 1) > 32:
            raise ProtocolError(f"path {template!r} asks for a frame number over 32 digits wide")
        return _PRINTF.sub(lambda m: f"{frame:0{int(m.group(1) or 1)}d}", template, count=1)
    if _HASHES.search(template):
        return _HASHES.sub(lambda m: f"{frame:0{len(m.group(0))}d}", template, count=1)
    raise ProtocolError(f"path {template!r} has no frame number placeholder (#### or %04d)")


def check_folder_path(path: Any, what: str) -> str:
    """A folder a job writes into: each name in it, and the whole path with a frame file's name
    added, must fit what file systems hold (255 bytes a name, 4096 a path)."""
    if not isinstance(path, str):
        raise ProtocolError(f"{what} must be a folder path, got {path!r}")
    encoded = path.encode("utf-8", "surrogatepass")
    if len(encoded) > MAX_FOLDER_BYTES:
        raise ProtocolError(f"{what} folder {path[:60]!r}... is {len(encoded)} bytes long; at most {MAX_FOLDER_BYTES}")
    for part in re.split(r"[\\/]", path):
        if len(part.encode("utf-8", "surrogatepass")) > _NAME_MAX:
            raise ProtocolError(f"{what} folder {path[:60]!r}... has a name of {len(part.encode('utf-8', 'surrogatepass'))} "
                                f"bytes ({part[:20]!r}...); file systems allow {_NAME_MAX}")
    return path


def check_job_id(job_id: str) -> str:
    if not isinstance(job_id, str) or not _JOB_ID.match(job_id) or ".." in job_id:
        raise ProtocolError(
            f"job id {job_id!r} must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return job_id


@dataclass
class JobSpec:
    """One op over one frame range of one shot.

    `inputs` maps a role (`plate`, `fg`, `matte`, `depth`) to a frame-sequence path; a job
    submitted with inline pixels has them in the message instead, and the server fills these
    paths in once it has stored the frames. `frames` is inclusive, in the host's numbering.
    """

    op: str
    frames: tuple[int, int]
    inputs: dict[str, str] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    colorspace: str = DEFAULT_COLORSPACE
    seed: int = 0
    name: str = ""
    output: str | None = None
    job_id: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.op, str) or not self.op:
            raise ProtocolError(f"op must be a non-empty string, got {self.op!r}")
        try:
            first, last = self.frames
        except (TypeError, ValueError):
            raise ProtocolError(f"frames must be [first, last], got {self.frames!r}") from None
        if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in (first, last)):
            raise ProtocolError(f"frames must be two whole frame numbers [first, last], got {self.frames!r}")
        first, last = int(first), int(last)
        if last < first:
            raise ProtocolError(f"frame range {first}-{last} is empty: the last frame is before the first")
        if max(abs(first), abs(last)) > MAX_FRAME:
            raise ProtocolError(f"frame range {first}-{last} is outside the frame numbers cvgen handles "
                                f"(-{MAX_FRAME} to {MAX_FRAME})")
        self.frames = (first, last)
        if not isinstance(self.inputs, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.inputs.items()
        ):
            raise ProtocolError("inputs must map role names to frame-sequence paths")
        if not isinstance(self.params, dict) or not all(isinstance(k, str) for k in self.params):
            raise ProtocolError("params must be a mapping of parameter names to values")
        if not isinstance(self.colorspace, str) or not self.colorspace:
            raise ProtocolError(f"colorspace must be a colour space name, got {self.colorspace!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            raise ProtocolError(f"seed must be a whole number from 0 to 2**63 - 1, got {self.seed!r}")
        if not isinstance(self.name, str) or re.search(r"[\\/\x00-\x1f\x7f]", self.name):
            raise ProtocolError(f"shot name {self.name!r} must be plain text without slashes or control characters")
        if len(self.name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
            raise ProtocolError(f"shot name {self.name[:40]!r}... is {len(self.name.encode('utf-8', 'surrogatepass'))} "
                                f"bytes long; at most {MAX_NAME_BYTES} fit in its frame files' names")
        if self.output is not None:
            check_folder_path(self.output, "output")
        if self.job_id is not None:
            check_job_id(self.job_id)

    @property
    def frame_numbers(self) -> range:
        return range(self.frames[0], self.frames[1] + 1)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["frames"] = list(self.frames)
        return d

    @classmethod
    def from_dict(cls, data: Any) -> "JobSpec":
        """Build from decoded JSON or msgpack; unknown keys are ignored for forward compatibility."""
        if not isinstance(data, dict):
            raise ProtocolError(f"a job must be a mapping, got {type(data).__name__}")
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        missing = [k for k in ("op", "frames") if k not in known]
        if missing:
            raise ProtocolError(f"job is missing {', '.join(missing)}")
        if not isinstance(known["frames"], (list, tuple)) or len(known["frames"]) != 2:
            raise ProtocolError(f"frames must be [first, last], got {known['frames']!r}")
        return cls(**known)


def read_job_data(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The decoded JSON of a job file, with messages that name the file when it is missing or broken."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ProtocolError(f"job file {path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise ProtocolError(f"job file {path} is not readable JSON: {exc}") from None
    return data
