"""Colour conversion on the pinned OCIO config: round trips, known matrices, helpful errors."""

from __future__ import annotations

import numpy as np
import pytest

from cvgen.server.errors import InputError
from cvgen.server.io.color import ColorTransform, check_colorspace

LINEAR = "Linear Rec.709 (sRGB)"

#: Scene-linear values from deep shadow to bright highlights (HDR up to 100).
VALUES = np.concatenate([[0.0, 0.18, 1.0], np.logspace(-4, 2, 121)]).astype(np.float32)


def test_acescct_round_trip_greys() -> None:
    grey = np.repeat(VALUES[:, None], 3, axis=1)
    to_cct = ColorTransform(LINEAR, "ACEScct")
    back = to_cct.inverse().apply(to_cct.apply(grey))
    np.testing.assert_allclose(back, grey, rtol=1e-4, atol=1e-7)


def test_acescct_round_trip_saturated_hdr_colours() -> None:
    rgb = np.stack([VALUES, VALUES[::-1], np.roll(VALUES, 40)], axis=-1)
    to_cct = ColorTransform(LINEAR, "ACEScct")
    back = to_cct.inverse().apply(to_cct.apply(rgb))
    # Gamut conversion mixes channels, so a dark channel beside a channel at 100 inherits
    # rounding in proportion to the pixel's brightness: compare against that.
    brightness = np.abs(rgb).max(axis=1, keepdims=True)
    assert (np.abs(back - rgb) / brightness).max() < 1e-4


def test_acescct_of_mid_grey_is_the_published_value() -> None:
    cct = ColorTransform(LINEAR, "ACEScct").apply(np.full(3, 0.18, np.float32))
    np.testing.assert_allclose(cct, 0.4135884, atol=1e-4)


def test_acescg_and_linear_rec709() -> None:
    to_cg = ColorTransform(LINEAR, "ACEScg")
    primaries = to_cg.apply(np.eye(3, dtype=np.float32))
    # Rows are the Rec.709 primaries in AP1 (the standard D65 -> D60 adapted matrix, transposed).
    expected = np.array(
        [[0.6131, 0.0702, 0.0206], [0.3395, 0.9164, 0.1096], [0.0474, 0.0135, 0.8698]], np.float32
    )
    np.testing.assert_allclose(primaries, expected, atol=2e-3)
    np.testing.assert_allclose(to_cg.apply(np.ones(3, np.float32)), 1.0, atol=1e-4)
    rgb = np.stack([VALUES, np.roll(VALUES, 11), VALUES[::-1]], axis=-1)
    back = to_cg.inverse().apply(to_cg.apply(rgb))
    brightness = np.abs(rgb).max(axis=1, keepdims=True)
    assert (np.abs(back - rgb) / brightness).max() < 1e-5


def test_apply_leaves_a_read_only_plate_alone() -> None:
    plate = np.random.default_rng(1).random((8, 5, 3), dtype=np.float32) * 10
    before = plate.copy()
    plate.flags.writeable = False
    out = ColorTransform(LINEAR, "ACEScct").apply(plate)
    assert out.shape == plate.shape and out.dtype == np.float32
    assert np.array_equal(plate, before)
    with pytest.raises(ValueError, match="3 channels"):
        ColorTransform(LINEAR, "ACEScg").apply(np.zeros((2, 2, 4), np.float32))


def test_aliases_resolve_to_canonical_names() -> None:
    assert check_colorspace("lin_rec709_srgb") == LINEAR
    assert check_colorspace("lin_ap1") == "ACEScg"
    assert ColorTransform("ACES - ACEScct", "lin_srgb").src == "ACEScct"


@pytest.mark.parametrize(
    "name, suggestion",
    [("Linear Rec709", "Linear Rec.709 (sRGB)"), ("ACEScgg", "ACEScg"), ("ACEScc t", "ACEScct")],
)
def test_unknown_colour_space_suggests_close_names(name: str, suggestion: str) -> None:
    with pytest.raises(InputError, match="did you mean") as caught:
        ColorTransform(name, LINEAR)
    assert repr(name) in str(caught.value)
    assert repr(suggestion) in str(caught.value)
    assert caught.value.code == "bad_request"


def test_unknown_colour_space_without_close_match() -> None:
    with pytest.raises(InputError, match="unknown colour space 'xyzzy'") as caught:
        check_colorspace("xyzzy")
    assert "cg-config-v4.0.0" in str(caught.value)
