"""Which files a strip shows on which frame, and whether the server can read them as they are.

The server reads EXR frame sequences by path, numbered like the job's frames, which are the
timeline's. An image strip of EXRs whose file numbers are the frames they sit on is sent as a
path; anything else (movies, PNGs, a sequence that was slid along the timeline, a strip with
modifiers) is rendered through Blender's sequencer to EXR first, which gives the server what the
artist sees. Results come back as an image strip on the first free channel above the inputs.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from . import SetupError
from .protocol import protocol

_NUMBERED = re.compile(r"^(?P<head>.*?)(?P<digits>\d+)(?P<tail>\.[A-Za-z0-9]+)$")


@dataclass(frozen=True)
class StripInfo:
    """A sequencer strip as the planning needs it; `files` maps a timeline frame to the file shown.

    `span` is the frames the strip covers, `[start, end)` as Blender counts (end exclusive).
    """

    name: str
    kind: str
    channel: int
    span: tuple[int, int]
    files: dict[int, str] = field(default_factory=dict)
    has_modifiers: bool = False

    def covers(self, frames: range) -> bool:
        return self.span[0] <= frames.start and frames.stop <= self.span[1]


def frame_range(first: int, last: int) -> range:
    if last < first:
        raise SetupError(f"the frame range {first}-{last} is empty")
    return range(first, last + 1)


def strip_range(strip: StripInfo) -> range:
    """The frames a strip covers, as a job's inclusive range."""
    return frame_range(strip.span[0], strip.span[1] - 1)


def path_template(strip: StripInfo, frames: range) -> tuple[str | None, str]:
    """The strip's files as a `####` template the server can read directly, or None and why not.

    Raises when the strip does not cover the frames at all: no conversion can invent them.
    """
    if not strip.covers(frames):
        raise SetupError(
            f"strip {strip.name!r} covers frames {strip.span[0]}-{strip.span[1] - 1}, "
            f"not all of {frames.start}-{frames.stop - 1}"
        )
    if strip.kind != "IMAGE":
        return None, f"it is a {strip.kind.lower()} strip"
    if strip.has_modifiers:
        return None, "it has modifiers"
    templates = set()
    for frame in frames:
        path = strip.files.get(frame, "")
        match = _NUMBERED.match(os.path.basename(path))
        if not path.lower().endswith(".exr"):
            return None, f"frame {frame} shows {os.path.basename(path) or 'no file'}, not an EXR"
        if match is None or int(match["digits"]) != frame:
            return None, f"frame {frame} shows {os.path.basename(path)}, whose number is not {frame}"
        head = os.path.join(os.path.dirname(path), match["head"])
        templates.add(f"{head}{'#' * len(match['digits'])}{match['tail']}")
    if len(templates) != 1:
        return None, "its files do not follow one naming pattern"
    return templates.pop(), ""


def image_file(strip: StripInfo, frame: int) -> tuple[str | None, str]:
    """The EXR file `strip` shows on `frame`, which the server reads as an `image` role as it is, or
    None and why not (the frame is then rendered to EXR). Raises when the strip is not on that frame."""
    if not strip.span[0] <= frame < strip.span[1]:
        raise SetupError(f"strip {strip.name!r} covers frames {strip.span[0]}-{strip.span[1] - 1}, not frame {frame}")
    if strip.kind != "IMAGE":
        return None, f"it is a {strip.kind.lower()} strip"
    if strip.has_modifiers:
        return None, "it has modifiers"
    path = strip.files.get(frame, "")
    if not path.lower().endswith(".exr"):
        return None, f"frame {frame} shows {os.path.basename(path) or 'no file'}, not an EXR"
    return path, ""


#: cvgen's (OpenColorIO config) names of colour spaces whose Blender name differs.
BLENDER_COLORSPACES = {protocol.DEFAULT_COLORSPACE: "Linear Rec.709"}


def blender_colorspace(name: str) -> str:
    """Blender's name for the job's colour space (Blender 4.x calls linear sRGB "Linear Rec.709")."""
    return BLENDER_COLORSPACES.get(name, name)


def check_convertible(strip: str, why: str, colorspace: str) -> None:
    """Refuse a conversion into the wrong space: Blender writes rendered EXRs in its scene-linear
    space (Linear Rec.709), so a job in another space (ACEScg) needs its inputs as EXRs already."""
    if colorspace != protocol.DEFAULT_COLORSPACE:
        raise SetupError(
            f"strip {strip!r} would have to be rendered to EXR ({why}), but Blender writes those in "
            f"{protocol.DEFAULT_COLORSPACE}, not the job's {colorspace}: give it an {colorspace} EXR "
            "sequence numbered by frame"
        )


def result_channel(inputs: list[StripInfo], others: list[StripInfo], frames: range) -> int:
    """The first channel above every input strip that no other strip occupies over `frames`."""
    channel = max((s.channel for s in inputs), default=0) + 1
    busy = {s.channel for s in others if s.span[0] < frames.stop and frames.start < s.span[1]}
    while channel in busy:
        channel += 1
    return channel


def result_files(frames: dict[int, str]) -> tuple[str, list[str], int]:
    """Folder, file names in frame order and first frame of a job's results, as one image strip.

    The server's `done` lists every frame of the range; a gap or a second folder would make the
    strip show the wrong frames, so both are refused.
    """
    if not frames:
        raise SetupError("the server finished the job without any frames")
    numbers = sorted(frames)
    if numbers != list(range(numbers[0], numbers[-1] + 1)):
        raise SetupError(f"the server returned frames {numbers[0]}-{numbers[-1]} with gaps")
    folders = {os.path.dirname(frames[f]) for f in numbers}
    if len(folders) != 1:
        raise SetupError(f"the server wrote results to {len(folders)} folders; cvgen expects one")
    return folders.pop(), [os.path.basename(frames[f]) for f in numbers], numbers[0]
