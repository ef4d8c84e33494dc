"""colormatch: classical colour and light matching of a composited foreground to its plate.

No weights and no GPU: this is the fast preview an artist gets in seconds, and the baseline the
diffusion ops are measured against (the harmonisation error of `METHODS.md`). The method, in the
steps the code below is numbered by:

1. **Layers.** Per frame, the matte `M` (the `matte` input, else the foreground's alpha), the
   foreground `F` (unpremultiplied by its alpha when it has one, matte given or not) and the
   plate `B`, all in the plate's data window. The composite model is `C = M * F + (1 - M) * B`.
2. **Edge comparison**, in ACEScct's log curve applied to the job's own RGB (its primaries kept),
   a log space where exposure and white balance are offsets.
   Along the matte's edge, the local mean of the plate just outside (pixels with `M == 0`) minus
   the local mean of the foreground just inside (weighted by `M`) is what the foreground lacks
   there; its weighted median along the edge is the frame's offset. Light varies smoothly across
   an edge while content need not, so comparing neighbours across it, rather than the whole
   foreground with a wide ring of plate (Reinhard's transfer), is not swayed by what lies in the
   middle of the foreground or far from it, and the median ignores the stretches of edge where
   the two sides show different things. Where the whole edge runs between different materials
   (a dark coat against bright sky) no statistic can tell content from light: that is what the
   diffusion ops are for. Plate pixels the matte covers, even partly, are never used: they may
   hold the very thing the foreground replaces. Measured on point samples, at most `STATS_SIZE`
   along the long side.
3. **Temporal smoothing.** Each frame's numbers are a Gaussian-weighted average over the frames
   around it (`temporal` frames sigma), each frame weighted by how much edge it measured, so the
   correction does not flicker and a frame with little edge in view borrows its neighbours'.
4. **Transfer**, in ACEScct: `F' = p + g * (F - p) + s * offset` with `p` the foreground's mean
   near the edge, `g = clamp(sd_b / sd_f, 1/MAX_GAIN, MAX_GAIN) ** (contrast * s)` from the
   spreads of the two sides near the edge, and `s = strength`; applied as the linear gain per
   channel this is, the toe's pixels taking the gain of the toe's top (`corrected`), so a
   non-negative foreground stays non-negative.
5. **Composite** in the plate's own scene-linear space with the matte feathered inward only:
   `out = M_f * F' + (1 - M_f) * B` where `M_f > 0`; every other pixel is the plate's, bit for bit.

Every output frame depends on the frames within the smoothing window around it and on nothing
else, so a resumed job or a farm chunk renders exactly the frames a full run renders, while
reading only the frames it needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from cvgen.protocol.images import Image

from ..io.color import ColorTransform
from .base import OpContext, OpSpec, Param, Role, Shot
from .layers import FG_ROLE, MATTE_ROLE, REACH, Layers, check_layer_channels, blur, feathered, over_plate, read_layers

LOG_SPACE = "ACEScct"
#: The scene-linear space `LOG_SPACE` is a curve of (same primaries). Its curve is applied to the
#: job's own RGB, without changing primaries: a gain per channel in other primaries (AP1 for a
#: Rec.709 job) is a 3x3 matrix in the job's, and pushed saturated colours out of its gamut,
#: below zero.
LINEAR_SPACE = "ACEScg"
#: Where ACEScct's toe ends: below this value the curve is affine in linear, not logarithmic.
TOE_TOP = 0.155251141552511
#: Longest side, in pixels, of the subsample the edge is compared on.
STATS_SIZE = 256
#: The plate may at most double or halve the foreground's contrast: flat sky next to a detailed
#: foreground must not wash it out.
MAX_GAIN = 2.0
#: Floor on a standard deviation in ACEScct units, so a flat foreground gets a finite gain.
MIN_SD = 1e-3

PARAMS = (
    Param(
        "strength",
        "float",
        1.0,
        "how far the foreground's colour and light move toward the plate's: 0 keeps it as it is, 1 matches",
        0.0,
        1.0,
    ),
    Param(
        "contrast",
        "float",
        0.25,
        "how much of the plate's contrast near the edge the foreground takes on: 0 keeps its own, 1 matches",
        0.0,
        1.0,
    ),
    Param(
        "radius",
        "float",
        0.01,
        "how far to each side of the matte's edge the foreground and plate are compared, as a fraction of "
        "the image height (larger: steadier, but more swayed by what differs between them)",
        0.002,
        1.0,
    ),
    Param(
        "feather",
        "float",
        2.0,
        "softens the matte's edge by about this many pixels, inward only (0 = use the matte as it is)",
        0.0,
        64.0,
    ),
    Param(
        "temporal",
        "float",
        3.0,
        "sigma, in frames, of the smoothing of the correction over the shot, against flicker (0 = per frame)",
        0.0,
        100.0,
    ),
)


@dataclass(frozen=True)
class Match:
    """How one frame's foreground compares with the plate across the matte's edge, in the log space.

    `weight` says how much edge the numbers rest on (0: nothing to compare); `offset` is what the
    plate has more than the foreground, per channel; `pivot` is the foreground's mean near the
    edge, about which its contrast changes; `fg_log_sd` and `plate_log_sd` are the log standard
    deviations of the two sides near the edge.
    """

    weight: float
    offset: np.ndarray
    pivot: np.ndarray
    fg_log_sd: np.ndarray
    plate_log_sd: np.ndarray


# 2. Edge comparison ---------------------------------------------------------------------------


def measure(layers: Layers, radius: float, to_log: ColorTransform) -> Match:
    """Compare the foreground just inside the matte's edge with the plate just outside it.

    Along the edge, the local mean of the plate outside minus the local mean of the foreground
    inside estimates what the foreground lacks; the weighted median of that difference ignores
    the stretches where the two sides show different things (hair against sky) as long as most
    of the edge runs through similar light.
    """
    matte = layers.matte
    fg = to_log.apply(layers.fg)
    plate = to_log.apply(layers.plate_rgb())
    inside = np.where(np.isfinite(fg).all(axis=-1), matte, 0).astype(np.float32)
    outside = (np.isfinite(plate).all(axis=-1) & (matte == 0)).astype(np.float32)
    fg = np.where(inside[..., None] > 0, fg, 0)
    plate = np.where(outside[..., None] > 0, plate, 0)
    sigma = max(1.0, radius * layers.plate.height / layers.step / 2)  # reach ~2 sigma = radius; >= a sample
    near_in, near_out = blur(inside, sigma), blur(outside, sigma)
    ring, band = outside * near_in, inside * near_out
    edge = near_in * near_out  # both sides within reach; highest right at the edge
    if edge.sum() > 0:
        difference = _local_mean(plate, outside, near_out, sigma) - _local_mean(fg, inside, near_in, sigma)
        offset = np.array([_weighted_median(difference[..., c], edge) for c in range(3)])
        weight = float(edge.sum())
    else:  # no clear plate within reach of the matte: compare the two as wholes
        ring, band = outside, inside
        weight = float(min(ring.sum(), band.sum()))
        if weight <= 0:  # no foreground, or no clear plate at all: nothing to compare
            return Match(0.0, np.zeros(3), np.zeros(3), np.zeros(3), np.zeros(3))
        offset = _mean(plate, ring) - _mean(fg, band)
    pivot = _mean(fg, band)
    return Match(weight, offset, pivot, _log_sd(fg, band, pivot), _log_sd(plate, ring, _mean(plate, ring)))


def _local_mean(values: np.ndarray, weights: np.ndarray, blurred_weights: np.ndarray, sigma: float) -> np.ndarray:
    """Weighted Gaussian-local mean per channel (normalised convolution); 0 where no weight is near."""
    near = blurred_weights > 0
    denominator = np.where(near, blurred_weights, 1)
    return np.stack([np.where(near, blur(values[..., c] * weights, sigma) / denominator, 0) for c in range(3)], -1)


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    keep = weights > 0
    values, weights = values[keep], weights[keep]
    order = np.argsort(values)
    cumulative = np.cumsum(weights[order], dtype=np.float64)
    return float(values[order][np.searchsorted(cumulative, cumulative[-1] / 2)])


def _mean(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    w = weights.astype(np.float64).ravel()
    return w @ values.reshape(-1, 3).astype(np.float64) / w.sum()


def _log_sd(values: np.ndarray, weights: np.ndarray, mean: np.ndarray) -> np.ndarray:
    w = weights.astype(np.float64).ravel()
    var = w @ (values.reshape(-1, 3).astype(np.float64) - mean) ** 2 / w.sum()
    return np.log(np.maximum(np.sqrt(var), MIN_SD))


# 3. Temporal smoothing ------------------------------------------------------------------------


def smooth(matches: list[Match], distances: np.ndarray, sigma: float) -> Match | None:
    """Gaussian average over frames (`distances` in frames), each frame weighted by its edge weight.

    None when no frame of the window had anything to compare.
    """
    kernel = np.exp(-0.5 * (distances / sigma) ** 2) if sigma > 0 else (distances == 0).astype(np.float64)
    w = kernel * np.array([m.weight for m in matches])
    total = float(w.sum())
    if total <= 0:
        return None

    def mix(name: str) -> np.ndarray:
        return w @ np.stack([getattr(m, name) for m in matches]) / total

    return Match(total, mix("offset"), mix("pivot"), mix("fg_log_sd"), mix("plate_log_sd"))


# 4. Transfer ----------------------------------------------------------------------------------


def transfer(x: np.ndarray, match: Match, strength: float, contrast: float) -> np.ndarray:
    """Foreground log colours `x` (N, 3) moved toward the plate, per channel."""
    limit = math.log(MAX_GAIN)
    gain = np.exp(np.clip(match.plate_log_sd - match.fg_log_sd, -limit, limit) * contrast * strength)
    return ((x - match.pivot) * gain + match.pivot + strength * match.offset).astype(np.float32)


def corrected(fg: np.ndarray, match: Match, strength: float, contrast: float, to_log: ColorTransform) -> np.ndarray:
    """Linear foreground colours `fg` (N, 3) moved by `transfer`, applied as a gain per channel of
    the job's own RGB (`to_log` is the log curve on it), so no colour leaves the job's gamut.

    Above ACEScct's toe the curve is a logarithm, so `transfer` is a gain there and this is exactly
    it. In the toe the curve is affine: an offset there adds or removes light rather than scaling
    it, and pulled black pixels below zero. Each pixel in the toe gets the gain of the toe's top
    instead, so a non-negative colour stays non-negative and black stays black.
    """
    to_linear = to_log.inverse()
    knee = np.maximum(to_log.apply(fg), np.float32(TOE_TOP))
    gain = to_linear.apply(transfer(knee, match, strength, contrast)) / to_linear.apply(knee)
    return (fg * gain).astype(np.float32)


# 5. Composite ---------------------------------------------------------------------------------


def composite(
    layers: Layers,
    match: Match | None,
    params: dict[str, Any],
    to_log: ColorTransform,
) -> Image:
    """The corrected foreground over the plate; pixels the feathered matte leaves at 0 are the plate's."""
    mf = feathered(layers.matte, params["feather"])
    fg = layers.fg[mf > 0]
    if match is not None and len(fg):  # (OpenColorIO refuses an empty image)
        fg = corrected(fg, match, params["strength"], params["contrast"], to_log)
    return over_plate(layers, mf, fg)


# The op ---------------------------------------------------------------------------------------


def run(shot: Shot, params: dict[str, Any], ctx: OpContext) -> Iterator[tuple[int, Image]]:
    """Each frame of `ctx.todo`, from the edge comparisons of the frames within its smoothing window.

    Comparisons are measured lazily and kept only while a later frame of the todo list may need them,
    so memory stays flat and a short farm chunk reads its window, not the whole shot.
    Progress: step 1 of 2 while measuring the window's frames, step 2 while compositing.
    """
    to_log = ColorTransform(LINEAR_SPACE, LOG_SPACE)  # the curve alone, on the job's own primaries
    sigma = params["temporal"]
    reach = math.ceil(REACH * sigma)
    frames = shot.frames
    cache: dict[int, Match] = {}
    for frame in ctx.todo:
        at = frames.index(frame)
        window = frames[max(0, at - reach) : at + reach + 1]
        cache = {f: match for f, match in cache.items() if f in window}
        for f in window:
            if f not in cache:
                ctx.step(frame, 1, 2)
                cache[f] = measure(read_layers(shot, f, max_size=STATS_SIZE), params["radius"], to_log)
        distances = np.array([frames.index(f) - at for f in window], dtype=np.float64)
        match = smooth([cache[f] for f in window], distances, sigma)
        ctx.step(frame, 2, 2)
        yield frame, composite(read_layers(shot, frame), match, params, to_log)


#: The layers `read_layers` reads (its channel rules: `check_layer_channels`).
ROLES = (
    Role("plate", "Plate", "sequence", True, ("R", "G", "B"),
         "The background whose colour and light the foreground is matched to; kept bit for bit outside the matte"),
    FG_ROLE,
    MATTE_ROLE,
)

OP = OpSpec(
    name="colormatch",
    summary="Classical colour and light matching of the foreground to the plate around it (no model; fast preview)",
    params=PARAMS,
    roles=ROLES,
    run=run,
    check_channels=check_layer_channels,
)
