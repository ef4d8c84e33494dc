"""Video import through PyAV: reference footage and phone clips become scene-linear frames.

Ops work on scene-linear frames like those of an EXR sequence, so decoded video, which is
display-referred, is treated as sRGB-encoded Rec.709 and converted to the job's working
colour space. Frames come one at a time: a clip of a few thousand frames never sits in memory.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from fractions import Fraction
from typing import Any

import av
import numpy as np

from cvgen.protocol.images import Image

from ..errors import InputError
from .color import ColorTransform

#: How decoded video is interpreted: display-referred sRGB, as players show it.
VIDEO_COLORSPACE = "sRGB Encoded Rec.709 (sRGB)"

CHANNELS = ("R", "G", "B", "A")


def read_video(
    path: str | os.PathLike[str],
    colorspace: str = "Linear Rec.709 (sRGB)",
    first: int = 0,
    count: int | None = None,
) -> Iterator[Image]:
    """Frames of the first video stream as float32 RGBA Images (A = 1) in `colorspace`.

    `first` skips that many frames from the start, `count` limits how many come back. The
    file is opened before this returns, so a missing or unreadable file raises `InputError`
    here rather than at the first frame.
    """
    if first < 0 or (count is not None and count < 0):
        raise ValueError(f"first and count must not be negative (got first={first}, count={count})")
    transform = ColorTransform(VIDEO_COLORSPACE, colorspace)
    container = _open(path)
    return _frames(container, os.fspath(path), transform, first, count)


def video_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Frame count (None where the container does not say), width, height and frame rate,
    read from the header without decoding, so a host can size a frame range up front."""
    with _open(path) as container:
        stream = container.streams.video[0]
        return {
            "frames": stream.frames or None,
            "width": stream.codec_context.width,
            "height": stream.codec_context.height,
            "fps": float(stream.average_rate) if stream.average_rate else None,
        }


def _open(path: str | os.PathLike[str]) -> av.container.InputContainer:
    shown = os.fspath(path)
    if not os.path.exists(shown):
        raise InputError(f"cannot read video {shown}: no such file")
    if os.path.isdir(shown):
        raise InputError(f"cannot read video {shown}: it is a folder, not a video file")
    try:
        container = av.open(shown, mode="r")
    except (av.FFmpegError, UnicodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise InputError(
            f"cannot read video {shown}: FFmpeg cannot open it; it is damaged or not a video ({reason})"
        ) from None
    if not container.streams.video:
        container.close()
        raise InputError(f"cannot read video {shown}: it has no video stream")
    if _is_still_image(container):
        kind = container.streams.video[0].codec_context.name.upper()
        container.close()
        raise InputError(
            f"cannot import {shown}: it is an image ({kind}), not a video; import converts video files (.mp4, .mov)"
            " to scene-linear EXR sequences, and EXR sequences need no import: give the sequence to the job"
            " as it is (other image sequences: convert them to EXR in your compositor)"
        )
    return container


def _is_still_image(container: av.container.InputContainer) -> bool:
    """FFmpeg opens single images (EXR, PNG, DPX, ...) as one-frame videos; decoding an EXR
    that way clips it to 1 and treats its linear values as sRGB, so images are refused."""
    name = container.format.name
    return name in ("image2", "image2pipe") or name.endswith("_pipe")


def _frames(
    container: av.container.InputContainer, shown: str, transform: ColorTransform, first: int, count: int | None
) -> Iterator[Image]:
    stop = None if count is None else first + count
    with container:
        stream = container.streams.video[0]
        attributes = _attributes(stream)
        aspect = stream.sample_aspect_ratio
        pixel_aspect = float(aspect) if aspect else 1.0
        decoded = 0
        try:
            for index, frame in enumerate(container.decode(stream)):
                if stop is not None and index >= stop:
                    return
                decoded = index + 1
                if index < first:
                    continue
                # 16 bits per channel keeps 10-bit sources intact; the frame's own range tag
                # (full or limited) is honoured, untagged means limited as in every player.
                rgb = frame.to_ndarray(format="rgb48le", src_color_range=frame.color_range)
                linear = transform.apply(rgb.astype(np.float32) / 65535.0)
                alpha = np.ones(linear.shape[:2] + (1,), np.float32)
                yield Image(
                    np.concatenate([linear, alpha], axis=2), CHANNELS, pixel_aspect=pixel_aspect,
                    attributes=dict(attributes),
                )
        except av.FFmpegError as exc:
            reason = exc.strerror or exc
            raise InputError(f"cannot decode video {shown}: the file is damaged or truncated ({reason})") from None
        expected = min(stream.frames, stop) if stop is not None else stream.frames
        if decoded < expected:
            raise InputError(
                f"cannot decode video {shown}: it ended after {decoded} frames but its header says"
                f" {stream.frames}; the file is probably truncated"
            )


def _attributes(stream: av.video.stream.VideoStream) -> dict[str, Any]:
    """The frame rate as the EXR `framesPerSecond` attribute, so written frames carry it."""
    rate = stream.average_rate
    if not rate:
        return {}
    rate = Fraction(rate)
    return {"FramesPerSecond": [rate.numerator, rate.denominator]}
