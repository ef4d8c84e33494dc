"""Coverage-guided fuzzing of the EXR write path with atheris (see README.md).

    python fuzz/fuzz_exr_write.py -max_total_time=300 -artifact_prefix=fuzz-out/ fuzz-corpus/exr_write

Each input is one frame built from the fuzzer's bytes: pixels of any allowed type and a small
shape, channel names, origin, display window, pixel aspect and attributes (names like EXR header
fields and OpenImageIO instructions, standard EXR attributes of any shape, anything msgpack
carries), made into an `Image` directly (as a job does in-process) or through
`Image.from_description` (as a request's image is). Either may refuse it with ProtocolError.
What they accept goes through `write_exr` and `read_exr`, which must raise nothing, and the
frame read back must have the Image's data and display windows, channels and pixel aspect, and
its pixels (bit for bit for half and float; 8- and 16-bit integers as the half values they are
written as); its attributes must be ones a request may send. Anything else is a crash:
OpenImageIO reading past the pixels (the `dataWindow` attribute of issue 11), a file written
that cannot be read back, an exception out of the writer.
"""

from __future__ import annotations

import os
import sys
import tempfile
from typing import Any

import atheris
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# fuzz_decode instruments cvgen.protocol as it is imported
from fuzz_decode import Values, keep_going  # noqa: E402

with atheris.instrument_imports(include=["cvgen"]):
    from cvgen.protocol.errors import ProtocolError
    from cvgen.protocol.images import PIXEL_DTYPES, Image, check_attributes
    from cvgen.server.io.exr import read_exr, write_exr

#: Lossless compressions: what is written must come back bit for bit (dwaa is lossy).
COMPRESSIONS = ["zip", "zips", "piz"]
CHANNEL_NAMES = ["R", "G", "B", "A", "Z", "Y", "r", "depth.Z", "", "R\x00x", "é", " ", "n" * 255, "n" * 256]
#: Coordinates at OpenEXR's limits (2**30 - 1 either side) and OpenImageIO's (2**20 a side).
COORDINATES = [0, 1, -1, 8, 2**20, 2**20 + 1, 2**30 - 8, 2**30 - 2, 2**30 - 1, 2**30, -(2**30) + 2, -(2**30) + 1,
               -(2**30), 2**31 - 1, -(2**31), 2**31, 8192, 1.5, True, "1"]
ASPECTS = [1.0, 2.0, 0.5, 1.1, 1e-3, 1e3, 0.00099999, 1000.0001, 1e-6, 1e6, 1e-300, 1e300, 0.0, -1.0,
           float("inf"), float("nan"), 2, True, "2"]
#: Header fields, OpenImageIO instructions and standard EXR attributes, in several cases.
NAMES = ["dataWindow", "DataWindow", "DATAWINDOW", "displayWindow", "channels", "tiles", "compression", "Compression",
         "lineOrder", "chunkCount", "version", "type", "name", "maxSamplesPerPixel", "pixelAspectRatio",
         "PixelAspectRatio", "openexr:lineOrder", "openexr:roundingmode", "openexr:levelmode", "oiio:ioproxy",
         "OIIO:ColorSpace", "oiio:UnassociatedAlpha", "oiio:subimagename", "textureformat", "envmap", "preview",
         "deepImageState", "idManifest", "planarconfig", "thumbnail_width", "dataWindow\x00x", "smpte:TimeCode",
         "timeCode", "smpte:KeyCode", "keyCode", "FramesPerSecond", "framesPerSecond", "chromaticities",
         "screenWindowWidth", "screenWindowCenter", "worldToCamera", "worldtoNDC", "multiView", "view", "DateTime",
         "capDate", "XResolution", "YResolution", "ResolutionUnit", "whiteLuminance", "adoptedNeutral",
         "originalDataWindow", "tiff:Compression", "jpeg:quality", "ICCProfile", "ICCProfile:x", "Exif:Foo",
         "cvgen:op", "camera", "lens", "x" * 255, "x" * 256, ""]


def coordinate(v: Values) -> Any:
    return v.pick(COORDINATES) if v.fdp.ConsumeBool() else v.fdp.ConsumeIntInRange(-(2**31) - 2, 2**31 + 2)


def attribute_value(v: Values) -> Any:
    kind = v.small_int(0, 7)
    if kind == 0:
        return v.value()
    if kind == 1:  # window-like and other whole-number lists
        return [v.pick([0, 1023, 10**6, 3, -1, 2**31 - 1, 2**32 - 1]) if v.fdp.ConsumeBool() else v.int()
                for _ in range(v.small_int(1, 8))]
    if kind == 2:
        return [v.fdp.ConsumeFloat() for _ in range(v.pick([1, 2, 3, 4, 8, 9, 16, 17, v.small_int(0, 300)]))]
    if kind == 3:
        return [v.text(8) for _ in range(v.small_int(1, 4))]
    if kind == 4:
        return v.fdp.ConsumeIntInRange(-(2**31) - 1, 2**31)
    if kind == 5:
        return v.fdp.ConsumeFloat()
    if kind == 6:  # key codes, time codes and rationals in and out of their ranges
        return [v.fdp.ConsumeIntInRange(-2, 130) for _ in range(v.pick([2, 7]))]
    return v.text(40) if v.fdp.ConsumeBool() else "x" * v.pick([0, 65536, 65537])


def attributes(v: Values) -> Any:
    if v.small_int(0, 9) == 0:
        return v.value()
    found: dict[Any, Any] = {}
    for _ in range(v.small_int(0, 6)):
        name = v.pick(NAMES) if v.fdp.ConsumeBool() else v.key()
        found[name] = attribute_value(v)
    if v.small_int(0, 19) == 0:
        found.update({f"a{i}": i for i in range(v.pick([255, 256, 257]))})
    return found


def pixels(v: Values) -> np.ndarray:
    dtype = np.dtype(v.pick(PIXEL_DTYPES))
    shape = (v.small_int(1, 5), v.small_int(1, 5), v.small_int(1, 5))
    size = int(np.prod(shape)) * dtype.itemsize
    raw = v.fdp.ConsumeBytes(size)
    return np.frombuffer(raw.ljust(size, b"\0"), dtype).reshape(shape).copy()


def build_image(v: Values) -> Image | None:
    """An Image from fuzzer bytes, or None where the Image rules refuse it (ProtocolError)."""
    array = pixels(v)
    channels = [v.pick(CHANNEL_NAMES) if v.fdp.ConsumeBool() else "RGBAZ"[i] for i in range(array.shape[2])]
    if v.small_int(0, 9) == 0:
        channels.append("extra")
    desc: dict[str, Any] = {"channels": channels}
    if v.fdp.ConsumeBool():
        desc["origin"] = [coordinate(v) for _ in range(2)]
    if v.fdp.ConsumeBool():
        desc["display"] = [coordinate(v) for _ in range(4)] if v.fdp.ConsumeBool() else [
            *desc.get("origin", [0, 0]), v.pick([1, 2, 8, 2**20, 2**20 + 1, 0]), v.pick([1, 2, 8, 2**20, 0])]
    if v.fdp.ConsumeBool():
        desc["pixel_aspect"] = v.pick(ASPECTS) if v.fdp.ConsumeBool() else v.fdp.ConsumeFloat()
    desc["attributes"] = attributes(v)
    try:
        if v.fdp.ConsumeBool():
            return Image.from_description(array, desc)
        origin = desc.get("origin", (0, 0))
        return Image(array, tuple(channels), tuple(origin),  # type: ignore[arg-type]
                     tuple(desc["display"]) if "display" in desc else None,  # type: ignore[arg-type]
                     desc.get("pixel_aspect", 1.0), desc["attributes"])
    except ProtocolError:
        return None


FOLDER = tempfile.mkdtemp(prefix="cvgen-fuzz-exr-")


def expected(image: Image, name: str) -> np.ndarray:
    """What `name` reads back as: half and float as they are, integers as the half values of
    their 0..1 range."""
    values = image.channel(name)
    if values.dtype.kind == "f":
        return values
    return (values.astype(np.float64) / np.iinfo(values.dtype).max).astype(np.float16)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    if a.dtype != b.dtype:
        return False
    bits = {2: np.uint16, 4: np.uint32}[a.dtype.itemsize]
    return np.array_equal(a.view(bits), b.view(bits))


def TestOneInput(data: bytes) -> None:
    v = Values(atheris.FuzzedDataProvider(data))
    image = build_image(v)
    if image is None:
        return
    path = os.path.join(FOLDER, "frame.exr")
    write_exr(path, image, compression=v.pick(COMPRESSIONS))
    back = read_exr(path)
    if (back.data_window, back.display) != (image.data_window, image.display):
        raise AssertionError(f"windows {image.data_window} {image.display} read back as {back.data_window} "
                             f"{back.display}")
    if sorted(back.channels) != sorted(image.channels):
        raise AssertionError(f"channels {image.channels} read back as {back.channels}")
    if back.pixel_aspect != image.pixel_aspect:
        raise AssertionError(f"pixel aspect {image.pixel_aspect!r} read back as {back.pixel_aspect!r}")
    for name in image.channels:
        want, got = expected(image, name), back.channel(name)
        if image.pixels.dtype.kind == "f" and not same_bits(want, got):
            raise AssertionError(f"channel {name!r} does not read back bit for bit")
        if image.pixels.dtype.kind != "f" and not np.allclose(got, want, rtol=1e-3, atol=0):
            raise AssertionError(f"channel {name!r} does not read back as the half values it was written as")
    check_attributes(back.attributes)  # what is read back may be sent again


def main() -> None:
    atheris.Setup(sys.argv, keep_going(TestOneInput))
    atheris.Fuzz()


if __name__ == "__main__":
    main()
