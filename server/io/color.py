"""Colour space conversion with OpenColorIO, on a pinned built-in config.

Pinning the config (rather than reading $OCIO) makes a job render the same on an artist's box
and on a farm node; the built-in config ships inside PyOpenColorIO and OpenImageIO alike.
"""

from __future__ import annotations

import difflib
from functools import lru_cache

import numpy as np
import PyOpenColorIO as OCIO

from ..errors import InputError

CONFIG_URI = "ocio://cg-config-v4.0.0_aces-v2.0_ocio-v2.5"


@lru_cache(maxsize=1)
def config() -> OCIO.Config:
    return OCIO.Config.CreateFromFile(CONFIG_URI)


def colorspace_names() -> list[str]:
    return [cs.getName() for cs in config().getColorSpaces()]


def check_colorspace(name: str) -> str:
    """The canonical name of a colour space (aliases such as `lin_rec709_srgb` accepted)."""
    cs = config().getColorSpace(name) if isinstance(name, str) else None
    if cs is None:
        close = difflib.get_close_matches(str(name), colorspace_names(), n=3, cutoff=0.4)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise InputError(f"unknown colour space {name!r} in the {CONFIG_URI} config{hint}")
    return cs.getName()


@lru_cache(maxsize=64)
def _processor(src: str, dst: str) -> OCIO.CPUProcessor:
    return config().getProcessor(src, dst).getDefaultCPUProcessor()


class ColorTransform:
    """RGB conversion from one named colour space to another (float32, any leading shape)."""

    def __init__(self, src: str, dst: str) -> None:
        self.src = check_colorspace(src)
        self.dst = check_colorspace(dst)

    def inverse(self) -> "ColorTransform":
        return ColorTransform(self.dst, self.src)

    def apply(self, rgb: np.ndarray) -> np.ndarray:
        """A converted float32 copy; the input is never modified (it may be a read-only plate)."""
        if rgb.shape[-1] != 3:
            raise ValueError(f"colour conversion needs 3 channels, got shape {rgb.shape}")
        out = np.array(rgb, dtype=np.float32, order="C", copy=True)
        if self.src != self.dst:
            _processor(self.src, self.dst).applyRGB(out.reshape(-1, 3))
        return out
