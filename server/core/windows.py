"""Overlapping frame windows for video models, cross-faded at every sampling step.

A video UNet sees a fixed number of frames at once. A shot of any length is cut into windows of
`size` frames that overlap their neighbours by `overlap` frames, and in each overlap the latents
are cross-faded after every sampling step, so no window boundary jumps.

The windows alternate between two roles so that each depends on a bounded neighbourhood only:

- **anchors** (even windows: 0, 2, 4, ...) are sampled on their own, and record the latents their
  overlap frames had after every step;
- **bridges** (odd windows) are sampled between two anchors: after every step, each of their
  overlap frames becomes `w * own + (1 - w) * anchor's` latent of the same frame and step, with
  `w` ramping linearly across the overlap (`weights`). A bridge's frames are the result there.

A fully symmetric cross-fade (every window pulled towards every neighbour) couples the whole shot:
through 50 steps a change spreads over 50 windows, so no frame can be rendered without all the
others, and nothing is finished before everything is. Here a frame depends on at most three
windows (a bridge and its two anchors), so a farm chunk renders those and gets exactly what a full
render gets, and windows stream through memory: at any time one window is sampled and at most two
anchors' overlap trajectories (steps x overlap frames of latents) are held, however long the shot.

Tensors here are frames-first, (F, C, h, w): frame positions are 0-based indices into the shot.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Window:
    """Frames `start` to `stop - 1` of the shot (positions, 0-based); `index` in shot order."""

    index: int
    start: int
    stop: int

    @property
    def frames(self) -> range:
        return range(self.start, self.stop)

    @property
    def anchor(self) -> bool:
        """Anchors are sampled on their own; bridges (odd windows) are cross-faded into their anchors."""
        return self.index % 2 == 0


def plan(count: int, size: int, overlap: int) -> tuple[Window, ...]:
    """Windows of `size` frames covering `count` frames, each overlapping the next by `overlap`.

    Starts are `j * (size - overlap)`; the last window ends at the shot's end and so may be
    shorter, but always has frames of its own beyond the overlap. `2 * overlap <= size` keeps
    every frame in at most two windows (and anchors apart), which the cross-fade relies on.
    """
    if count < 1:
        raise ValueError(f"a shot has at least one frame, not {count}")
    if size < 1 or overlap < 0 or 2 * overlap > size:
        raise ValueError(f"overlap {overlap} must be from 0 to half the window ({size} frames)")
    windows = []
    start = 0
    while True:
        stop = min(start + size, count)
        windows.append(Window(len(windows), start, stop))
        if stop >= count:
            return tuple(windows)
        start += size - overlap


def weights(windows: tuple[Window, ...]) -> list[np.ndarray]:
    """Per window, the weight of its latent for each of its frames; per frame they sum to 1.

    In the overlap of windows a and b = a + 1, at offset q (0..n-1) of its n frames, b weighs
    (q + 1) / (n + 1) and a the rest: a linear ramp that never gives either window all or nothing.
    """
    out = [np.ones(len(w.frames)) for w in windows]
    for a, b in zip(windows, windows[1:]):
        n = a.stop - b.start
        ramp = np.arange(1, n + 1) / (n + 1)
        out[b.index][:n] = ramp
        out[a.index][len(a.frames) - n :] = 1 - ramp
    return out


def owner(windows: tuple[Window, ...], position: int) -> Window:
    """The window whose latents are the result at `position`: a bridge where one covers it, else its anchor."""
    if len(windows) == 1:
        near = windows
    else:  # starts are multiples of the stride: only two windows can hold the position
        stride = windows[1].start
        near = windows[max(0, position // stride - 1) : position // stride + 1]
    covering = [w for w in near if position in w.frames]
    if not covering:
        raise ValueError(f"frame position {position} lies in no window")
    return next((w for w in covering if not w.anchor), covering[0])


def needed(windows: tuple[Window, ...], positions: Iterable[int]) -> list[Window]:
    """The windows to sample, in an order that works, for the results at `positions`.

    The owners of the positions, plus each owning bridge's anchors; every bridge comes right
    after the later of its anchors (or its only one, at the shot's end).
    """
    wanted = {owner(windows, p).index for p in positions}
    wanted |= {n for i in list(wanted) if i % 2 for n in (i - 1, i + 1) if n < len(windows)}
    order: list[Window] = []
    for i in sorted(wanted):
        if windows[i].anchor:
            order.append(windows[i])
            if i - 1 in wanted:
                order.append(windows[i - 1])
        elif i + 1 >= len(windows):
            order.append(windows[i])
    return order


LatentHook = Callable[[int, torch.Tensor], torch.Tensor]


class Crossfade:
    """The per-step cross-fade of a shot's windows: records anchors, blends bridges into them."""

    def __init__(self, windows: tuple[Window, ...]) -> None:
        self.windows = windows
        self.weights = weights(windows)
        #: anchor index -> {frame position: [its latent after step 0, 1, ...]}, overlap frames only
        self._paths: dict[int, dict[int, list[torch.Tensor]]] = {}

    def _neighbours(self, window: Window) -> list[Window]:
        return [self.windows[i] for i in (window.index - 1, window.index + 1) if 0 <= i < len(self.windows)]

    def after_step(self, window: Window) -> LatentHook:
        """The hook to run after each sampling step of `window`'s (F, C, h, w) latents.

        For an anchor it records the overlap frames (and changes nothing); for a bridge it
        cross-fades them with the anchors' latents of the same step, which must be recorded.
        """
        shared = [(j, p) for j, p in enumerate(window.frames)
                  if any(p in n.frames for n in self._neighbours(window))]
        if window.anchor:
            path: dict[int, list[torch.Tensor]] = {p: [] for _, p in shared}
            self._paths[window.index] = path

            def record(step: int, z: torch.Tensor) -> torch.Tensor:
                for j, p in shared:
                    path[p].append(z[j].clone())
                return z

            return record
        own = self.weights[window.index]
        sources = [(j, p, self._paths[n.index][p], float(self.weights[n.index][p - n.start]))
                   for j, p in shared for n in self._neighbours(window) if p in n.frames]

        def blend(step: int, z: torch.Tensor) -> torch.Tensor:
            z = z.clone()
            for j, p, path, w in sources:
                z[j] = float(own[j]) * z[j] + w * path[step]
            return z

        return blend

    def release(self, remaining: Iterable[Window]) -> None:
        """Forget the anchors no window still to be sampled needs: memory stays flat."""
        keep = {n.index for w in remaining if not w.anchor for n in self._neighbours(w)}
        for index in [i for i in self._paths if i not in keep]:
            del self._paths[index]
