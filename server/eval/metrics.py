"""The weight-free metrics: warp error, interpolation error and PSNR, harmonisation error, flicker.

Each takes display-referred frames (N, H, W, 3) in [0, 1] (luminance for flicker) and the flow of
the source (or of the result, when no source is given), and returns `Metric`s with per-frame
values keyed by host frame number and the aggregate the report shows (the mean over frames).
Definitions are those of METHODS.md, "Evaluation metrics"; each Metric says what was computed.
"""

from __future__ import annotations

import math

import numpy as np

from .flow import PairFlow, inconsistent, outside, warp
from .results import Metric

#: PSNR of a frame identical to its reference would be infinite; the MSE is floored here (100 dB).
MSE_FLOOR = 1e-10
#: Linear luminance at or below this (about -13.3 stops below 1.0) holds no exposure to compare.
LUMINANCE_FLOOR = 1e-4


def psnr(mse: float) -> float:
    """PSNR in dB of a mean squared error on values in [0, 1] (peak 1), capped at 100 dB."""
    return 10.0 * math.log10(1.0 / max(mse, MSE_FLOOR))


def warp_error(display: np.ndarray, frames: list[int], flows: list[PairFlow]) -> Metric:
    """Lai et al.'s warp error: frame t+1 warped onto t, masked squared error summed over RGB, per pixel."""
    metric = Metric(
        "warp_error", "Warp error", "", "lower",
        "Frame t+1 warped onto t (bilinear) along the flow from t to t+1; squared RGB difference summed over "
        "the three channels, averaged over pixels not occluded or on a motion boundary (forward-backward "
        "check), on display-referred sRGB in [0, 1]; mean over t. Keyed by t.")
    for t, flow in enumerate(flows):
        weight = flow.visible.sum()
        if weight > 0:
            error = np.sum((warp(display[t + 1], flow.forward) - display[t]) ** 2, axis=2)
            metric.per_frame[frames[t]] = float(np.sum(flow.visible * error) / weight)
    return _aggregate(metric, len(frames), 2, "every pixel of every frame pair is occluded or on a motion boundary")


def interpolation(display: np.ndarray, frames: list[int], flows: list[PairFlow]) -> list[Metric]:
    """Middlebury interpolation error (RMS) and PSNR of frame t synthesised from t-1 and t+1."""
    error = Metric(
        "interpolation_error", "Interpolation error (RMS)", "", "lower",
        "Frame t synthesised from t-1 and t+1, each warped halfway (bilinear) along the flow between them and "
        "averaged where both are visible (else the visible one); RMS over pixels of the RGB difference's length "
        "(Middlebury IE) to frame t, on display-referred sRGB in [0, 1]; mean over t.")
    peak = Metric(
        "interpolation_psnr", "Interpolation PSNR", "dB", "higher",
        "PSNR (peak 1) of the same synthesised frame t against frame t, from the mean squared error per channel, "
        "on display-referred sRGB in [0, 1], capped at 100 dB; mean over t.")
    for t, flow in enumerate(flows, start=1):
        squared = np.sum((halfway(display[t - 1], display[t + 1], flow) - display[t]) ** 2, axis=2)
        error.per_frame[frames[t]] = float(np.sqrt(squared.mean()))
        peak.per_frame[frames[t]] = psnr(float(squared.mean()) / 3.0)
    return [_aggregate(m, len(frames), 3, "") for m in (error, peak)]


def halfway(before: np.ndarray, after: np.ndarray, flow: PairFlow) -> np.ndarray:
    """The frame between `before` and `after`, both warped half the flow between them: averaged where
    both are visible (consistent flow, sampled inside the frame), the visible one elsewhere; where
    neither is, whichever samples inside the frame (both, averaged, when neither does)."""
    half_forward, half_backward = -0.5 * flow.forward, -0.5 * flow.backward
    from_before = warp(before, half_forward)
    from_after = warp(after, half_backward)
    inside_before, inside_after = ~outside(half_forward), ~outside(half_backward)
    seen_before = inside_before & (warp(flow.visible, half_forward) > 0.5)
    seen_after = inside_after & (warp((~inconsistent(flow.backward, flow.forward)).astype(np.float32),
                                      half_backward) > 0.5)
    unseen = ~(seen_before | seen_after)
    use_before = np.where(unseen, inside_before, seen_before)
    use_after = np.where(unseen, inside_after, seen_after)
    neither = ~(use_before | use_after)
    weight_before = (use_before | neither).astype(np.float32)[..., None]
    weight_after = (use_after | neither).astype(np.float32)[..., None]
    return (weight_before * from_before + weight_after * from_after) / (weight_before + weight_after)


def harmonization(display: np.ndarray, original: np.ndarray | None, frames: list[int],
                  matte: np.ndarray | None) -> list[Metric]:
    """iHarmony4's MSE, foreground MSE and PSNR against the untouched original (not computed without one)."""
    mse = Metric("harmonization_mse", "Harmonisation MSE", "", "lower",
                 "Mean squared difference to the untouched original over all pixels and RGB channels, on "
                 "display-referred sRGB in [0, 1]; mean over frames.")
    fmse = Metric("harmonization_fmse", "Harmonisation fMSE (inside the matte)", "", "lower",
                  "Squared difference to the untouched original weighted by the matte, divided by 3 x the matte's "
                  "sum (per-channel mean inside the matte, as iHarmony4), on display-referred sRGB in [0, 1]; "
                  "mean over frames.")
    peak = Metric("harmonization_psnr", "Harmonisation PSNR", "dB", "higher",
                  "PSNR (peak 1) of the whole frame against the untouched original, on display-referred sRGB in "
                  "[0, 1], capped at 100 dB; mean over frames.")
    if original is None:
        for metric in (mse, fmse, peak):
            metric.not_computed = "no original given: the harmonisation error compares against the untouched original"
        return [mse, fmse, peak]
    for index, frame in enumerate(frames):
        squared = (display[index] - original[index]) ** 2
        mse.per_frame[frame] = float(squared.mean())
        peak.per_frame[frame] = psnr(mse.per_frame[frame])
        if matte is not None and matte[index].sum() > 0:
            fmse.per_frame[frame] = float(np.sum(matte[index][..., None] * squared) / (3.0 * matte[index].sum()))
    if matte is None:
        fmse.not_computed = "no matte given: fMSE needs the foreground's matte"
        return [_aggregate(mse, len(frames), 1, ""), fmse, _aggregate(peak, len(frames), 1, "")]
    return [_aggregate(m, len(frames), 1, "the matte is empty (all 0) on every frame")
            for m in (mse, fmse, peak)]


def flicker(luminance: np.ndarray, frames: list[int], flows: list[PairFlow], matte: np.ndarray | None) -> Metric:
    """Mean absolute frame-to-frame change of log2 luminance after motion compensation: flicker in stops."""
    where = "inside the matte (weighted by it)" if matte is not None else "over the whole frame (no matte given)"
    metric = Metric(
        "flicker_stops", "Flicker", "stops", "lower",
        "Scene-linear Rec.709 luminance (0.2126 R + 0.7152 G + 0.0722 B) of frame t+1 warped onto t along the "
        f"flow; mean |log2 change| {where}, over pixels visible in both frames whose luminance exceeds "
        f"{LUMINANCE_FLOOR:g} in both (black holds no exposure to compare); mean over t. Keyed by t.")
    for t, flow in enumerate(flows):
        warped = warp(luminance[t + 1], flow.forward)
        bright = (luminance[t] > LUMINANCE_FLOOR) & (warped > LUMINANCE_FLOOR)
        weight = flow.visible * bright * (matte[t] if matte is not None else 1.0)
        if weight.sum() > 0:
            change = np.abs(np.log2(np.where(bright, warped, 1.0)) - np.log2(np.where(bright, luminance[t], 1.0)))
            metric.per_frame[frames[t]] = float(np.sum(weight * change) / weight.sum())
    return _aggregate(metric, len(frames), 2, "no pixel is visible in both frames, bright and inside the matte")


def _aggregate(metric: Metric, count: int, needed: int, empty: str) -> Metric:
    """The mean over frames, or why there is none."""
    if count < needed:
        metric.not_computed = f"needs at least {needed} frames, the range has {count}"
    elif not metric.per_frame:
        metric.not_computed = empty
    else:
        metric.value = float(np.mean(list(metric.per_frame.values())))
    return metric
