"""Optical flow, occlusion masks and warping for the temporal metrics (METHODS.md, "Warp error").

The reference (Lai et al. 2018) uses FlowNet2, which needs learned weights; OpenCV's DIS flow is
classical and needs none, so every report can be reproduced anywhere. Flow convention: F(x) is
where the pixel at x in frame a lies in frame b, so frame b warped onto a is b(x + F(x)).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

METHOD = "OpenCV DIS optical flow (preset medium), no learned weights"


@dataclass
class PairFlow:
    """Flow between frames a and b, both directions, and the mask of a's pixels seen in b."""

    forward: np.ndarray      # (H, W, 2) a -> b
    backward: np.ndarray     # (H, W, 2) b -> a
    visible: np.ndarray      # (H, W) float32, 1 = not occluded and not on a motion boundary


def gray8(rgb: np.ndarray) -> np.ndarray:
    """8-bit grey of display RGB in [0, 1]: what DIS takes."""
    return cv2.cvtColor(np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8), cv2.COLOR_RGB2GRAY)


def dis_flow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(H, W, 2) float32 flow from display frame a to b."""
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    return dis.calc(gray8(a), gray8(b), None)


def warp(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """`image` sampled bilinearly at x + flow(x); outside the frame reads 0, as in the reference code,
    so pixels leaving the frame fail the forward-backward check."""
    height, width = flow.shape[:2]
    grid_x, grid_y = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    map_x = grid_x + flow[..., 0]
    map_y = grid_y + flow[..., 1]
    return cv2.remap(np.ascontiguousarray(image, np.float32), map_x, map_y, cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def occluded(forward: np.ndarray, backward: np.ndarray) -> np.ndarray:
    """(H, W) bool: occluded by forward-backward inconsistency or on a motion boundary, as METHODS.md
    (`inconsistent`), or leaving the frame: the reference's zero border catches pixels whose
    x + F_fw leaves the frame only for motions over about 0.7 px; below that a half-zero bilinear
    sample would count as error."""
    return inconsistent(forward, backward) | outside(forward)


def inconsistent(forward: np.ndarray, backward: np.ndarray) -> np.ndarray:
    """(H, W) bool, exactly as METHODS.md: |F_fw + F_bw(x + F_fw)|^2 > 0.01 (|F_fw|^2 + |F_bw(x + F_fw)|^2)
    + 0.5, or |grad F_fw|^2 > 0.01 |F_fw|^2 + 0.002 (forward differences, 0 on the last row and column)."""
    back = warp(backward, forward)
    fw_sq = np.sum(forward**2, axis=2)
    mismatch = np.sum((forward + back) ** 2, axis=2) > 0.01 * (fw_sq + np.sum(back**2, axis=2)) + 0.5
    dx = np.zeros_like(forward)
    dy = np.zeros_like(forward)
    dx[:, :-1] = forward[:, 1:] - forward[:, :-1]
    dy[:-1] = forward[1:] - forward[:-1]
    boundary = np.sum(dx**2 + dy**2, axis=2) > 0.01 * fw_sq + 0.002
    return mismatch | boundary


def outside(flow: np.ndarray) -> np.ndarray:
    """(H, W) bool: x + flow(x) lies outside the frame, where bilinear sampling reads the zero border."""
    height, width = flow.shape[:2]
    grid_y, grid_x = np.mgrid[0:height, 0:width].astype(np.float32)
    x = grid_x + flow[..., 0]
    y = grid_y + flow[..., 1]
    return (x < 0) | (x > width - 1) | (y < 0) | (y > height - 1)


def pair_flow(a: np.ndarray, b: np.ndarray) -> PairFlow:
    """Flow both ways between display frames a and b, with a's visibility mask."""
    forward = dis_flow(a, b)
    backward = dis_flow(b, a)
    return PairFlow(forward, backward, (~occluded(forward, backward)).astype(np.float32))


def consecutive_flows(frames: np.ndarray) -> list[PairFlow]:
    """Flows between frames t and t+1 of an (N, H, W, 3) display sequence, for t = 0 .. N-2."""
    return [pair_flow(frames[t], frames[t + 1]) for t in range(len(frames) - 1)]


def skip_flows(frames: np.ndarray) -> list[PairFlow]:
    """Flows between frames t-1 and t+1, for t = 1 .. N-2 (the interpolation metric's)."""
    return [pair_flow(frames[t - 1], frames[t + 1]) for t in range(1, len(frames) - 1)]
