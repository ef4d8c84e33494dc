"""Frames as hosts and the server exchange them: pixels plus the EXR facts compositors rely on.

An `Image` keeps what an EXR header says about where its pixels sit (data window inside a
display window, pixel aspect) so a round trip through cvgen never shifts or squashes a plate.
Channels are addressed by name because neither EXR nor OpenImageIO promise an order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import ProtocolError

#: Pixel types that travel on the wire and in EXR files.
PIXEL_DTYPES = ("float16", "float32", "uint8", "uint16")

Window = tuple[int, int, int, int]
"""x, y, width, height in pixels (EXR's min corner plus size)."""


@dataclass
class Image:
    """One frame: an (height, width, channels) array placed in a data window.

    `origin` is the data window's top-left corner and `display` the display window; both use
    EXR conventions (y down, integer pixel coordinates). `attributes` carries metadata that
    must survive processing (camera, lens, timecode, ...): plain JSON-like values only.
    """

    pixels: np.ndarray
    channels: tuple[str, ...]
    origin: tuple[int, int] = (0, 0)
    display: Window | None = None
    pixel_aspect: float = 1.0
    attributes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.pixels.ndim == 2:
            self.pixels = self.pixels[:, :, None]
        if self.pixels.ndim != 3:
            raise ProtocolError(f"image pixels must be (height, width, channels), got shape {self.pixels.shape}")
        if str(self.pixels.dtype) not in PIXEL_DTYPES:
            raise ProtocolError(f"pixel type {self.pixels.dtype} is not one of {', '.join(PIXEL_DTYPES)}")
        self.channels = tuple(self.channels)
        if len(self.channels) != self.pixels.shape[2]:
            raise ProtocolError(
                f"image has {self.pixels.shape[2]} channels but {len(self.channels)} names: {list(self.channels)}"
            )
        if len(set(self.channels)) != len(self.channels):
            raise ProtocolError(f"duplicate channel names: {list(self.channels)}")
        if self.display is None:
            self.display = (self.origin[0], self.origin[1], self.width, self.height)
        if len(self.origin) != 2 or len(self.display) != 4:
            raise ProtocolError(f"an image needs an origin (x, y) and a display window (x, y, width, height), "
                                f"not {self.origin} and {self.display}")
        if not all(-2**31 <= v < 2**31 for v in (*self.origin, *self.display)):
            raise ProtocolError(f"image windows {self.origin} {self.display} lie outside 32-bit pixel coordinates")
        if not all(isinstance(k, str) for k in self.attributes):
            raise ProtocolError("image attribute names must be strings")
        if not (self.pixel_aspect > 0 and np.isfinite(self.pixel_aspect)):
            raise ProtocolError(f"pixel aspect must be a positive number but is {self.pixel_aspect}")

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def data_window(self) -> Window:
        return (self.origin[0], self.origin[1], self.width, self.height)

    def has(self, *names: str) -> bool:
        return all(n in self.channels for n in names)

    def channel(self, name: str) -> np.ndarray:
        """The named channel as a 2-D view; the error lists what the frame does have."""
        try:
            return self.pixels[:, :, self.channels.index(name)]
        except ValueError:
            raise ProtocolError(
                f"channel {name!r} not found; the image has {', '.join(self.channels) or 'no channels'}"
            ) from None

    def stack(self, names: tuple[str, ...] | list[str], dtype: str = "float32") -> np.ndarray:
        """Named channels stacked as (height, width, len(names)), converted to `dtype`."""
        return np.stack([self.channel(n) for n in names], axis=-1).astype(dtype, copy=False)

    def in_window(self, window: Window) -> "Image":
        """This image's pixels placed in another data window: cropped where outside, zero where missing.

        Inputs of one shot (a plate and a foreground rendered with a tighter bounding box, say)
        often have different data windows; ops work per pixel, so they get one common window.
        """
        x, y, w, h = window
        if (x, y, w, h) == self.data_window:
            return self
        out = np.zeros((h, w, self.pixels.shape[2]), dtype=self.pixels.dtype)
        x0, y0 = max(x, self.origin[0]), max(y, self.origin[1])
        x1 = min(x + w, self.origin[0] + self.width)
        y1 = min(y + h, self.origin[1] + self.height)
        if x1 > x0 and y1 > y0:
            out[y0 - y : y1 - y, x0 - x : x1 - x] = self.pixels[
                y0 - self.origin[1] : y1 - self.origin[1], x0 - self.origin[0] : x1 - self.origin[0]
            ]
        return Image(out, self.channels, (x, y), self.display, self.pixel_aspect, dict(self.attributes))

    def describe(self) -> dict[str, Any]:
        """Header fields for the wire (everything but the pixels)."""
        return {
            "channels": list(self.channels),
            "origin": list(self.origin),
            "display": list(self.display or self.data_window),
            "pixel_aspect": float(self.pixel_aspect),
            "attributes": self.attributes,
        }

    @classmethod
    def from_description(cls, pixels: np.ndarray, desc: dict[str, Any]) -> "Image":
        try:
            origin = tuple(int(v) for v in desc.get("origin", (0, 0)))
            display = desc.get("display")
            return cls(
                pixels,
                tuple(str(c) for c in desc["channels"]),
                (origin[0], origin[1]),
                tuple(int(v) for v in display) if display is not None else None,  # type: ignore[arg-type]
                float(desc.get("pixel_aspect", 1.0)),
                dict(desc.get("attributes") or {}),
            )
        except (KeyError, TypeError, ValueError, IndexError, OverflowError) as exc:
            raise ProtocolError(f"bad image description {desc!r}: {exc}") from None
