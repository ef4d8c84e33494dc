"""Result, source, original and matte sequences (EXR or video) as the arrays the metrics read.

The metrics are defined on display-referred RGB in [0, 1], as the published protocols score
8-bit frames; the sequences are scene-linear, so each frame goes through OpenColorIO from its
colour space to sRGB-encoded Rec.709 (the sRGB inverse EOTF, no tone mapping; values above 1
clip, as they would on an 8-bit file). Flicker is measured in stops, which only mean something
on scene-linear light, so the linear Rec.709 luminance is kept beside the display RGB.

A video has no frame numbers: its frames are taken in decoding order onto the frames evaluated
(its first frame is the first frame of the range), so a video result lines up with an EXR
source whatever first frame that was imported with.
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cvgen.protocol.errors import ProtocolError
from cvgen.protocol.images import Image
from cvgen.protocol.jobs import frame_path

from ..errors import InputError
from ..io.color import ColorTransform, check_colorspace
from ..io.exr import read_exr
from ..io.video import VIDEO_COLORSPACE, read_video

DISPLAY_COLORSPACE = "sRGB Encoded Rec.709 (sRGB)"
DISPLAY = "sRGB display (OpenColorIO 'sRGB Encoded Rec.709 (sRGB)', no tone mapping), clipped to [0, 1]"
LUMINANCE_COLORSPACE = "Linear Rec.709 (sRGB)"
#: Rec.709 / sRGB luminance weights (ITU-R BT.709) for linear Rec.709 RGB.
REC709_LUMA = np.array([0.2126, 0.7152, 0.0722], np.float32)
#: Frames numbered this way when no EXR sequence says otherwise (Nuke and Blender number a movie from 1).
FIRST_VIDEO_FRAME = 1

_PLACEHOLDER = re.compile(r"#+|%0?\d*d")


@dataclass
class Sequence:
    """Frames of one sequence, in the spaces the metrics need."""

    path: str
    frames: list[int]
    display: np.ndarray      # (N, H, W, 3) float32 display-referred RGB in [0, 1]
    luminance: np.ndarray    # (N, H, W) float32 scene-linear Rec.709 luminance


def is_frame_sequence(path: str | os.PathLike[str]) -> bool:
    """A path with a #### or %04d placeholder is an EXR sequence; anything else is a video file."""
    return _PLACEHOLDER.search(os.fspath(path)) is not None


def discover_frames(path: str | os.PathLike[str]) -> list[int]:
    """The frame numbers of an EXR sequence on disk (or of a video, numbered from FIRST_VIDEO_FRAME)."""
    shown = os.fspath(path)
    if not is_frame_sequence(shown):
        return list(range(FIRST_VIDEO_FRAME, FIRST_VIDEO_FRAME + _video_length(shown)))
    match = _PLACEHOLDER.search(shown)
    assert match is not None
    head, tail = shown[: match.start()], shown[match.end():]
    pattern = re.compile(re.escape(os.path.basename(head)) + r"(-?\d+)" + re.escape(tail) + "$")
    found = sorted({int(m.group(1)) for name in glob.glob(glob.escape(head) + "*" + glob.escape(tail))
                    if (m := pattern.match(os.path.basename(name)))})
    if not found:
        raise InputError(f"no frames of {shown} found: no file matches {Path(head).name}<frame>{tail}")
    return found


def read_sequence(path: str | os.PathLike[str], frames: list[int], colorspace: str,
                  role: str = "result") -> Sequence:
    """The frames of `path` as display RGB and linear luminance; `role` names it in messages."""
    colorspace = check_colorspace(colorspace)
    linear = _read_linear(os.fspath(path), frames, colorspace, role)
    to_display = ColorTransform(colorspace, DISPLAY_COLORSPACE)
    to_rec709 = ColorTransform(colorspace, LUMINANCE_COLORSPACE)
    display = np.stack([np.nan_to_num(np.clip(to_display.apply(f), 0.0, 1.0), nan=0.0) for f in linear])
    luminance = np.stack([np.nan_to_num(to_rec709.apply(f) @ REC709_LUMA, nan=0.0) for f in linear])
    return Sequence(os.fspath(path), list(frames), display.astype(np.float32), luminance.astype(np.float32))


def read_matte(path: str | os.PathLike[str], frames: list[int], shape: tuple[int, int]) -> np.ndarray:
    """(N, H, W) float32 alpha in [0, 1]: an EXR's A channel (else Y, else its first channel), or a
    video's red channel as decoded; frames must be `shape` (height, width)."""
    shown = os.fspath(path)
    if is_frame_sequence(shown):
        planes = [_matte_plane(_read_exr_frame(shown, frame, "matte")) for frame in frames]
    else:
        planes = [image.channel("R") for image in _read_video_frames(shown, frames, VIDEO_COLORSPACE, "matte")]
    for frame, plane in zip(frames, planes):
        _check_shape(plane.shape, shape, shown, frame, "matte")
    return np.clip(np.nan_to_num(np.stack(planes).astype(np.float32), nan=0.0), 0.0, 1.0)


def check_same_shape(sequence: Sequence, shape: tuple[int, int], role: str) -> None:
    """Every sequence of one evaluation has the result's frame size; compare them pixel for pixel."""
    _check_shape(sequence.display.shape[1:3], shape, sequence.path, sequence.frames[0], role)


def _read_linear(path: str, frames: list[int], colorspace: str, role: str) -> list[np.ndarray]:
    if is_frame_sequence(path):
        images = [_read_exr_frame(path, frame, role) for frame in frames]
        for frame, image in zip(frames, images):
            if not image.has("R", "G", "B"):
                raise InputError(f"{role} frame {frame} ({frame_path(path, frame)}) has no R, G and B channels "
                                 f"(it has {', '.join(image.channels)})")
        rgb = [image.stack(("R", "G", "B")) for image in images]
    else:
        rgb = [image.stack(("R", "G", "B")) for image in _read_video_frames(path, frames, colorspace, role)]
    for frame, plane in zip(frames, rgb):
        _check_shape(plane.shape[:2], rgb[0].shape[:2], path, frame, role)
    return rgb


def _read_exr_frame(path: str, frame: int, role: str) -> Image:
    try:
        file = frame_path(path, frame)
    except ProtocolError as exc:
        raise InputError(f"{role} {path}: {exc}") from None
    if not os.path.isfile(file):
        raise InputError(f"{role} frame {frame} is missing: no file {file}")
    return read_exr(file)


def _read_video_frames(path: str, frames: list[int], colorspace: str, role: str) -> list[Image]:
    images = list(read_video(path, colorspace, count=len(frames)))
    if len(images) < len(frames):
        raise InputError(f"{role} video {path} has {len(images)} frames; frames {frames[0]}-{frames[-1]} need "
                         f"{len(frames)} (a video's first frame is the first frame evaluated)")
    return images


def _video_length(path: str) -> int:
    return sum(1 for _ in read_video(path, VIDEO_COLORSPACE))


def _matte_plane(image: Image) -> np.ndarray:
    for name in ("A", "Y"):
        if image.has(name):
            return image.channel(name).astype(np.float32)
    return image.channel(image.channels[0]).astype(np.float32)


def _check_shape(found: tuple[int, ...], expected: tuple[int, ...], path: str, frame: int, role: str) -> None:
    if tuple(found) != tuple(expected):
        raise InputError(f"{role} frame {frame} of {path} is {found[1]}x{found[0]} pixels; the result's frames are "
                         f"{expected[1]}x{expected[0]}: every sequence must have the same size")
