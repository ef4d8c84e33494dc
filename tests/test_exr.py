"""EXR reading and writing on the OpenEXR project's own test images, good and damaged."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import OpenImageIO as oiio
import pytest

from cvgen.protocol.images import Image, check_attributes
from cvgen.server.errors import InputError
from cvgen.protocol.files import atomic_output
from cvgen.server.jobs.shot import FileShot
from cvgen.server.io.exr import MAX_SIDE, WRITE_COMPRESSIONS, check_exr_header, read_exr, write_exr

EXR = Path(__file__).resolve().parents[2] / "shared" / "data" / "exr"


def _files(folder: str, pattern: str = "*.exr") -> list:
    """Files of a data folder as test parameters; a missing folder gives one parameter that
    fails (the data is part of CI, so its absence must not pass as a skip)."""
    found = sorted(p for p in (EXR / folder).glob(pattern) if p.name != "README.rst")
    return found or [pytest.param(EXR / folder / "MISSING", id=f"{folder}-missing")]


ROUND_TRIP = _files("DisplayWindow") + _files("TestImages")
DAMAGED = _files("Damaged", "*")


def _bits(pixels: np.ndarray) -> np.ndarray:
    """Pixels as raw bit patterns, so NaN payloads, infinities and -0 compare exactly."""
    return pixels.view({2: np.uint16, 4: np.uint32}[pixels.dtype.itemsize])


def _name(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


# --- good files ----------------------------------------------------------------------------


@pytest.mark.parametrize("source", ROUND_TRIP, ids=_name)
def test_round_trip_is_bit_exact(source: Path, tmp_path: Path) -> None:
    original = read_exr(source)
    write_exr(tmp_path / source.name, original, compression="zip")
    again = read_exr(tmp_path / source.name)
    assert again.pixels.dtype == original.pixels.dtype
    assert np.array_equal(_bits(again.pixels), _bits(original.pixels))
    assert again.channels == original.channels
    assert again.data_window == original.data_window
    assert again.display == original.display
    assert again.pixel_aspect == original.pixel_aspect
    # OpenImageIO stamps a DateTime on files that lack one; everything else must be as read.
    assert {k: v for k, v in again.attributes.items() if k != "DateTime"} == {
        k: v for k, v in original.attributes.items() if k != "DateTime"
    }
    assert sorted(os.listdir(tmp_path)) == [source.name]


def test_windows_and_pixel_aspect_are_read() -> None:
    t07 = read_exr(EXR / "DisplayWindow" / "t07.exr")
    assert (t07.data_window, t07.display) == ((0, 0, 400, 300), (-40, -40, 481, 371))
    t08 = read_exr(EXR / "DisplayWindow" / "t08.exr")
    assert (t08.data_window, t08.display) == ((30, 40, 400, 300), (0, 0, 501, 401))
    assert read_exr(EXR / "DisplayWindow" / "t15.exr").pixel_aspect == 1.5
    assert read_exr(EXR / "DisplayWindow" / "t16.exr").pixel_aspect == pytest.approx(2 / 3)


def test_all_half_values_and_non_finite_values_survive() -> None:
    every_half = read_exr(EXR / "TestImages" / "AllHalfValues.exr")
    assert every_half.pixels.dtype == np.float16
    assert np.unique(_bits(every_half.pixels)).size == 65536
    rings = read_exr(EXR / "TestImages" / "BrightRingsNanInf.exr").pixels
    assert np.isnan(rings).any() and np.isposinf(rings).any()


def test_float_and_single_channel_files_keep_their_type() -> None:
    wide = read_exr(EXR / "TestImages" / "WideFloatRange.exr")
    assert (wide.pixels.dtype, wide.channels) == (np.float32, ("G",))
    assert read_exr(EXR / "TestImages" / "GrayRampsHorizontal.exr").channels == ("Y",)


def test_singlepart_multichannel_stereo_file() -> None:
    image = read_exr(EXR / "Beachball" / "singlepart.0001.exr")
    assert image.pixels.shape == (876, 911, 20)
    assert image.has("R", "G", "B", "A", "Z", "left.R", "left.Z", "forward.left.u")
    assert (image.origin, image.display) == ((654, 245), (0, 0, 2048, 1556))
    assert image.attributes["multiView"] == ["right", "left"]


MULTIPART = EXR / "Beachball" / "multipart.0001.exr"  # stereo: rgba_right, depth_left, ..., rgba_left, ...


def test_multipart_file_without_a_part_named_is_refused_naming_its_parts() -> None:
    """Two parts hold an RGB image (the two eyes): reading part 0 silently gave the right eye to a
    user who may have wanted the left, so the file is refused with its parts and how to pick one."""
    with pytest.raises(InputError) as caught:
        read_exr(MULTIPART)
    message = str(caught.value)
    assert str(MULTIPART) in message
    for part in ("rgba_right", "rgba_left", "depth_left", "disparityR"):
        assert part in message
    assert "#" in message and "view right" in message
    with pytest.raises(InputError, match="rgba_left"):
        check_exr_header(MULTIPART)


def test_a_part_is_read_by_its_name_or_its_view() -> None:
    left = read_exr(MULTIPART, part="rgba_left")
    assert left.channels == ("R", "G", "B", "A")
    assert left.pixels.shape == (876, 877, 4)
    assert (left.origin, left.display) == ((688, 245), (0, 0, 2048, 1556))  # the left eye's own windows
    assert left.attributes["view"] == "left"
    assert np.isfinite(left.pixels).all() and left.channel("A").max() > 0
    right = read_exr(MULTIPART, part="right")  # the view's only part with R, G and B
    assert right.attributes["view"] == "right" and right.channels == ("R", "G", "B", "A")
    assert (right.origin, right.display) == ((654, 245), (0, 0, 2048, 1556))
    assert not np.array_equal(left.pixels, right.pixels)
    assert read_exr(MULTIPART, part="depth_left").channels == ("Z",)
    assert check_exr_header(MULTIPART, part="whitebarmask_left")[:2] == (385, 769)


def test_an_unknown_part_is_refused_naming_the_parts() -> None:
    with pytest.raises(InputError, match=r"no part or view named 'beauty'.*rgba_left"):
        read_exr(MULTIPART, part="beauty")
    with pytest.raises(InputError, match=r"no part or view named 'left'; its parts are part 0: R, G, B\."):
        read_exr(EXR / "TestImages" / "GammaChart.exr", part="left")


def test_multipart_file_with_one_rgb_part_reads_it_unnamed(tmp_path: Path) -> None:
    """A beauty with its AOVs in other parts (how Nuke writes a multi-part plate) is not
    ambiguous: its one part with R, G and B is the image."""
    path = str(tmp_path / "aovs.exr")
    specs = []
    layers = (("depth", ("Z",)), ("rgba", ("R", "G", "B", "A")), ("diffuse", ("diffuse.R", "diffuse.G", "diffuse.B")))
    for name, channels in layers:
        spec = oiio.ImageSpec(8, 4, len(channels), "half")
        spec.channelnames = channels
        spec.attribute("name", name)
        specs.append(spec)
    out = oiio.ImageOutput.create(path)
    assert out.open(path, specs)
    for index, spec in enumerate(specs):
        if index:
            assert out.open(path, spec, "AppendSubimage")
        assert out.write_image(np.full((4, 8, spec.nchannels), index + 1, np.float16))
    out.close()
    image = read_exr(path)
    assert image.channels == ("R", "G", "B", "A") and (image.pixels == 2).all()
    assert read_exr(path, part="depth").channels == ("Z",)


def test_an_input_path_names_the_part_after_a_hash(tmp_path: Path) -> None:
    shot = FileShot({"plate": str(EXR / "Beachball" / "multipart.####.exr#rgba_left")}, range(1, 2))
    shot.check_complete()
    shot.check_headers()
    assert shot.read("plate", 1).attributes["view"] == "left"
    unnamed = FileShot({"plate": str(EXR / "Beachball" / "multipart.####.exr")}, range(1, 2))
    with pytest.raises(InputError, match="rgba_left"):
        unnamed.check_headers()


def test_tiled_file_reads_and_keeps_metadata(tmp_path: Path) -> None:
    image = read_exr(EXR / "Tiles" / "GoldenGate.exr")
    assert (image.width, image.height, image.channels) == (1262, 860, ("R", "G", "B"))
    assert image.attributes["Copyright"] == "Copyright 2004 Industrial Light & Magic"
    assert image.attributes["screenWindowWidth"] == pytest.approx(1.15)
    assert not any(k.startswith(("oiio:", "openexr:")) or k == "compression" for k in image.attributes)
    write_exr(tmp_path / "gg.exr", image)
    again = read_exr(tmp_path / "gg.exr")
    assert np.array_equal(_bits(again.pixels), _bits(image.pixels))
    assert again.attributes == image.attributes


def test_mixed_pixel_types_read_as_float32(tmp_path: Path) -> None:
    spec = oiio.ImageSpec(3, 2, 4, "half")
    spec.channelnames = ("R", "G", "B", "Z")
    spec.channelformats = (oiio.TypeHalf,) * 3 + (oiio.TypeFloat,)
    values = np.arange(24, dtype=np.float32).reshape(2, 3, 4) + 0.1
    _write_with_oiio(tmp_path / "mixed.exr", spec, values)
    image = read_exr(tmp_path / "mixed.exr")
    assert image.pixels.dtype == np.float32
    assert np.array_equal(image.channel("Z"), values[:, :, 3])
    assert np.array_equal(image.stack(("R", "G", "B")), values[:, :, :3].astype(np.float16).astype(np.float32))


def test_uint_channels_keep_their_values(tmp_path: Path) -> None:
    spec = oiio.ImageSpec(3, 2, 1, "uint")
    spec.channelnames = ("id",)
    ids = np.array([[0, 1, 123456], [16777216, 7, 99]], np.uint32)[:, :, None]
    _write_with_oiio(tmp_path / "ids.exr", spec, ids)
    image = read_exr(tmp_path / "ids.exr")
    assert image.pixels.dtype == np.float32
    assert np.array_equal(image.pixels, ids.astype(np.float32))


def test_odd_extension_reads_like_exr(tmp_path: Path) -> None:
    shutil.copyfile(EXR / "TestImages" / "stripes.exr", tmp_path / "stripes.0001.bin")
    image = read_exr(tmp_path / "stripes.0001.bin")
    assert np.array_equal(image.pixels, read_exr(EXR / "TestImages" / "stripes.exr").pixels)


# --- bad files -------------------------------------------------------------------------------


def _damaged_results(files: list[Path], tmp: Path) -> tuple[dict[str, dict], list[str]]:
    """Read every file in child processes: a crash or hang costs that file, not the test run.

    A child reports one JSON line per file; when one dies or hangs, the file after its last
    report is marked as the culprit and a fresh child carries on with the rest. Returns the
    per-file results and how each child ended that did not end cleanly.
    """
    script = (
        "import json, sys\n"
        "from cvgen.server.io.exr import check_exr_header, read_exr\n"
        "for path in sys.argv[1:]:\n"
        "    result = {}\n"
        "    for key, read in (('header', check_exr_header), ('', read_exr)):\n"
        "        try:\n"
        "            read(path)\n"
        "            result.update({key + 'error': None, key + 'message': ''})\n"
        "        except Exception as exc:\n"
        "            result.update({key + 'error': type(exc).__name__, key + 'message': str(exc)})\n"
        "    print(json.dumps({'path': path, **result}), flush=True)\n"
    )
    results: dict[str, dict] = {}
    failures: list[str] = []
    todo = [str(p) for p in files]
    env = dict(os.environ, TMPDIR=str(tmp))
    while todo:
        try:
            proc = subprocess.run(
                [sys.executable, "-c", script, *todo], capture_output=True, text=True, timeout=120, env=env
            )
            out = proc.stdout
            if proc.returncode != 0:
                failures.append(f"the reader died with exit status {proc.returncode}: {proc.stderr[-500:]}")
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
            failures.append("the reader hung for more than 120 s")
        for line in out.splitlines():
            report = json.loads(line)
            results[report.pop("path")] = report
        todo = [p for p in todo if p not in results]
        if todo and failures:
            results[todo.pop(0)] = {"error": "crash", "message": failures[-1]}
    return results, failures


DamagedResults = tuple[dict[str, dict], list[str], Path]


@pytest.fixture(scope="module")
def damaged_results(tmp_path_factory: pytest.TempPathFactory) -> DamagedResults:
    tmp = tmp_path_factory.mktemp("damaged-tmp")
    files = [p for p in DAMAGED if isinstance(p, Path)]
    return (*_damaged_results(files, tmp), tmp)


@pytest.mark.parametrize("damaged", DAMAGED, ids=lambda p: p.name)
def test_damaged_file_raises_input_error(damaged: Path, damaged_results: DamagedResults) -> None:
    assert damaged.parent.is_dir(), f"test data missing: {damaged.parent}"
    results, _, _ = damaged_results
    result = results[str(damaged)]
    assert result["error"] == "InputError", result["message"]
    assert str(damaged) in result["message"]
    assert "Traceback" not in result["message"]
    assert "cvgen-exr-" not in result["message"], "the message names a temporary file instead of the input"
    assert "unreadable" not in result["message"], "the message gives no reason"


def test_header_check_refuses_damaged_headers_as_reading_does(damaged_results: DamagedResults) -> None:
    """The check a job runs on every frame before rendering refuses a damaged header with the
    message reading it would give; damage only in the pixels is left for the read to find."""
    results, _, _ = damaged_results
    for path, result in results.items():
        if result["headererror"] is not None:
            assert (result["headererror"], result["headermessage"]) == (result["error"], result["message"]), path
    refused = [r for r in results.values() if r["headererror"] is not None]
    assert len(refused) >= len(results) // 2, "the header check let most damaged headers through"


def test_header_check_passes_a_good_frame_giving_its_size_and_channels() -> None:
    assert check_exr_header(EXR / "TestImages" / "GammaChart.exr")[:2] == (800, 800)
    windowed = EXR / "DisplayWindow" / "t01.exr"
    image = read_exr(windowed)
    assert check_exr_header(windowed) == (image.width, image.height, image.channels)


def test_damaged_files_end_cleanly(damaged_results: DamagedResults) -> None:
    _, failures, tmp = damaged_results
    assert failures == []
    assert list(tmp.iterdir()) == [], "the reader left temporary files behind"


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"missing\.exr: no such file"):
        read_exr(tmp_path / "missing.exr")
    with pytest.raises(InputError, match="is a folder"):
        read_exr(tmp_path)


def test_other_formats_are_refused_even_named_exr(tmp_path: Path) -> None:
    png = tmp_path / "frame.png"
    assert oiio.ImageBuf(np.zeros((4, 4, 3), np.float32)).write(str(png), oiio.TypeUInt8, "png")
    png.rename(tmp_path / "frame.exr")
    with pytest.raises(InputError, match=r"frame\.exr: not an OpenEXR file"):
        read_exr(tmp_path / "frame.exr")


def test_truncated_file(tmp_path: Path) -> None:
    data = (EXR / "TestImages" / "SquaresSwirls.exr").read_bytes()
    (tmp_path / "cut.exr").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"cut\.exr: the file is damaged or truncated"):
        read_exr(tmp_path / "cut.exr")


def test_deep_file_is_refused(tmp_path: Path) -> None:
    spec = oiio.ImageSpec(4, 3, 2, "float")
    spec.channelnames = ("A", "Z")
    spec.deep = True
    deep = oiio.DeepData()
    deep.init(spec)
    for pixel in range(12):
        deep.set_samples(pixel, 1)
    out = oiio.ImageOutput.create("openexr")
    assert out.open(str(tmp_path / "deep.exr"), spec) and out.write_deep_image(deep) and out.close()
    with pytest.raises(InputError, match=r"deep\.exr: it holds deep data"):
        read_exr(tmp_path / "deep.exr")


def test_absurd_size_is_refused_before_reading(tmp_path: Path) -> None:
    wide = Image(np.zeros((1, MAX_SIDE + 1, 1), np.float16), ("Y",))
    write_exr(tmp_path / "wide.exr", wide)
    with pytest.raises(InputError, match=r"wide\.exr: its header claims 65537x1 pixels"):
        read_exr(tmp_path / "wide.exr")


def _write_yc(path: Path, width: int = 4, height: int = 4) -> None:
    """A luminance/chroma EXR as OpenEXR's RGBA interface writes them (Y full size, RY and BY at
    half resolution), byte by byte: OpenImageIO cannot write subsampled channels."""
    def attribute(name: str, kind: str, value: bytes) -> bytes:
        return name.encode() + b"\0" + kind.encode() + b"\0" + struct.pack("<i", len(value)) + value

    channels = [("BY", 2), ("RY", 2), ("Y", 1)]
    chlist = b"".join(n.encode() + b"\0" + struct.pack("<iB3xii", 1, 0, s, s) for n, s in channels) + b"\0"
    box = struct.pack("<iiii", 0, 0, width - 1, height - 1)
    header = (b"\x76\x2f\x31\x01" + struct.pack("<i", 2) + attribute("channels", "chlist", chlist)
              + attribute("compression", "compression", b"\0") + attribute("dataWindow", "box2i", box)
              + attribute("displayWindow", "box2i", box) + attribute("lineOrder", "lineOrder", b"\0")
              + attribute("pixelAspectRatio", "float", struct.pack("<f", 1.0))
              + attribute("screenWindowCenter", "v2f", struct.pack("<ff", 0, 0))
              + attribute("screenWindowWidth", "float", struct.pack("<f", 1.0)) + b"\0")
    blocks = []
    for y in range(height):
        data = b"".join(np.full(width // s, 0.5 if n == "Y" else 0.0, np.float16).tobytes()
                        for n, s in channels if y % s == 0)
        blocks.append(struct.pack("<ii", y, len(data)) + data)
    offsets = np.cumsum([len(header) + 8 * height] + [len(b) for b in blocks[:-1]]).astype("<u8")
    path.write_bytes(header + offsets.tobytes() + b"".join(blocks))


def test_cube_map_keeps_the_files_windows(tmp_path: Path) -> None:
    """OpenImageIO reports a MIP-mapped cube map's display window as one face (16x16 here)."""
    path = tmp_path / "cube.exr"
    spec = oiio.ImageSpec(16, 96, 3, "half")
    spec.tile_width = spec.tile_height = 8
    spec.attribute("textureformat", "CubeFace Environment")
    out = oiio.ImageOutput.create("openexr")
    width, height, mode = 16, 96, "Create"
    while True:  # OpenEXR's MIP levels: halve both sides, rounding down, until 1x1
        level = oiio.ImageSpec(spec)
        level.width = level.full_width = width
        level.height = level.full_height = height
        assert out.open(str(path), level, mode) and out.write_image(np.ones((height, width, 3), np.float32))
        if width == height == 1:
            break
        width, height, mode = max(1, width // 2), max(1, height // 2), "AppendMIPLevel"
    assert out.close()
    del out  # the binding finishes a MIP-mapped file only when the writer goes
    image = read_exr(path)
    assert image.pixels.shape == (96, 16, 3)
    assert (image.data_window, image.display) == ((0, 0, 16, 96), (0, 0, 16, 96))


def test_luminance_chroma_file_is_refused_as_valid_but_unsupported(tmp_path: Path) -> None:
    _write_yc(tmp_path / "yc.exr")
    with pytest.raises(InputError, match=r"yc\.exr: it is a luminance/chroma \(YC\) EXR") as refused:
        read_exr(tmp_path / "yc.exr")
    assert "damaged" not in str(refused.value) and "convert it to RGB" in str(refused.value)


# --- writing -------------------------------------------------------------------------------------


def _small(dtype: str = "float16") -> Image:
    pixels = np.linspace(-1, 4, 4 * 6 * 4, dtype=np.float32).reshape(4, 6, 4).astype(dtype)
    return Image(pixels, ("R", "G", "B", "A"), origin=(10, -3), display=(0, 0, 32, 18), pixel_aspect=2.0)


@pytest.mark.parametrize("compression", WRITE_COMPRESSIONS)
def test_allowed_compressions_are_written(compression: str, tmp_path: Path) -> None:
    write_exr(tmp_path / "c.exr", _small(), compression=compression)
    inp = oiio.ImageInput.open(str(tmp_path / "c.exr"))
    assert inp.spec().get_string_attribute("compression") == compression
    inp.close()
    again = read_exr(tmp_path / "c.exr")
    assert (again.data_window, again.display, again.pixel_aspect) == ((10, -3, 6, 4), (0, 0, 32, 18), 2.0)
    if compression != "dwaa":
        assert np.array_equal(_bits(again.pixels), _bits(_small().pixels))


@pytest.mark.parametrize("compression", ["htj2k", "zstd", "none", "rle", "pxr24", "b44", "dwab", "ZIP"])
def test_other_compressions_are_refused(compression: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="zip, zips, piz, dwaa"):
        write_exr(tmp_path / "c.exr", _small(), compression=compression)
    assert list(tmp_path.iterdir()) == []


def test_pixel_types(tmp_path: Path) -> None:
    write_exr(tmp_path / "f.exr", _small("float32"))
    assert read_exr(tmp_path / "f.exr").pixels.dtype == np.float32
    write_exr(tmp_path / "h.exr", _small("float32"), dtype="half")
    assert np.array_equal(read_exr(tmp_path / "h.exr").pixels, _small("float32").pixels.astype(np.float16))
    write_exr(tmp_path / "f2.exr", _small("float16"), dtype="float32")
    assert np.array_equal(read_exr(tmp_path / "f2.exr").pixels, _small("float16").pixels.astype(np.float32))
    eight_bit = Image(np.array([[[0, 51, 255]]], np.uint8), ("R", "G", "B"))
    write_exr(tmp_path / "u8.exr", eight_bit)
    back = read_exr(tmp_path / "u8.exr")
    assert back.pixels.dtype == np.float16
    assert back.pixels.ravel().tolist() == [0.0, pytest.approx(0.2, abs=1e-3), 1.0]
    with pytest.raises(ValueError, match="pixel type 'double'"):
        write_exr(tmp_path / "d.exr", _small(), dtype="double")


def test_provenance_and_typed_attributes(tmp_path: Path) -> None:
    image = _small()
    image.attributes = {
        "smpte:TimeCode": [16909060, 0],
        "FramesPerSecond": [24000, 1001],
        "worldToCamera": [float(i) for i in range(16)],
        "screenWindowCenter": [0.5, -0.5],
        "artist": "comp",
        "take": 3,
        "lens": 35.0,
        "notes": ["a", "b"],
    }
    provenance = {"op": "harmonize", "seed": 42, "parameters": {"strength": 0.5, "steps": 20}, "model": "tiny"}
    write_exr(tmp_path / "p.exr", image, provenance=provenance)
    attributes = read_exr(tmp_path / "p.exr").attributes
    assert attributes["cvgen:op"] == "harmonize"
    assert attributes["cvgen:seed"] == "42"
    assert json.loads(attributes["cvgen:parameters"]) == {"strength": 0.5, "steps": 20}
    assert attributes["cvgen:model"] == "tiny"
    for key, value in image.attributes.items():
        assert attributes[key] == value, key
    inp = oiio.ImageInput.open(str(tmp_path / "p.exr"))
    types = {p.name: str(p.type) for p in inp.spec().extra_attribs}
    inp.close()
    assert types["smpte:TimeCode"] == "timecode"
    assert types["FramesPerSecond"] == "rational"
    assert types["worldToCamera"] == "matrix"


#: Header fields (and OpenImageIO instructions) an Image built in-process may carry among its
#: attributes; none may shape the file. A data window wider than the pixels made OpenImageIO
#: read past them (a SIGSEGV for a huge one).
LAYOUT_ATTRIBUTES = {
    "dataWindow": [0, 0, 1_000_000, 3], "DataWindow": [0, 0, 1023, 3], "displayWindow": [0, 0, 3, 3],
    "channels": "R", "tiles": [16, 16], "compression": "b44", "COMPRESSION": "none", "lineOrder": 2,
    "openexr:lineOrder": "decreasingY", "chunkCount": 5, "version": 99, "type": "deepscanline", "name": "left",
    "pixelAspectRatio": 5.0, "PixelAspectRatio": 5.0, "oiio:ColorSpace": "sRGB", "textureformat": "Plain Texture",
    "envmap": 1, "dataWindow\x00x": [0, 0, 1023, 3], "grade": {"lift": 0.1, b"gamma": 1.0}, "frame": 2**40,
    "FramesPerSecond": [2**40, 1],
}


def test_the_writer_takes_the_layout_only_from_the_pixels_and_fields(tmp_path: Path) -> None:
    image = _small()
    image.attributes = {**LAYOUT_ATTRIBUTES, "artist": "comp", "take": 3}
    write_exr(tmp_path / "l.exr", image)
    again = read_exr(tmp_path / "l.exr")
    assert np.array_equal(_bits(again.pixels), _bits(image.pixels))
    assert (again.channels, again.data_window, again.display) == (image.channels, image.data_window, image.display)
    assert again.pixel_aspect == image.pixel_aspect == 2.0
    assert (again.attributes["artist"], again.attributes["take"]) == ("comp", 3)
    assert not {k.lower() for k in again.attributes} & {k.lower() for k in LAYOUT_ATTRIBUTES if isinstance(k, str)}
    inp = oiio.ImageInput.open(str(tmp_path / "l.exr"))
    spec = inp.spec()
    inp.close()
    assert (spec.tile_width, spec.get_string_attribute("compression")) == (0, "zip")
    assert spec.get_string_attribute("openexr:lineOrder") == "increasingY"


@pytest.mark.parametrize(("source", "part"), [
    (EXR / "Beachball" / "singlepart.0001.exr", None), (EXR / "Beachball" / "multipart.0001.exr", "rgba_right"),
    (EXR / "Tiles" / "GoldenGate.exr", None), (EXR / "TestImages" / "WideColorGamut.exr", None),
], ids=["singlepart", "multipart", "GoldenGate", "WideColorGamut"])
def test_real_metadata_survives_and_could_be_sent_again(source: Path, part: str | None, tmp_path: Path) -> None:
    """What read_exr keeps of a real header is what a request may send, and it comes back
    unchanged from a file cvgen writes (OpenImageIO stamps a DateTime where there was none)."""
    image = read_exr(source, part=part)
    assert image.attributes and check_attributes(image.attributes) == image.attributes
    write_exr(tmp_path / source.name, image)
    again = read_exr(tmp_path / source.name)
    assert {k: v for k, v in again.attributes.items() if k != "DateTime"} == {
        k: v for k, v in image.attributes.items() if k != "DateTime"
    }


# --- atomic writes --------------------------------------------------------------------------------


def test_successful_write_leaves_only_the_frame(tmp_path: Path) -> None:
    write_exr(tmp_path / "frame.1001.exr", _small())
    assert os.listdir(tmp_path) == ["frame.1001.exr"]


def test_missing_folder_fails_cleanly(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="the folder .*nowhere does not exist"):
        write_exr(tmp_path / "nowhere" / "frame.exr", _small())
    assert list(tmp_path.iterdir()) == []


def test_failed_rename_removes_the_temp_file(tmp_path: Path) -> None:
    (tmp_path / "frame.exr").mkdir()
    with pytest.raises(OSError, match=r"cannot write .*frame\.exr"):
        write_exr(tmp_path / "frame.exr", _small())
    assert os.listdir(tmp_path) == ["frame.exr"]
    assert list((tmp_path / "frame.exr").iterdir()) == []


def test_failure_mid_write_keeps_the_previous_frame(tmp_path: Path) -> None:
    dest = tmp_path / "frame.exr"
    write_exr(dest, _small())
    before = dest.read_bytes()
    with pytest.raises(RuntimeError), atomic_output(dest, ".exr") as tmp:
        assert Path(tmp).parent == tmp_path
        assert Path(tmp).name.startswith(".frame.exr.") and tmp.endswith(".tmp.exr")
        Path(tmp).write_bytes(b"half a frame")
        raise RuntimeError("killed")
    assert dest.read_bytes() == before
    assert os.listdir(tmp_path) == ["frame.exr"]


def _write_with_oiio(path: Path, spec: oiio.ImageSpec, pixels: np.ndarray) -> None:
    out = oiio.ImageOutput.create("openexr")
    assert out.open(str(path), spec) and out.write_image(pixels) and out.close(), out.geterror()
