"""A plate of any size at a video model's own working size, and back.

Video models are trained at one frame area (SVD: 1024 x 576) and need sides that are a multiple of
their total downsampling (VAE times UNet: 64 for SVD). `Fit` scales the plate to that area keeping
its aspect, pads the rest by edge replication (bottom and right, as `latents.pad_to_multiple`
does), and after the model crops the padding off and scales back to the plate's size. Scaling
never distorts: a 2.39:1 plate is not squeezed into 16:9 as the Videoshop authors' resize does.

The area and multiple are read from the model's config, so the tiny test model works at a few
hundred pixels and the real one at 1024 x 576.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Fit:
    """A `height` x `width` plate scaled to `scaled` inside the model's `size` (both (h, w))."""

    height: int
    width: int
    scaled: tuple[int, int]
    size: tuple[int, int]

    def to_model(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, height, width) to (N, C, *size): scaled with antialiasing, then edge-padded."""
        h, w = self.scaled
        x = F.interpolate(images, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
        return F.pad(x, (0, self.size[1] - w, 0, self.size[0] - h), mode="replicate")

    def from_model(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, *size) back to (N, C, height, width): the padding cropped, then scaled."""
        h, w = self.scaled
        return F.interpolate(images[..., :h, :w], size=(self.height, self.width), mode="bilinear",
                             antialias=True, align_corners=False)


def fit(height: int, width: int, area: int, multiple: int) -> Fit:
    """The working size of about `area` pixels with the plate's aspect, sides rounded up to `multiple`."""
    aspect = width / height
    size = (multiple * math.ceil(math.sqrt(area / aspect) / multiple),
            multiple * math.ceil(math.sqrt(area * aspect) / multiple))
    scale = min(size[0] / height, size[1] / width)
    scaled = (min(size[0], max(1, round(height * scale))), min(size[1], max(1, round(width * scale))))
    return Fit(height, width, scaled, size)
