"""Text for the sidebar: Blender cuts a long label off at the region's edge instead of wrapping it."""

from __future__ import annotations

import textwrap

#: Average width in pixels of a character of Blender's interface font at a UI scale of 1.
CHAR_PX = 7.0
#: Pixels a panel's label loses to the region's and the panel's margins.
MARGIN_PX = 30.0


def sidebar_lines(text: str, width_px: float, scale: float = 1.0) -> list[str]:
    """`text` as the lines that fit a region `width_px` wide, so an op's summary is read whole."""
    chars = max(16, int((width_px - MARGIN_PX * scale) / (CHAR_PX * scale)))
    return textwrap.wrap(text, chars, break_on_hyphens=False)
