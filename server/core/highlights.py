"""Scene-linear pixels into a diffusion model's display space and back, highlights included.

Stable Diffusion models see sRGB in [0, 1]. Clipping there loses every highlight inside the matte
for good (a foreground at 2.5 comes back at 1.0). `compress` instead rolls linear Rec.709 off
through a shoulder before the sRGB encoding, and unrolls it after decoding:

    y = x                                          for x <= K
    y = 1 - (1 - K) / sqrt(1 + 2 (x - K) / (1 - K))  above,  K = 0.5

Why this curve: below the knee the model sees exactly what it saw before (diffuse whites and
everything darker are untouched up to 0.5 linear, 0.735 sRGB); at the knee value and slope match
(C1), so no edge or banding appears where the shoulder starts; above it, [0, inf) lands in [0, 1)
with a closed-form inverse. The square-root tail is the compromise between two limits. A float32
display value holds x to a relative error of about ulp / (slope * x), and a faster tail (Reinhard's
x / (1 + x), or an exponential) leaves so little of [0, 1) to the range 1..64 that 64 comes back
only to 1e-4 or worse. A slower one (a lower power) keeps 64 better but makes the model's small
errors near the top explode: display 0.99 means 123 here, but 3e4 with a fourth-root tail. Here 1.0
is 0.86 in sRGB, 2.5 is 0.92, 64 is 0.986; values up to 64 come back to 4e-6.

The sRGB encoding is computed here, in float64, by its IEC 61966-2-1 formula (OCIO's processor
uses a fast power function good to 4e-5, which the shoulder would amplify ~25-fold at 64); it is
the `MODEL_SPACE` of the pinned OCIO config. `clip` is the conversion used before `compress`
existed, bit for bit.
"""

from __future__ import annotations

import numpy as np

from ..io.color import ColorTransform
from ..ops.base import Param

#: The display-referred space Stable Diffusion models were trained on, and its linear light.
MODEL_SPACE = "sRGB Encoded Rec.709 (sRGB)"
MODEL_LINEAR = "Linear Rec.709 (sRGB)"

MODES = ("compress", "clip")

#: Linear value where the shoulder starts.
KNEE = 0.5
#: What the top of the display range (1.0, or a model's output clipped there) expands to: the
#: largest half float, so every result stays finite in any EXR.
CEILING = 65504.0

PARAM = Param("highlights", "choice", "compress",
              "values above 1 inside the matte: compress (rolled off into the model's range and "
              "restored after, so highlights survive) or clip (at 1, as before)", choices=MODES)


def compress(x: np.ndarray) -> np.ndarray:
    """Linear light into [.., 1): identity below `KNEE`, the square-root shoulder above (float64)."""
    x = np.asarray(x, np.float64)
    with np.errstate(invalid="ignore"):
        above = x > KNEE
        shoulder = 1 - (1 - KNEE) / np.sqrt(1 + 2 * (np.where(above, x, KNEE) - KNEE) / (1 - KNEE))
    return np.where(above, shoulder, x)


def expand(y: np.ndarray) -> np.ndarray:
    """The inverse of `compress` below 1; 1 and above become `CEILING` (float64)."""
    y = np.asarray(y, np.float64)
    above = y > KNEE
    u = (1 - np.minimum(np.where(above, y, KNEE), 1.0)) / (1 - KNEE)
    with np.errstate(divide="ignore"):
        shoulder = KNEE + (1 - KNEE) / 2 * (1 / np.square(u) - 1)
    return np.where(above, np.minimum(shoulder, CEILING), y)


def _srgb_encode(linear: np.ndarray) -> np.ndarray:
    return np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * np.abs(linear) ** (1 / 2.4) - 0.055)


def _srgb_decode(encoded: np.ndarray) -> np.ndarray:
    return np.where(encoded <= 0.04045, encoded / 12.92, ((np.abs(encoded) + 0.055) / 1.055) ** 2.4)


class ModelColor:
    """A shot's colour space to a model's display space in [0, 1] and back, per `highlights` mode."""

    def __init__(self, colorspace: str, highlights: str) -> None:
        if highlights not in MODES:
            raise ValueError(f"highlights must be one of {', '.join(MODES)}, not {highlights!r}")
        self.mode = highlights
        target = MODEL_LINEAR if highlights == "compress" else MODEL_SPACE
        self._to = ColorTransform(colorspace, target)
        self._back = self._to.inverse()

    def to_model(self, rgb: np.ndarray) -> np.ndarray:
        """Display values in [0, 1] (float32); NaN becomes 0, negatives 0."""
        converted = self._to.apply(rgb)
        if self.mode == "compress":
            with np.errstate(invalid="ignore"):
                converted = _srgb_encode(compress(converted))
        return np.clip(np.nan_to_num(converted, nan=0.0), 0.0, 1.0).astype(np.float32)

    def peak(self, rgb: np.ndarray) -> float:
        """The brightest finite value of `rgb` in the model's linear light, and at least 1: what a
        regenerated frame is held to. A real VAE clamps its output at 1, which `expand` would turn
        into 65,504; no regenerated pixel should be brighter than anything the model was shown."""
        linear = self._to.apply(rgb) if self.mode == "compress" else rgb
        finite = linear[np.isfinite(linear)]
        return max(1.0, float(finite.max())) if finite.size else 1.0

    def from_model(self, display: np.ndarray, peak: float = CEILING) -> np.ndarray:
        """The shot's colour space (float32) from display values in [0, 1], no brighter than `peak`
        (model linear light, see `peak`)."""
        if self.mode == "compress":
            linear = np.minimum(expand(_srgb_decode(np.asarray(display, np.float64))), peak)
            display = linear.astype(np.float32)
        return self._back.apply(display)
