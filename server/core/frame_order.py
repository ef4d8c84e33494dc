"""Which frames an op that carries state from frame to frame renders for a chunk or a resume.

harmonize carries inter-frame attention from each frame to the next, restyle carries the anchor's
and the previous frame's keys and values: a farm chunk or a resumed job cannot start cold at its
first frame without a seam. It renders, and discards, up to `warmup` frames of the shot before
every run of missing frames (and restyle the anchor first), so its state is close to, or where the
warm-up reaches back far enough exactly, what a full render has there.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence


def with_warmup(frames: Sequence[int], todo: Collection[int], warmup: int, anchor: bool = False) -> list[int]:
    """`todo` in shot order, each run of it preceded by up to `warmup` of the shot's frames before it
    (none rendered twice); with `anchor`, the shot's first frame comes first."""
    wanted = set(todo)
    order: list[int] = [frames[0]] if anchor and frames else []
    for index, frame in enumerate(frames):
        if frame in wanted:
            order += [f for f in frames[max(0, index - warmup) : index] if f not in order[-warmup:]]
            if frame not in order[:1]:  # the anchor, already first
                order.append(frame)
    return order


def follows(frames: Sequence[int], previous: int | None, frame: int) -> bool:
    """Whether `frame` comes right after `previous` in the shot (state may carry over between them)."""
    return previous is not None and frames.index(frame) == frames.index(previous) + 1
