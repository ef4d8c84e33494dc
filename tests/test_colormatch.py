"""colormatch on real footage: the iHarmony4-style benchmark, and the op's exact invariants.

The footage is `woman-running.mp4` (120 real camera frames, 512x512). Composites are made the
iHarmony4 way: a region of the original frames is perturbed in colour and exposure, and the op
must bring it back; the plate under the matte is garbage, so any peeking shows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cvgen.protocol.errors import ProtocolError
from cvgen.protocol.images import Image
from cvgen.server.errors import Cancelled, InputError
from cvgen.server.io.color import ColorTransform
from cvgen.server.io.video import read_video
from cvgen.server.ops import get_op
from cvgen.server.ops.base import OpContext
from cvgen.server.ops.colormatch import OP, feathered

LINEAR = "Linear Rec.709 (sRGB)"
RGB = ("R", "G", "B")
FIRST = 1001  # host frame numbers, as in a 1001-based shot
#: What the plate holds under the matte: a loud magenta no honest method would ever look at.
GARBAGE = np.array([50.0, 0.0, 50.0], np.float32)


class MemoryShot:
    """A shot held in memory: role -> {frame: Image}; records every read."""

    def __init__(self, layers: dict[str, dict[int, Image]]) -> None:
        self.layers = layers
        numbers = sorted(layers["plate"])
        self.frames = range(numbers[0], numbers[-1] + 1)
        self.reads: list[tuple[str, int]] = []

    def has(self, role: str) -> bool:
        return role in self.layers

    def read(self, role: str, frame: int) -> Image:
        self.reads.append((role, frame))
        return self.layers[role][frame]


def decode(shared_data: Path, first: int, count: int) -> np.ndarray:
    """Frames of the clip, scene-linear Rec.709, (count, 512, 512, 3) float32."""
    frames = read_video(shared_data / "video" / "woman-running.mp4", colorspace=LINEAR, first=first, count=count)
    return np.stack([image.stack(RGB) for image in frames])


@pytest.fixture(scope="module")
def footage(shared_data: Path) -> np.ndarray:
    """The first 24 frames."""
    return decode(shared_data, 0, 24)


def ellipse(shape: tuple[int, int], cx: float, cy: float, rx: float, ry: float) -> tuple[np.ndarray, np.ndarray]:
    """A soft-edged elliptic matte (smoothstep over 15% of the radius) and its solid core."""
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]] + 0.5
    rho = np.hypot((x - cx) / rx, (y - cy) / ry)
    t = np.clip((1.15 - rho) / 0.15, 0, 1)
    # The core stays clear of the soft edge and of the inward feather, where the output mixes
    # in the plate (which is garbage here) by design.
    return (t * t * (3 - 2 * t)).astype(np.float32), rho <= 0.9


def perturb(frames: np.ndarray, gains: tuple[float, float, float], stops: float) -> np.ndarray:
    """A colour cast and an exposure change, as a grade or a mismatched light would make them."""
    return (frames * np.array(gains, np.float32) * np.float32(2**stops)).astype(np.float32)


def composite_shot(
    original: np.ndarray, fg: np.ndarray, matte: np.ndarray, fg_alpha: bool = False, matte_given: bool = True
) -> MemoryShot:
    """Plate = the original with garbage wherever the matte covers anything; the straight `fg`
    sent as RGB (`fg_alpha` False) or as RGBA premultiplied by the matte as its alpha, with the
    matte as a separate input when `matte_given`: the ways Nuke, Blender and scripts send them."""
    plate = original.copy()
    plate[:, matte > 0] = GARBAGE
    alpha = np.ones(matte.shape + (1,), np.float32)
    frames = range(FIRST, FIRST + len(original))
    if fg_alpha:
        fg = np.concatenate([fg * matte[..., None], np.broadcast_to(matte[..., None], fg.shape[:-1] + (1,))], -1)
    channels = RGB + ("A",) if fg_alpha else RGB
    layers = {
        "plate": {f: Image(np.concatenate([plate[i], alpha], -1), RGB + ("A",)) for i, f in enumerate(frames)},
        "fg": {f: Image(np.ascontiguousarray(fg[i], np.float32), channels) for i, f in enumerate(frames)},
    }
    if matte_given:
        layers["matte"] = {f: Image(matte, ("Y",)) for f in frames}
    return MemoryShot(layers)


def render(shot: MemoryShot, todo: list[int] | None = None, **params: object) -> dict[int, Image]:
    ctx = OpContext(todo=list(shot.frames) if todo is None else todo, colorspace=LINEAR)
    return dict(OP.run(shot, OP.resolve_params(params), ctx))


def rgb(images: dict[int, Image]) -> np.ndarray:
    return np.stack([images[f].stack(RGB) for f in sorted(images)])


# The harmonisation benchmark --------------------------------------------------------------------


REGIONS = {
    # (first frame, ellipse centre and radii): most of the runner, whose edge crosses the scene;
    # and her face, ringed by hair whose colour and light differ from the skin inside.
    "runner": (0, (256, 300, 120, 170)),
    "face": (54, (260, 170, 60, 80)),
}


#: How the foreground arrives (fg with alpha, matte given): straight RGB plus a matte; RGBA
#: premultiplied, its alpha the matte; RGBA premultiplied plus a matte (Nuke's node). An RGB fg
#: with no matte is refused (`test_fg_without_alpha_or_matte_is_refused_clearly`).
FORMS = {"rgb+matte": (False, True), "rgba": (True, False), "rgba+matte": (True, True)}


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("region", REGIONS)
@pytest.mark.parametrize(
    "name, gains, stops",
    [("warm+bright", (1.3, 1.0, 0.7), 0.8), ("cool+dark", (0.75, 0.95, 1.3), -0.8)],
)
def test_harmonisation_error_drops_on_real_footage(
    shared_data: Path, region: str, form: str, name: str, gains: tuple[float, float, float], stops: float
) -> None:
    first, (cx, cy, rx, ry) = REGIONS[region]
    original = decode(shared_data, first, 12)
    matte, core = ellipse(original.shape[1:3], cx, cy, rx, ry)
    fg_alpha, matte_given = FORMS[form]
    shot = composite_shot(original, perturb(original, gains, stops), matte, fg_alpha, matte_given)
    out = rgb(render(shot))
    before = float(np.mean((perturb(original, gains, stops)[:, core] - original[:, core]) ** 2))
    after = float(np.mean((out[:, core] - original[:, core]) ** 2))
    print(f"fMSE before {before:.5f} after {after:.5f} ({region}, {name}, {form}, ratio {after / before:.3f})")
    assert after < 0.5 * before
    clear = matte == 0
    assert np.array_equal(out[:, clear], original[:, clear])


@pytest.mark.parametrize("form", FORMS)
def test_no_negative_values_from_non_negative_inputs(shared_data: Path, form: str) -> None:
    """Darkening a foreground with black and near-black pixels (real footage, warmed and
    brightened so the correction pulls it down) must not push any of them below zero."""
    original = decode(shared_data, 0, 3)
    assert original.min() >= 0
    matte, _ = ellipse(original.shape[1:3], 256, 300, 120, 170)
    fg = perturb(original, (1.3, 1.0, 0.7), 0.8)
    fg[:, 280:300, 200:320] = 0  # a black stripe and a dark, saturated one inside the matte
    fg[:, 300:320, 200:320] = np.array([1e-3, 0.0, 2e-4], np.float32)
    out = rgb(render(composite_shot(original, fg, matte, *FORMS[form]), temporal=0.0))
    assert out.min() >= 0, f"{int((out < 0).sum())} negative values, down to {out.min():.4f}"


# Exactness outside the matte ----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_plate_is_bit_exact_outside_the_matte(footage: np.ndarray, dtype: str) -> None:
    """HDR, NaN and Inf plate pixels come back as they were, bit for bit, wherever the matte is 0."""
    h, w = footage.shape[1:3]
    matte, core = ellipse((h, w), 256, 280, 110, 150)
    plate = footage[0].copy()
    specials = [50.0, 1e4, np.nan, np.inf, -np.inf, -0.25, 6e4]
    for i, v in enumerate(specials):  # outside the matte, and under its solid core
        plate[10 + i, 10 : 40 + 10 * i] = v
        plate[260 + i, 250:260] = v
    plate = np.dstack([plate, np.full((h, w), 0.5), np.linspace(1, 9, h * w).reshape(h, w)]).astype(dtype)
    display = (-16, -8, w + 32, h + 16)
    attributes = {"camera": "A001", "lens_mm": 35.0}
    plate_image = Image(plate, RGB + ("A", "Z"), (3, 5), display, 1.5, attributes)
    # A premultiplied fg with its own alpha and a tighter data window (a rendered element's bbox).
    alpha = matte[:, 100:420, None]
    fg_rgb = perturb(footage[0], (1.2, 1.0, 0.8), 0.5)[:, 100:420] * alpha
    fg = Image(np.concatenate([fg_rgb, alpha], -1).astype(dtype), RGB + ("A",), (103, 5))
    shot = MemoryShot({"plate": {FIRST: plate_image}, "fg": {FIRST: fg}})
    before = plate.copy()
    out = render(shot)[FIRST]

    assert plate_image.pixels.tobytes() == before.tobytes(), "the op wrote into its input"
    assert out.pixels.dtype == plate.dtype
    assert (out.channels, out.origin, out.display, out.pixel_aspect) == (RGB + ("A", "Z"), (3, 5), display, 1.5)
    assert out.attributes == attributes
    bits = np.uint16 if dtype == "float16" else np.uint32
    clear = matte == 0
    assert np.array_equal(out.pixels[clear].view(bits), plate[clear].view(bits))
    assert np.array_equal(out.pixels[..., 3:].view(bits), plate[..., 3:].view(bits))
    assert np.isfinite(out.pixels[core][:, :3]).all(), "a solid matte must hide the plate's NaN and Inf"
    assert not np.array_equal(out.pixels[core], plate[core])


def test_feathered_matte_only_softens_inward() -> None:
    matte = np.zeros((60, 70), np.float32)
    matte[30:50, 35:60] = 1
    matte[0:20, 0:20] = 1  # touching the frame's edges: stays solid along them
    soft = feathered(matte, 2.0)
    assert np.array_equal(soft[matte == 0], np.zeros(int((matte == 0).sum()), np.float32))
    assert (soft <= matte).all() and soft.min() >= 0
    assert soft[40, 47] == 1 and soft[0, 0] == 1 and soft[0, 10] == 1
    assert 0 < soft[30, 47] < 1 and 0 < soft[10, 19] < 1
    assert feathered(matte, 0.0) is matte


# Temporal behaviour and resuming -------------------------------------------------------------------


def test_temporal_smoothing_steadies_the_correction(footage: np.ndarray) -> None:
    """With the fg's exposure jittering frame to frame, the smoothed correction jitters far less."""
    original = footage[:16]
    matte, core = ellipse(original.shape[1:3], 256, 300, 120, 170)
    jitter = np.random.default_rng(7).uniform(-0.4, 0.4, len(original))
    fg = np.stack([perturb(frame, (1.2, 1.0, 0.85), 0.5 + j) for frame, j in zip(original, jitter)])
    shot = composite_shot(original, fg, matte)
    to_log = ColorTransform(LINEAR, "ACEScct")

    def correction_steps(temporal: float) -> float:
        """Mean frame-to-frame change of the correction applied in the core, in ACEScct."""
        out = rgb(render(shot, temporal=temporal))
        applied = np.stack([np.mean(to_log.apply(o[core]) - to_log.apply(f[core]), axis=0) for o, f in zip(out, fg)])
        return float(np.abs(np.diff(applied, axis=0)).mean())

    off, on = correction_steps(0.0), correction_steps(3.0)
    print(f"correction change per frame: temporal off {off:.4f}, on {on:.4f}")
    assert on < 0.3 * off


def test_resumed_frames_are_bit_identical_and_read_only_their_window(footage: np.ndarray) -> None:
    original = footage[:24]
    matte, _ = ellipse(original.shape[1:3], 256, 300, 120, 170)
    shot = composite_shot(original, perturb(original, (1.3, 1.0, 0.7), 0.8), matte)
    full = render(shot)
    assert sorted(full) == list(shot.frames)
    shot.reads.clear()
    todo = [FIRST + 2, FIRST + 13, FIRST + 14]
    part = render(shot, todo=todo)
    assert list(part) == todo
    for f in todo:
        assert part[f].pixels.tobytes() == full[f].pixels.tobytes()
    # temporal 3 reaches 9 frames each way: frames 1020..1024 are never needed.
    assert max(f for _, f in shot.reads) == FIRST + 14 + 9


# Bad input, cancel, progress -----------------------------------------------------------------------


def small_shot(**roles: Image) -> MemoryShot:
    return MemoryShot({role: {FIRST: image} for role, image in roles.items()})


def plate_image(channels: tuple[str, ...] = RGB + ("A",), dtype: str = "float32") -> Image:
    return Image(np.full((16, 16, len(channels)), 0.2, dtype), channels)


def test_fg_without_alpha_or_matte_is_refused_clearly() -> None:
    shot = small_shot(plate=plate_image(), fg=plate_image(RGB))
    with pytest.raises(InputError, match=r"no alpha channel A \(it has R, G, B\) and no matte input"):
        render(shot)


def test_bad_channels_and_pixel_types_are_refused_clearly() -> None:
    with pytest.raises(InputError, match=r"plate has no G, B channel\(s\); it has R, A"):
        render(small_shot(plate=plate_image(("R", "A")), fg=plate_image()))
    with pytest.raises(InputError, match=r"matte has none of the channels A, Y, R, matte; it has U, V"):
        render(small_shot(plate=plate_image(), fg=plate_image(RGB), matte=plate_image(("U", "V"))))
    with pytest.raises(InputError, match="scene-linear float frames .* uint8"):
        render(small_shot(plate=Image(np.zeros((4, 4, 3), np.uint8), RGB), fg=plate_image()))


@pytest.mark.parametrize(
    "params, message",
    [
        ({"strength": 1.5}, "colormatch strength must be between 0 and 1; it is 1.5"),
        ({"feather": -1.0}, "feather must be between"),
        ({"temporal": "lots"}, "colormatch temporal must be a number, not 'lots'"),
        ({"gain": 2.0}, "colormatch has no parameter gain"),
    ],
)
def test_bad_params_are_protocol_errors(params: dict[str, object], message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        OP.resolve_params(params)


def test_cancel_takes_effect_at_the_next_step(footage: np.ndarray) -> None:
    matte, _ = ellipse(footage.shape[1:3], 256, 300, 120, 170)
    shot = composite_shot(footage[:4], footage[:4], matte)
    calls = []

    def cancelled() -> bool:
        calls.append(1)
        return len(calls) > 1

    ctx = OpContext(todo=list(shot.frames), colorspace=LINEAR, is_cancelled=cancelled)
    with pytest.raises(Cancelled):
        list(OP.run(shot, OP.resolve_params({}), ctx))
    assert len(calls) == 2


def test_every_frame_reports_progress_and_the_registry_serves_the_op(footage: np.ndarray) -> None:
    matte, _ = ellipse(footage.shape[1:3], 256, 300, 120, 170)
    shot = composite_shot(footage[:6], footage[:6], matte)
    steps: list[tuple[int, int, int]] = []
    ctx = OpContext(todo=list(shot.frames), colorspace=LINEAR, on_step=lambda *s: steps.append(s))
    list(OP.run(shot, OP.resolve_params({}), ctx))
    assert sorted(s for s in steps if s[1] == 2) == [(f, 2, 2) for f in shot.frames]
    assert len([s for s in steps if s[1] == 1]) == len(shot.frames)  # each frame measured once
    assert get_op("colormatch") is OP
    assert [p["name"] for p in OP.schema()["params"]] == ["strength", "contrast", "radius", "feather", "temporal"]


def test_alpha_and_separate_matte_agree_and_strength_zero_keeps_the_fg(footage: np.ndarray) -> None:
    """A premultiplied fg with alpha is the same composite as a straight fg plus that alpha as matte."""
    original = footage[:3]
    matte, core = ellipse(original.shape[1:3], 256, 300, 120, 170)
    fg = perturb(original, (1.3, 1.0, 0.7), 0.8)
    separate = composite_shot(original, fg, matte)
    premultiplied_fg = {
        f: Image(np.dstack([fg[i] * matte[..., None], matte]), RGB + ("A",)) for i, f in enumerate(separate.frames)
    }
    premultiplied = MemoryShot({"plate": separate.layers["plate"], "fg": premultiplied_fg})
    np.testing.assert_allclose(rgb(render(premultiplied)), rgb(render(separate)), rtol=1e-4, atol=1e-6)
    kept = rgb(render(separate, strength=0.0))
    np.testing.assert_allclose(kept[:, core], fg[:, core], rtol=1e-3, atol=1e-5)
