"""Contact sheets: scene-linear frames side by side as one 8-bit sRGB PNG.

A PNG opens anywhere (a browser, a chat, a review tool), so it is how a job's result is
eyeballed without a compositor: one row per frame, input next to output.
"""

from __future__ import annotations

import os

import numpy as np
import OpenImageIO as oiio

from cvgen.protocol.images import Image

from .color import ColorTransform
from cvgen.protocol.files import atomic_output

#: The display encoding of the sheet.
DISPLAY_COLORSPACE = "sRGB Encoded Rec.709 (sRGB)"


def contact_sheet(
    rows: list[list[Image]],
    path: str | os.PathLike[str],
    colorspace: str = "Linear Rec.709 (sRGB)",
    max_width: int = 2048,
) -> None:
    """Write `rows` (each a list of images shown left to right, rows top to bottom) as a PNG.

    Images are converted from `colorspace` to sRGB and clipped to [0, 1]; NaN shows as black.
    Frames of different sizes sit top-left in their cell on black. A sheet wider than
    `max_width` is scaled down as a whole. The PNG is written atomically.
    """
    if not any(rows):
        raise ValueError("a contact sheet needs at least one image")
    if max_width < 1:
        raise ValueError(f"max_width must be positive, got {max_width}")
    to_display = ColorTransform(colorspace, DISPLAY_COLORSPACE)
    cells = [[_display_rgb(image, to_display) for image in row] for row in rows]
    heights = [max((c.shape[0] for c in row), default=0) for row in cells]
    width = max(sum(c.shape[1] for c in row) for row in cells)
    sheet = np.zeros((sum(heights), width, 3), np.float32)
    y = 0
    for row, height in zip(cells, heights):
        x = 0
        for cell in row:
            sheet[y : y + cell.shape[0], x : x + cell.shape[1]] = cell
            x += cell.shape[1]
        y += height
    buf = oiio.ImageBuf(sheet)
    if width > max_width:
        new_height = max(1, round(sheet.shape[0] * max_width / width))
        buf = oiio.ImageBufAlgo.resize(buf, roi=oiio.ROI(0, max_width, 0, new_height, 0, 1, 0, 3))
    with atomic_output(path, ".png") as tmp:
        if not buf.write(tmp, oiio.TypeUInt8, "png"):
            raise OSError(f"cannot write {os.fspath(path)}: {buf.geterror() or 'unknown error'}")


def _display_rgb(image: Image, to_display: ColorTransform) -> np.ndarray:
    """RGB looked up by name; a frame without R, G and B shows its Y (or first) channel as grey."""
    if image.has("R", "G", "B"):
        rgb = image.stack(("R", "G", "B"))
    else:
        grey = image.channel("Y" if image.has("Y") else image.channels[0]).astype(np.float32)
        rgb = np.repeat(grey[:, :, None], 3, axis=2)
    display = np.clip(to_display.apply(rgb), 0.0, 1.0)
    return np.nan_to_num(display, nan=0.0)
