"""The layers of a composite and how a result goes back over the plate.

Every op that changes a foreground reads the same three layers (plate, straight foreground,
matte, all in the plate's data window) and puts its result back the same way: over the plate in
the plate's own scene-linear space, with the matte feathered inward only, so every pixel outside
the matte is the plate's, bit for bit, HDR values, NaN and Inf included (METHODS.md, "Background
replacement in linear light").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Collection, Mapping, Sequence

import numpy as np

from cvgen.protocol.images import Image

from ..errors import InputError
from .base import Role, Shot

#: Gaussian taps reach this many sigmas.
REACH = 3.0
#: Channels tried, in order, for the matte of a multi-channel `matte` input.
MATTE_CHANNELS = ("A", "Y", "R", "matte")
RGB = ("R", "G", "B")


#: The foreground and matte roles of ops that read `read_layers` (its rules, told to the artist).
FG_ROLE = Role("fg", "Foreground", "sequence", True, ("R", "G", "B", "A"),
               "The foreground, premultiplied by its alpha A when it has one; A is the matte when none is given")
MATTE_ROLE = Role("matte", "Matte", "sequence", False, ("A",),
                  "Where the op works: the first of A, Y, R or matte it has; the fg's alpha when not given")


@dataclass(frozen=True)
class Layers:
    """One frame's inputs in the plate's data window, at every `step`-th pixel (1: all of them).

    `fg` is straight RGB (not premultiplied), `matte` the coverage in [0, 1]; both on `grid`.
    """

    plate: Image
    step: int
    fg: np.ndarray
    matte: np.ndarray

    @property
    def grid(self) -> tuple[slice, slice]:
        return point_grid(self.step, self.plate.height, self.plate.width)

    def plate_rgb(self) -> np.ndarray:
        return np.stack([self.plate.channel(c)[self.grid] for c in RGB], axis=-1).astype(np.float32)


def read_layers(shot: Shot, frame: int, max_size: int | None = None) -> Layers:
    """Plate, straight foreground and matte of one frame, checked and placed in the plate's window.

    One convention for every op: an fg with an alpha is premultiplied by it (the EXR, Nuke and
    Blender convention), whether or not a matte is given, so it is always unpremultiplied (black
    where the alpha is 0); the matte input, when given, says where the op works, else the alpha
    does. Unpremultiplying only without a matte left a premultiplied fg darkened by its alpha.

    `max_size` keeps only every n-th pixel, at most `max_size` along the long side, before any
    per-pixel work: all the edge comparison needs. Point samples (rather than area averages) keep
    each pixel's own value, so the spread stays the image's and no plate sample mixes with pixels
    under the matte.
    """
    plate = shot.read("plate", frame)
    _require_rgb(plate.channels, "plate")
    if plate.pixels.dtype.kind != "f":
        raise InputError(
            f"cvgen composites scene-linear float frames (half or float), but plate frame {frame} is "
            f"{plate.pixels.dtype}"
        )
    step = max(1, math.ceil(max(plate.height, plate.width) / max_size)) if max_size else 1
    fg = shot.read("fg", frame).in_window(plate.data_window)
    _require_rgb(fg.channels, "fg")
    grid = point_grid(step, plate.height, plate.width)
    rgb = np.stack([fg.channel(c)[grid] for c in RGB], axis=-1).astype(np.float32)
    if fg.has("A"):
        alpha = fg.channel("A")[grid].astype(np.float32)
        covered = alpha > 0
        rgb = np.where(covered[..., None], rgb / np.where(covered, alpha, 1)[..., None], 0).astype(np.float32)
    if shot.has("matte"):
        matte = _matte_channel(shot.read("matte", frame).in_window(plate.data_window))[grid]
    elif fg.has("A"):
        matte = alpha
    else:
        raise InputError(
            f"the fg has no alpha channel A (it has {', '.join(fg.channels)}) and no matte input was given: "
            "the op needs one of them to know which pixels are foreground"
        )
    matte = np.clip(np.nan_to_num(matte.astype(np.float32), nan=0.0), 0.0, 1.0)
    return Layers(plate, step, rgb, matte)


def point_grid(step: int, height: int, width: int) -> tuple[slice, slice]:
    """Every `step`-th pixel in both directions, from the middle of the first `step` x `step` block,
    or of the frame's side where that is shorter than a block (a strip of 8x8192 pixels, say),
    so every frame keeps at least one sample in each direction."""
    return slice(min(step // 2, (height - 1) // 2), None, step), slice(min(step // 2, (width - 1) // 2), None, step)


def check_layer_channels(channels: Mapping[str, Sequence[str]], roles: Collection[str]) -> None:
    """The channel rules of `read_layers`, for the frames known before a job runs (those sent
    inline); `roles` are all the job's inputs, so an fg without alpha passes when a matte is given."""
    for role in ("plate", "fg"):
        if role in channels:
            _require_rgb(channels[role], role)
    if "matte" in channels:
        _matte_name(channels["matte"])
    elif "fg" in channels and "matte" not in roles and "A" not in channels["fg"]:
        raise InputError(
            f"the fg has no alpha channel A (it has {', '.join(channels['fg'])}) and no matte input was given: "
            "the op needs one of them to know which pixels are foreground"
        )


def read_plate(shot: Shot, frame: int, work: str) -> Layers:
    """A plate frame (its RGB made finite, as a model sees it) and where the result goes (the matte,
    all ones without one), in the `Layers` form `over_plate` puts back: for ops that take no fg.

    `work` names what the op does in the refusal of integer frames ("cvgen {work} scene-linear ...").
    """
    plate = shot.read("plate", frame)
    _require_rgb(plate.channels, "plate")
    if plate.pixels.dtype.kind != "f":
        raise InputError(f"cvgen {work} scene-linear float frames (half or float), but plate frame {frame} "
                         f"is {plate.pixels.dtype}")
    rgb = np.stack([plate.channel(c) for c in RGB], axis=-1).astype(np.float32)
    rgb = np.nan_to_num(rgb, nan=0.0, posinf=1.0, neginf=0.0)
    if shot.has("matte"):
        matte = _matte_channel(shot.read("matte", frame).in_window(plate.data_window))
        matte = np.clip(np.nan_to_num(matte.astype(np.float32), nan=0.0), 0.0, 1.0)
    else:
        matte = np.ones(rgb.shape[:2], np.float32)
    return Layers(plate, 1, rgb, matte)


def _require_rgb(channels: Sequence[str], role: str) -> None:
    missing = [c for c in RGB if c not in channels]
    if missing:
        raise InputError(f"the {role} has no {', '.join(missing)} channel(s); it has {', '.join(channels) or 'none'}")


def pick_channel(channels: Sequence[str], preferred: Sequence[str]) -> str | None:
    """The channel a one-role frame is read from: its only channel, else the first of `preferred` it has."""
    if len(channels) == 1:
        return channels[0]
    return next((name for name in preferred if name in channels), None)


def _matte_name(channels: Sequence[str]) -> str:
    name = pick_channel(channels, MATTE_CHANNELS)
    if name is not None:
        return name
    raise InputError(f"the matte has none of the channels {', '.join(MATTE_CHANNELS)}; it has {', '.join(channels)}")


def _matte_channel(matte: Image) -> np.ndarray:
    """The matte's coverage: its only channel, else the first of `MATTE_CHANNELS` it has."""
    return matte.channel(_matte_name(matte.channels))


def blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur with the edges extended, so a matte touching the frame edge stays solid."""
    reach = max(1, math.ceil(REACH * sigma))
    taps = np.exp(-0.5 * (np.arange(-reach, reach + 1) / sigma) ** 2)
    taps = (taps / taps.sum()).astype(np.float32)
    for _ in range(2):  # rows, then (transposed) columns
        padded = np.pad(a, ((reach, reach), (0, 0)), mode="edge")
        a = sum((t * padded[k : k + a.shape[0]] for k, t in enumerate(taps)), np.zeros_like(a)).T
    return a


def feathered(matte: np.ndarray, feather: float) -> np.ndarray:
    """The matte with its edge softened inward only: zero wherever `matte` is zero.

    `1 - blur(1 - M)` equals `blur(M)` but is exactly 1 deep inside a solid matte, so rounding in
    the blur never lets a sliver of the plate under the foreground through.
    """
    if feather <= 0:
        return matte
    return np.clip(np.minimum(matte, 1 - blur(1 - matte, feather)), 0.0, 1.0)


def over_plate(layers: Layers, matte: np.ndarray, rgb: np.ndarray) -> Image:
    """`rgb` (N, 3: the result at the pixels where `matte` > 0, in order) over the plate.

    Pixels where `matte` is 0 keep the plate's values untouched; a solid matte hides even Inf
    and NaN in the plate. The result keeps the plate's channels, windows and metadata.
    """
    plate = layers.plate
    inside = matte > 0
    m = matte[inside][:, None]
    under = layers.plate_rgb()[inside]
    mixed = m * rgb + (1 - m) * np.where(m < 1, under, 0)
    pixels = plate.pixels.copy()
    for i, name in enumerate(RGB):
        pixels[:, :, plate.channels.index(name)][inside] = mixed[:, i]
    return Image(pixels, plate.channels, plate.origin, plate.display, plate.pixel_aspect, dict(plate.attributes))
