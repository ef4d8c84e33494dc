"""Highlight compression into the models' display space: exact round trips, the old clip kept, HDR kept."""

from __future__ import annotations

import numpy as np
import pytest
from support import make_shot

from cvgen.protocol import JobSpec, ProtocolError, frame_path
from cvgen.server.core import latents
from cvgen.server.core.highlights import KNEE, MODEL_SPACE, ModelColor, compress, expand
from cvgen.server.core.models import ModelCache, ModelRegistry
from cvgen.server.io.color import ColorTransform
from cvgen.server.io.exr import read_exr
from cvgen.server.jobs.runner import run_job
from cvgen.server.ops.harmonize import OP, Harmonizer

LINEAR = "Linear Rec.709 (sRGB)"

#: Scene-linear values from black to 64: everything a foreground's highlights are likely to hold.
UP_TO_64 = np.concatenate([np.linspace(0, 1, 4001), np.logspace(0, np.log10(64), 4001)]).astype(np.float32)


def greys(values: np.ndarray) -> np.ndarray:
    return np.repeat(values[:, None], 3, axis=1)


def relative_error(back: np.ndarray, rgb: np.ndarray) -> float:
    brightness = np.abs(rgb).max(axis=-1, keepdims=True)
    seen = brightness[..., 0] > 0
    return float((np.abs(back.astype(np.float64) - rgb) / np.where(brightness > 0, brightness, 1))[seen].max())


def test_values_up_to_64_come_back_to_float32_precision() -> None:
    color = ModelColor(LINEAR, "compress")
    display = color.to_model(greys(UP_TO_64))
    assert display.dtype == np.float32 and display.max() < 1.0
    back = color.from_model(display)
    err = relative_error(back, greys(UP_TO_64))
    print(f"HDR round trip through the model's display space, 0..64: max relative error {err:.2e}")
    # float32 display values hold 64 to a few ulps of the shoulder's slope (measured 4.2e-6)
    assert err < 5e-6
    assert np.array_equal(back[UP_TO_64 == 0], greys(np.zeros(1, np.float32)))


def test_saturated_hdr_colours_round_trip_in_acescg() -> None:
    rgb = np.stack([UP_TO_64, UP_TO_64[::-1], np.roll(UP_TO_64, 999)], axis=-1) * 0.9
    color = ModelColor("ACEScg", "compress")
    back = color.from_model(color.to_model(rgb))
    # inside the Rec.709 gamut everything comes back; the gamut matrix adds its float32 rounding
    inside = ColorTransform("ACEScg", LINEAR).apply(rgb).min(axis=-1) >= 0
    assert inside.sum() > 1000
    assert relative_error(back[inside], rgb[inside]) < 2e-5


def test_the_shoulder_is_smooth_monotone_and_below_one() -> None:
    x = np.concatenate([np.linspace(-1, 4, 50001), np.logspace(0, 30, 301)])
    y = compress(x)
    assert np.array_equal(y[x <= KNEE], x[x <= KNEE])  # identity below the knee
    assert (np.diff(y[np.argsort(x)]) >= 0).all() and y.max() <= 1.0
    assert compress(np.array([np.inf]))[0] == 1.0 and compress(np.array([1e6]))[0] < 1.0
    h = 1e-7  # C1: the slope just above the knee is the identity's, 1
    slope_above = (compress(np.array([KNEE + h]))[0] - KNEE) / h
    assert abs(slope_above - 1.0) < 1e-6


def test_the_top_of_the_display_range_comes_back_finite() -> None:
    out = expand(np.array([0.999999, 1.0, 1.5], np.float32))
    assert np.isfinite(out).all() and (out <= 65504.0).all() and out[1] == out[2] == 65504.0


def test_a_saturated_model_output_is_held_to_the_brightest_value_shown() -> None:
    """A VAE clamps at 1: that must not come back as a 65,504 speck, only as bright as the input."""
    color = ModelColor(LINEAR, "compress")
    shown = greys(np.array([0.2, 3.0], np.float32))
    peak = color.peak(shown)
    back = color.from_model(np.ones((1, 2, 3), np.float32), peak)
    assert peak == pytest.approx(3.0, rel=1e-6) and np.allclose(back, 3.0, rtol=1e-5)
    assert color.peak(greys(np.array([0.1, np.nan, np.inf], np.float32))) == 1.0


def test_below_the_knee_the_display_values_are_the_model_space_of_ocio() -> None:
    rgb = greys(np.linspace(0, KNEE, 501, dtype=np.float32))
    ours = ModelColor(LINEAR, "compress").to_model(rgb)
    ocio = ColorTransform(LINEAR, MODEL_SPACE).apply(rgb)
    np.testing.assert_allclose(ours, ocio, atol=1e-4)  # OCIO's fast power function is good to ~4e-5


def todays_conversion(rgb: np.ndarray, colorspace: str) -> tuple[np.ndarray, np.ndarray]:
    """The conversion harmonize used before `highlights` existed: display clipped to [0, 1]."""
    to_model = ColorTransform(colorspace, MODEL_SPACE)
    display = np.clip(np.nan_to_num(to_model.apply(rgb), nan=0.0), 0.0, 1.0)
    return display, to_model.inverse().apply(display)


@pytest.mark.parametrize("colorspace", [LINEAR, "ACEScg"])
def test_clip_keeps_todays_conversion_bit_for_bit(colorspace: str) -> None:
    rng = np.random.default_rng(3)
    rgb = np.concatenate([greys(UP_TO_64), rng.uniform(-0.5, 40, (999, 3)).astype(np.float32),
                          np.array([[np.nan, np.inf, -np.inf]], np.float32)])
    color = ModelColor(colorspace, "clip")
    display, back = todays_conversion(rgb, colorspace)
    assert np.array_equal(color.to_model(rgb), display)
    assert np.array_equal(color.from_model(display), back)
    assert back.max() <= 1.0 + 1e-4


def test_every_diffusion_op_offers_highlights() -> None:
    assert OP.resolve_params({})["highlights"] == "compress"
    assert OP.resolve_params({"highlights": "clip"})["highlights"] == "clip"
    with pytest.raises(ProtocolError, match="highlights must be one of compress, clip"):
        OP.resolve_params({"highlights": "tonemap"})


@pytest.fixture(scope="module")
def models() -> ModelCache:
    return ModelCache(ModelRegistry.load())


def identity_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """The model steps of harmonize made the identity, so a render shows its colour path alone:
    the VAE hands back its input as the latent and the latent as the image, inversion and
    generation return the composite's own latent."""
    monkeypatch.setattr(latents, "encode", lambda vae, images: (images.clone(), latents.Padding(0, 0, 0, 0)))
    monkeypatch.setattr(latents, "decode", lambda vae, z, padding: z.float())
    monkeypatch.setattr(Harmonizer, "invert",
                        lambda self, images, z0, on_step: [[z0[j : j + 1]] * self.k for j in range(len(z0))])
    monkeypatch.setattr(Harmonizer, "generate", lambda self, start, on_step, guide=None: guide.z0)


@pytest.mark.parametrize("highlights", ["compress", "clip"])
def test_harmonize_keeps_highlights_inside_the_matte(models, tmp_path, monkeypatch, highlights):
    identity_model(monkeypatch)
    shot = make_shot(tmp_path / "shot", range(1, 2))
    spec = JobSpec("harmonize", (1, 1), shot, params={"steps": 4, "strength": 0.5, "feather": 0.0,
                                                      "highlights": highlights}, name="hl")
    run_job(spec, tmp_path / "out", models=models)
    out = read_exr(tmp_path / "out" / "hl.0001.exr").pixels[..., :3].astype(np.float32)
    fg = read_exr(frame_path(shot["fg"], 1)).pixels.astype(np.float32)
    solid = fg[..., 3] == 1  # the composite is the foreground itself here
    above = solid[..., None] & (fg[..., :3] > 1)
    assert above.sum() > 20
    if highlights == "compress":
        print(f"foreground max {fg[..., :3][solid].max():.3f}, harmonized max {out[solid].max():.3f}")
        np.testing.assert_allclose(out[solid], fg[..., :3][solid], rtol=2e-3)
    else:
        assert out[above].max() <= 1.0 + 1e-3
