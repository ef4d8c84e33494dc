"""Mattes on latent and attention grids (METHODS.md, "Matte in latent space").

A matte is an (N, 1, H, W) float tensor in [0, 1], 1 = foreground. It is resized to a latent or
attention grid by area averaging, binarised at 0.5 where a token set is needed and dilated by one
latent pixel for the background latent blend.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .latents import Padding


def _check(matte: torch.Tensor) -> None:
    if matte.ndim != 4 or matte.shape[1] != 1:
        raise ValueError(f"matte must be (N, 1, H, W) but has shape {tuple(matte.shape)}")


def to_grid(matte: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize (N, 1, H, W) `matte` to (N, 1, h, w) = `size` by area averaging.

    Each cell is the mean of the pixels it covers (exact when H, W are multiples of h, w; otherwise
    adaptive pooling's overlapping windows). Integer mattes are treated as float.
    """
    _check(matte)
    h, w = int(size[0]), int(size[1])
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive but is {size}")
    if not matte.is_floating_point():
        matte = matte.float()
    if tuple(matte.shape[-2:]) == (h, w):
        return matte
    return F.adaptive_avg_pool2d(matte, (h, w))


def latent_grid(matte: torch.Tensor, padding: Padding, scale: int) -> torch.Tensor:
    """`matte` on the latent grid of an image that `latents.encode` padded by `padding`.

    The latents of an odd-sized plate come from its edge-replicated padded image, so the matte is
    padded the same way before each `scale` x `scale` block is averaged: resizing the unpadded
    matte to the latent grid would stretch it and shift its edge by up to a cell.
    """
    _check(matte)
    if scale < 1:
        raise ValueError(f"scale must be at least 1 but is {scale}")
    if not matte.is_floating_point():
        matte = matte.float()
    if padding.top or padding.bottom or padding.left or padding.right:
        matte = F.pad(matte, (padding.left, padding.right, padding.top, padding.bottom), mode="replicate")
    height, width = matte.shape[-2:]
    if height % scale or width % scale:
        raise ValueError(f"a padded {width}x{height} matte is not a multiple of {scale}")
    return F.avg_pool2d(matte, scale) if scale > 1 else matte


def binarize(matte: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """1 where `matte` >= `threshold` (a half-covered cell counts as foreground), else 0; same dtype."""
    dtype = matte.dtype if matte.is_floating_point() else torch.float32
    return (matte >= threshold).to(dtype)


def dilate(matte: torch.Tensor, pixels: int = 1) -> torch.Tensor:
    """Grow `matte` by `pixels` in every direction (8-connected: a max over a square window)."""
    _check(matte)
    if pixels < 0:
        raise ValueError(f"pixels must be at least 0 but is {pixels}")
    if not matte.is_floating_point():
        matte = matte.float()
    if pixels == 0:
        return matte
    return F.max_pool2d(matte, kernel_size=2 * pixels + 1, stride=1, padding=pixels)
