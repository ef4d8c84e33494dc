"""Video import of real footage, and contact sheets made from it."""

from __future__ import annotations

import os
from pathlib import Path

import av
import numpy as np
import OpenImageIO as oiio
import pytest

from cvgen.protocol.images import Image
from cvgen.server.errors import InputError
from cvgen.server.io.color import ColorTransform
from cvgen.server.io.preview import contact_sheet
from cvgen.server.io.video import read_video, video_info

CLIP = Path(__file__).resolve().parents[2] / "shared" / "data" / "video" / "woman-running.mp4"
KEPT = (0, 1, 60, 118, 119)


@pytest.fixture(scope="module")
def decoded() -> dict:
    """One pass over the whole clip: frame count, per-frame checks, and a few frames kept."""
    assert CLIP.is_file(), f"test footage missing: {CLIP}"
    frames, kept, shapes, dtypes, lows, highs, means, alpha_ok = 0, {}, set(), set(), [], [], [], True
    for index, image in enumerate(read_video(CLIP)):
        frames += 1
        shapes.add(image.pixels.shape)
        dtypes.add(image.pixels.dtype)
        rgb = image.stack(("R", "G", "B"))
        lows.append(rgb.min())
        highs.append(rgb.max())
        means.append(rgb.mean())
        alpha_ok &= bool((image.channel("A") == 1).all())
        if index in KEPT:
            kept[index] = image
    return {"frames": frames, "kept": kept, "shapes": shapes, "dtypes": dtypes, "low": min(lows),
            "high": max(highs), "means": means, "alpha_ok": alpha_ok}


def test_clip_decodes_all_frames(decoded: dict) -> None:
    assert decoded["frames"] == 120
    assert decoded["shapes"] == {(512, 512, 4)}
    assert decoded["dtypes"] == {np.dtype("float32")}
    assert decoded["alpha_ok"]
    first = decoded["kept"][0]
    assert first.channels == ("R", "G", "B", "A")
    assert first.attributes["FramesPerSecond"] == [20, 1]
    assert (first.data_window, first.display, first.pixel_aspect) == ((0, 0, 512, 512), (0, 0, 512, 512), 1.0)


def test_linear_values_are_sensible(decoded: dict) -> None:
    assert decoded["low"] >= -1e-3 and decoded["high"] <= 1.001
    assert all(0.1 < m < 0.6 for m in decoded["means"])
    # Linear light is the sRGB decoding of what a player shows.
    frame = decoded["kept"][60]
    shown = next(read_video(CLIP, colorspace="sRGB Encoded Rec.709 (sRGB)", first=60, count=1))
    encoded = shown.stack(("R", "G", "B")).astype(np.float64)
    decoded_srgb = np.where(encoded <= 0.04045, encoded / 12.92, ((encoded + 0.055) / 1.055) ** 2.4)
    np.testing.assert_allclose(frame.stack(("R", "G", "B")), decoded_srgb, atol=2e-3)
    assert frame.stack(("R", "G", "B")).mean() < encoded.mean()


def test_first_and_count_select_frames(decoded: dict) -> None:
    tail = list(read_video(CLIP, first=118, count=10))
    assert len(tail) == 2
    assert np.array_equal(tail[0].pixels, decoded["kept"][118].pixels)
    assert np.array_equal(tail[1].pixels, decoded["kept"][119].pixels)
    pair = list(read_video(CLIP, count=2))
    assert [np.array_equal(a.pixels, decoded["kept"][i].pixels) for i, a in enumerate(pair)] == [True, True]
    assert list(read_video(CLIP, count=0)) == []
    with pytest.raises(ValueError, match="must not be negative"):
        read_video(CLIP, first=-1)


def test_acescg_working_space(decoded: dict) -> None:
    aces = next(read_video(CLIP, colorspace="ACEScg", count=1))
    expected = ColorTransform("Linear Rec.709 (sRGB)", "ACEScg").apply(decoded["kept"][0].stack(("R", "G", "B")))
    np.testing.assert_allclose(aces.stack(("R", "G", "B")), expected, atol=1e-5)


def test_video_info() -> None:
    assert video_info(CLIP) == {"frames": 120, "width": 512, "height": 512, "fps": 20.0}


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"missing\.mp4: no such file"):
        read_video(tmp_path / "missing.mp4")
    with pytest.raises(InputError, match=r"missing\.mov: no such file"):
        video_info(tmp_path / "missing.mov")


def test_not_a_video(tmp_path: Path) -> None:
    (tmp_path / "notes.mp4").write_text("not a movie\n" * 100)
    with pytest.raises(InputError, match=r"notes\.mp4: FFmpeg cannot open it"):
        read_video(tmp_path / "notes.mp4")
    with pytest.raises(InputError, match="is a folder"):
        read_video(tmp_path)


def test_truncated_video(tmp_path: Path) -> None:
    data = CLIP.read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"cut\.mp4"):
        for _ in read_video(tmp_path / "cut.mp4"):
            pass


def test_audio_only_file(tmp_path: Path) -> None:
    path = tmp_path / "sound.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 8000
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    with pytest.raises(InputError, match=r"sound\.mp4: it has no video stream"):
        read_video(path)


def test_unknown_colour_space_is_refused_before_decoding() -> None:
    with pytest.raises(InputError, match="did you mean"):
        read_video(CLIP, colorspace="Linear Rec709")


# --- contact sheets ---------------------------------------------------------------------------


def _read_png(path: Path) -> np.ndarray:
    inp = oiio.ImageInput.open(str(path))
    assert inp is not None and inp.format_name() == "png"
    pixels = inp.read_image(oiio.TypeUInt8)
    inp.close()
    return pixels


def test_contact_sheet_of_footage(decoded: dict, tmp_path: Path) -> None:
    first, second = decoded["kept"][0], decoded["kept"][1]
    grey = Image(np.full((100, 200, 1), 0.18, np.float32), ("Y",))
    contact_sheet([[first, second], [grey]], tmp_path / "sheet.png")
    assert os.listdir(tmp_path) == ["sheet.png"]
    sheet = _read_png(tmp_path / "sheet.png")
    assert sheet.shape == (612, 1024, 3) and sheet.dtype == np.uint8
    # Back in display space: the decoded 8-bit frame, give or take rounding.
    shown = next(read_video(CLIP, colorspace="sRGB Encoded Rec.709 (sRGB)", count=1)).stack(("R", "G", "B"))
    assert np.abs(sheet[:512, :512].astype(np.float32) - shown * 255).max() <= 1.5
    assert np.abs(sheet[512:, :200].astype(int) - 118).max() <= 1  # 0.18 linear is sRGB 118
    assert sheet[512:, 200:].max() == 0


def test_contact_sheet_scales_down_and_cleans_values(tmp_path: Path) -> None:
    pixels = np.full((50, 3000, 3), 0.5, np.float32)
    pixels[:, :300] = np.nan
    pixels[:, 300:600] = np.inf
    pixels[:, 600:900] = -4
    contact_sheet([[Image(pixels, ("R", "G", "B"))]], tmp_path / "wide.png", max_width=600)
    sheet = _read_png(tmp_path / "wide.png")
    assert sheet.shape == (10, 600, 3)
    assert sheet[:, 20:40].max() == 0  # NaN shows black
    assert sheet[:, 80:100].min() == 255  # infinity clips to white
    assert sheet[:, 140:160].max() == 0  # negative clips to black
    assert np.abs(sheet[:, 300:].astype(int) - 188).max() <= 1  # 0.5 linear is sRGB 188


def test_contact_sheet_needs_an_image(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one image"):
        contact_sheet([[]], tmp_path / "empty.png")
    assert list(tmp_path.iterdir()) == []
