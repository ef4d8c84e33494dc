"""restyle's structure input: a shot's depth as the depth ControlNet expects it (METHODS.md 2.1).

Depth ControlNets were trained on *inverse* depth normalised to [0, 1] (near is bright). Depth
reaches restyle either from the host, as distances (Blender's Z pass, a one-channel EXR whose
channel is `V`; Nuke's `depth.Z`; a plain `Z`) or already inverse (`depth_kind = inverse`), or
from a depth-estimation model, whose output is inverse. Normalisation uses the 1st and 99th
percentiles over *every* frame of the shot, so the conditioning does not flicker and a farm
chunk normalises exactly as a full render does; the statistics are taken on point samples (at
most `STATS_SIZE` pixels along a frame's long side), the same samples whoever computes them.
`structure` < 1 loosens the structure by blurring it, as Gen-1 blurs its depth input.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from ..errors import InputError
from .layers import pick_channel, point_grid

#: Channel names read as depth, in order, when a depth frame has more than one channel.
DEPTH_CHANNELS = ("Z", "depth.Z", "V")
DEPTH_KINDS = ("distance", "inverse")
#: Long side of the point samples the shot's percentiles are taken on.
STATS_SIZE = 256
PERCENTILES = (1.0, 99.0)
#: At `structure` 0 the blur's sigma is this fraction of the frame's short side.
LOOSEST = 0.05


def depth_channel(channels: Sequence[str]) -> str:
    """The channel of a depth frame to read: its only channel, else the first of `DEPTH_CHANNELS`."""
    name = pick_channel(channels, DEPTH_CHANNELS)
    if name is not None:
        return name
    raise InputError(f"the depth has none of the channels {', '.join(DEPTH_CHANNELS)} and more than one channel "
                     f"({', '.join(channels) or 'none'}); give a one-channel depth pass or one with a Z channel")


def to_inverse(depth: np.ndarray, kind: str) -> np.ndarray:
    """Inverse depth (bigger = nearer) of a `distance` or `inverse` depth frame, float32, finite.

    Distances that are not positive and finite (the sky's inf, NaN, 0 from an empty pixel) are
    infinitely far: inverse 0. Non-finite inverse values become 0 too.
    """
    if kind not in DEPTH_KINDS:
        raise InputError(f"depth_kind must be one of {', '.join(DEPTH_KINDS)}, not {kind!r}")
    d = depth.astype(np.float64)
    if kind == "distance":
        usable = np.isfinite(d) & (d > 0)
        inverse = np.divide(1.0, d, out=np.zeros_like(d), where=usable)
    else:
        inverse = np.where(np.isfinite(d), d, 0.0)
    return inverse.astype(np.float32)


def point_samples(a: np.ndarray, size: int = STATS_SIZE) -> np.ndarray:
    """Every n-th pixel of (H, W) `a` in both directions, at most `size` along the long side (the
    point samples `read_layers` takes: never none along a side shorter than n)."""
    return a[point_grid(max(1, math.ceil(max(a.shape) / size)), *a.shape)]


class ShotDepth:
    """A shot's inverse depth, normalised to [0, 1] by percentiles over every frame of the shot."""

    def __init__(self, frames: Iterable[int], inverse_depth: Callable[[int], np.ndarray]) -> None:
        """`inverse_depth(frame)` gives a frame's (H, W) inverse depth; it is called once per frame
        here for the statistics, and again by `normalised` for the frames rendered."""
        self._inverse_depth = inverse_depth
        samples = np.concatenate([point_samples(inverse_depth(frame)).ravel() for frame in frames])
        if samples.size == 0:
            raise InputError("the shot has no depth samples to normalise")
        low, high = np.percentile(samples, PERCENTILES)
        self.low, self.high = float(low), float(high)

    def normalised(self, frame: int) -> np.ndarray:
        """Frame `frame`'s inverse depth mapped to [0, 1] by the shot's percentiles (a depth that
        is the same everywhere in the shot maps to 0: no structure to follow)."""
        inverse = self._inverse_depth(frame)
        span = self.high - self.low
        if span <= 0:
            return np.zeros(inverse.shape, np.float32)
        return np.clip((inverse - self.low) / span, 0.0, 1.0).astype(np.float32)


def loosened(depth: np.ndarray, structure: float) -> np.ndarray:
    """`depth` blurred with sigma `(1 - structure) * LOOSEST * short side` pixels (edges extended);
    unchanged at `structure` 1."""
    import cv2

    sigma = (1.0 - structure) * LOOSEST * min(depth.shape)
    if sigma <= 0:
        return depth
    return cv2.GaussianBlur(depth, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REPLICATE)
