"""The plugin's own EXR reader and writer (for inline frames) against OpenImageIO's."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "nuke_plugin"))

from cvgen_nuke import exr  # noqa: E402

from cvgen.protocol import Image  # noqa: E402
from cvgen.server.io.exr import read_exr, write_exr  # noqa: E402


def bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view(f"u{a.dtype.itemsize}")


def assert_same(got: Image, want: Image) -> None:
    """Same channels by name, bit for bit (NaN and Inf included), same windows and aspect."""
    assert sorted(got.channels) == sorted(want.channels)
    assert got.pixels.dtype == want.pixels.dtype
    for name in want.channels:
        assert np.array_equal(bits(got.channel(name)), bits(want.channel(name))), name
    assert (got.origin, got.display, got.pixel_aspect) == (want.origin, want.display, want.pixel_aspect)


def plate(dtype: str, channels: tuple[str, ...] = ("R", "G", "B", "A"), size: tuple[int, int] = (37, 53)) -> Image:
    """Smooth ramps (so zip blocks really compress) with HDR, NaN and Inf samples."""
    y, x, c = np.mgrid[0:size[0], 0:size[1], 0:len(channels)].astype(np.float32)
    pixels = ((x + 2 * y) / 16 - c).astype(dtype)
    pixels[0, 0, 0], pixels[1, 1, -1], pixels[2, 2, 0] = np.inf, np.nan, 65000
    return Image(pixels, channels, origin=(-5, 3), display=(0, 0, 40, 30), pixel_aspect=2.0,
                 attributes={"cvgen:op": "colormatch"})


@pytest.mark.parametrize("compression", ["zip", "zips"])
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_reads_what_openimageio_writes(tmp_path, compression, dtype):
    image = plate(dtype)
    write_exr(tmp_path / "f.exr", image, compression=compression)
    assert (tmp_path / "f.exr").stat().st_size < image.pixels.nbytes / 2, "expected compressed blocks"
    got = exr.read(str(tmp_path / "f.exr"))
    assert_same(got, image)
    assert got.attributes["cvgen:op"] == "colormatch"


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_openimageio_reads_what_it_writes(tmp_path, dtype):
    image = plate(dtype)
    exr.write(str(tmp_path / "f.exr"), image)
    assert (tmp_path / "f.exr").stat().st_size < image.pixels.nbytes / 2, "expected compressed blocks"
    back = read_exr(tmp_path / "f.exr")
    assert_same(back, image)
    assert back.attributes["cvgen:op"] == "colormatch"
    assert not [p for p in tmp_path.iterdir() if p.name != "f.exr"], "the temp file was left behind"


@pytest.mark.parametrize("size", [(1, 1), (3, 1), (17, 2)])
def test_tiny_frames_whose_blocks_do_not_compress_round_trip(tmp_path, size):
    image = Image(np.random.default_rng(0).random((*size, 1)).astype(np.float16), ("A",))
    exr.write(str(tmp_path / "t.exr"), image)
    assert_same(read_exr(tmp_path / "t.exr"), image)
    assert_same(exr.read(str(tmp_path / "t.exr")), image)


def test_long_channel_names_and_layers(tmp_path):
    image = plate("float16", ("depth.Z", "a_rather_long_layer_name_for_a_pass.R"), size=(5, 4))
    exr.write(str(tmp_path / "l.exr"), image)
    assert_same(read_exr(tmp_path / "l.exr"), image)


def test_mixed_pixel_types_come_back_as_float_with_values_kept(tmp_path):
    import OpenImageIO as oiio

    spec = oiio.ImageSpec(4, 2, 2, oiio.TypeFloat)
    spec.channelnames = ("A", "Z")
    spec.channelformats = (oiio.TypeHalf, oiio.TypeFloat)
    out = oiio.ImageOutput.create(str(tmp_path / "m.exr"))
    pixels = np.arange(16, dtype=np.float32).reshape(2, 4, 2)
    assert out.open(str(tmp_path / "m.exr"), spec) and out.write_image(pixels)
    out.close()
    got = exr.read(str(tmp_path / "m.exr"))
    assert got.pixels.dtype == np.float32 and np.array_equal(got.channel("Z"), pixels[:, :, 1])


@pytest.mark.parametrize("make, words", [
    (lambda p: write_exr(p, plate("float16"), compression="piz"), "compression is piz"),
    (lambda p: p.write_bytes(b"not an exr at all"), "not an OpenEXR file"),
    (lambda p: (write_exr(p, plate("float16")), p.write_bytes(p.read_bytes()[:400])), "damaged"),
])
def test_files_it_cannot_read_are_named_with_the_reason(tmp_path, make, words):
    path = tmp_path / "bad.exr"
    make(path)
    with pytest.raises(exr.ExrError, match=words) as err:
        exr.read(str(path))
    assert str(path) in str(err.value)


def test_missing_file_and_unsupported_pixels_are_refused(tmp_path):
    with pytest.raises(exr.ExrError, match="cannot read .*nope.exr"):
        exr.read(str(tmp_path / "nope.exr"))
    with pytest.raises(exr.ExrError, match="uint8"):
        exr.write(str(tmp_path / "u.exr"), Image(np.zeros((2, 2, 1), np.uint8), ("A",)))
