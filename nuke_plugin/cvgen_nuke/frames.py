"""Which frames a render covers: the plate's range, the project's, or one the compositor types.

The plate's range is the default because the result replaces the plate in the comp: a render
that covers exactly the frames the plate has never leaves holes or renders past its ends.
"""

from __future__ import annotations

from .errors import SetupError

#: The frame range knob's choices, in the order the panel lists them.
RANGE_MODES = ("input", "project", "custom")


def resolve(mode: str, custom: tuple[int, int], plate: tuple[int, int] | None,
            project: tuple[int, int]) -> tuple[int, int]:
    """The inclusive (first, last) range to render for the frame range knob's `mode`."""
    if mode == "input":
        if plate is None:
            raise SetupError("the frame range follows the plate input, but no plate is connected")
        first, last = plate
    elif mode == "project":
        first, last = project
    elif mode == "custom":
        first, last = custom
    else:
        raise SetupError(f"frame range {mode!r} is not one of {', '.join(RANGE_MODES)}")
    first, last = int(first), int(last)
    if last < first:
        raise SetupError(f"the frame range {first}-{last} is empty: the last frame is before the first")
    return first, last


def check_count(frames: tuple[int, int], limit: int | None) -> None:
    """Refuse a range longer than the server takes in one job, before any input is written."""
    count = frames[1] - frames[0] + 1
    if limit is not None and count > limit:
        raise SetupError(
            f"{count} frames is more than this server takes in one job ({limit}); render a shorter range"
        )
