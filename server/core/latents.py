"""Pixels to latents and back (METHODS.md, "Shared building blocks: Encode / decode").

`z0 = s * vae.encode(x).latent_dist.mean` for x in [-1, 1], decoded with `vae.decode(z / s)`.
Sizes that are not a multiple of the VAE's downsampling factor are padded by edge replication on
the bottom and right and cropped back afterwards; padding only there keeps latent pixel (i, j)
over image pixels (8i..8i+7, 8j..8j+7), so mattes resized to the latent grid stay aligned.
Plates larger than the VAE's native size go through diffusers' tiled encoder / decoder.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from diffusers import AutoencoderKL


@dataclass(frozen=True)
class Padding:
    """Pixels added on each side to reach a multiple (`pad_to_multiple` adds only bottom and right)."""

    top: int
    bottom: int
    left: int
    right: int


def pad_to_multiple(images: torch.Tensor, multiple: int) -> tuple[torch.Tensor, Padding]:
    """Pad (N, C, H, W) `images` by edge replication so H and W are multiples of `multiple`.

    The padding goes on the bottom and right; the returned `Padding` says how much, for `crop`.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W) but has shape {tuple(images.shape)}")
    if multiple < 1:
        raise ValueError(f"multiple must be at least 1 but is {multiple}")
    height, width = images.shape[-2:]
    padding = Padding(top=0, bottom=-height % multiple, left=0, right=-width % multiple)
    if padding.bottom == 0 and padding.right == 0:
        return images, padding
    padded = F.pad(images, (padding.left, padding.right, padding.top, padding.bottom), mode="replicate")
    return padded, padding


def crop(images: torch.Tensor, padding: Padding, scale: int = 1) -> torch.Tensor:
    """Remove `padding` from (..., H, W) `images` whose grid is 1/`scale` of the padded pixels.

    At `scale` > 1 (a latent grid) each side loses `padding // scale` cells: a cell that is only
    partly padding is kept, so a 37-pixel-high image keeps all 5 latent rows of its 40-pixel pad.
    """
    if scale < 1:
        raise ValueError(f"scale must be at least 1 but is {scale}")
    top, bottom = padding.top // scale, padding.bottom // scale
    left, right = padding.left // scale, padding.right // scale
    height, width = images.shape[-2:]
    return images[..., top : height - bottom, left : width - right]


def vae_scale_factor(vae: AutoencoderKL) -> int:
    """Pixels per latent cell along each axis: 2 ** (number of VAE blocks - 1), 8 for SD."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def _native_size(vae: AutoencoderKL) -> int:
    size = vae.config.sample_size
    return int(size[0] if isinstance(size, (list, tuple)) else size)


@contextmanager
def _tiling(vae: AutoencoderKL, on: bool) -> Iterator[None]:
    """Turn diffusers' tiled VAE on for the block when `on`; put the previous setting back after."""
    was = bool(getattr(vae, "use_tiling", False))
    if on and not was:
        vae.enable_tiling()
    try:
        yield
    finally:
        if on and not was:
            vae.disable_tiling()


def encode(vae: AutoencoderKL, images: torch.Tensor) -> tuple[torch.Tensor, Padding]:
    """Encode (N, 3, H, W) `images` in [-1, 1] of any size to `scaling_factor`-scaled latents.

    Returns the latents (in the VAE's dtype and on its device, the padded size divided by the
    scale factor) and the `Padding` that `decode` needs. The latent mean is used, never a sample,
    so encoding the same frame twice gives the same latents. Tiled when H or W exceeds the VAE's
    native size (`vae.config.sample_size`).
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (N, 3, H, W) but has shape {tuple(images.shape)}")
    padded, padding = pad_to_multiple(images, vae_scale_factor(vae))
    padded = padded.to(device=vae.device, dtype=vae.dtype)
    tiled = max(padded.shape[-2:]) > _native_size(vae)
    with torch.no_grad(), _tiling(vae, tiled):
        mean = vae.encode(padded).latent_dist.mean
    return mean * vae.config.scaling_factor, padding


def decode(vae: AutoencoderKL, latents: torch.Tensor, padding: Padding) -> torch.Tensor:
    """Decode scaled `latents` to (N, 3, H, W) float32 pixels in roughly [-1, 1], cropped by `padding`.

    Tiled when the decoded size exceeds the VAE's native size, as in `encode`.
    """
    if latents.ndim != 4:
        raise ValueError(f"latents must be (N, C, h, w) but has shape {tuple(latents.shape)}")
    factor = vae_scale_factor(vae)
    z = latents.to(device=vae.device, dtype=vae.dtype) / vae.config.scaling_factor
    tiled = max(z.shape[-2:]) * factor > _native_size(vae)
    with torch.no_grad(), _tiling(vae, tiled):
        images = vae.decode(z, return_dict=False)[0]
    return crop(images, padding).float()


def decode_frame(vae: AutoencoderKL, latent: torch.Tensor, padding: Padding) -> np.ndarray:
    """One frame's (1, C, h, w) latent as (H, W, 3) float32 in [0, 1], the model's display-referred
    space, on the CPU: what ops convert back to the shot's scene-linear space."""
    images = decode(vae, latent, padding)
    return ((images[0].float().cpu().numpy().transpose(1, 2, 0) + 1) / 2).clip(0, 1)
