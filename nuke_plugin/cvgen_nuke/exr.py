"""Just enough OpenEXR, in numpy and zlib, to send frames inline and to save returned ones.

Nuke's Python has no OpenImageIO, and the host package must stay small, so frames that travel
as pixels are read and written here. The scope is what the node itself produces and needs:
single-part scanline files, channels of half, float or uint, uncompressed or zip-compressed
(one or sixteen lines per block: Nuke's "Zip (1 scanline)" and "Zip (16 scanlines)"), with
their data and display windows, pixel aspect and string metadata. Anything else is refused by
name rather than misread. Files are written with zip compression, which Nuke and Blender read.
"""

from __future__ import annotations

import struct
import zlib
from typing import Any

import numpy as np

from cvgen.protocol import CvgenError, Image
from cvgen.protocol.files import atomic_output
from cvgen.protocol.images import metadata

_MAGIC = b"\x76\x2f\x31\x01"
_TILED, _LONG_NAMES, _DEEP, _MULTIPART = 0x200, 0x400, 0x800, 0x1000
_NONE, _ZIPS, _ZIP = 0, 2, 3
_LINES_PER_BLOCK = {_NONE: 1, _ZIPS: 1, _ZIP: 16}
_COMPRESSION_NAMES = ("none", "rle", "zips", "zip", "piz", "pxr24", "b44", "b44a", "dwaa", "dwab", "htj2k")
# EXR pixel types: 0 uint, 1 half, 2 float.
_DTYPES = {0: np.dtype("<u4"), 1: np.dtype("<f2"), 2: np.dtype("<f4")}
_PIXEL_TYPES = {"float16": 1, "float32": 2}
_REQUIRED = ("channels", "compression", "dataWindow", "displayWindow", "lineOrder", "pixelAspectRatio",
             "screenWindowCenter", "screenWindowWidth")


class ExrError(CvgenError):
    """A frame the node cannot read or write; the message names the file and the reason."""

    code = "bad_file"


def read(path: str) -> Image:
    """The pixels, windows, pixel aspect and string metadata of a scanline EXR file."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ExrError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return _decode(data, path)
    except (struct.error, zlib.error, ValueError, KeyError, IndexError) as exc:
        raise ExrError(f"cannot read {path}: the file is damaged ({exc})") from None


def write(path: str, image: Image) -> None:
    """Write `image` as a zip-compressed scanline EXR, atomically (a temp file, then a rename),
    so a Read node reloading meanwhile never sees half a frame."""
    dtype = str(image.pixels.dtype)
    if dtype not in _PIXEL_TYPES:
        raise ExrError(f"cannot write {path}: pixels are {dtype}; frames are half or float")
    with atomic_output(path, ".exr") as tmp, open(tmp, "wb") as f:
        f.write(_encode(image))


# -- reading -------------------------------------------------------------------------------

def _decode(data: bytes, path: str) -> Image:
    if data[:4] != _MAGIC:
        raise ExrError(f"cannot read {path}: it is not an OpenEXR file")
    (version,) = struct.unpack_from("<i", data, 4)
    for flag, what in ((_TILED, "tiled"), (_DEEP, "deep"), (_MULTIPART, "multi-part")):
        if version & flag:
            raise ExrError(f"cannot read {path}: it is a {what} EXR; the cvgen node sends single-part scanline files")
    attrs, pos = _attributes(data, 8)
    compression = attrs["compression"]
    if compression not in _LINES_PER_BLOCK:
        name = _COMPRESSION_NAMES[compression] if compression < len(_COMPRESSION_NAMES) else str(compression)
        raise ExrError(f"cannot read {path}: its compression is {name}; the cvgen node sends none or zip")
    channels = attrs["channels"]
    if any(xs != 1 or ys != 1 for _, _, xs, ys in channels):
        raise ExrError(f"cannot read {path}: it has subsampled channels")
    x0, y0, x1, y1 = attrs["dataWindow"]
    width, height = x1 - x0 + 1, y1 - y0 + 1
    lines = _LINES_PER_BLOCK[compression]
    blocks = -(-height // lines)
    offsets = np.frombuffer(data, "<u8", blocks, pos)
    planes = [np.empty((height, width), _DTYPES[ptype]) for _, ptype, _, _ in channels]
    row_bytes = sum(width * p.itemsize for p in planes)
    for offset in offsets:
        y, size = struct.unpack_from("<ii", data, int(offset))
        n = min(lines, y1 + 1 - y)
        if not 0 <= y - y0 < height or n <= 0:
            raise ValueError(f"a block starts at line {y}, outside the data window")
        start = int(offset) + 8
        raw = _unzip(data[start:start + size], n * row_bytes) if size < n * row_bytes else data[start:start + size]
        rows = np.frombuffer(raw, np.uint8, n * row_bytes).reshape(n, row_bytes)
        col = 0
        for plane in planes:
            nbytes = width * plane.itemsize
            plane[y - y0:y - y0 + n] = np.ascontiguousarray(rows[:, col:col + nbytes]).view(plane.dtype)
            col += nbytes
    dx0, dy0, dx1, dy1 = attrs["displayWindow"]
    return Image(
        _stack(planes),
        tuple(name for name, _, _, _ in channels),
        (x0, y0),
        (dx0, dy0, dx1 - dx0 + 1, dy1 - dy0 + 1),
        float(attrs.get("pixelAspectRatio", 1.0)),
        metadata({k: v for k, v in attrs.items() if isinstance(v, str)}),
    )


def _attributes(data: bytes, pos: int) -> tuple[dict[str, Any], int]:
    """Header attributes by name (those the node uses, plus every string); the end position."""
    attrs: dict[str, Any] = {}
    while data[pos] != 0:
        name, pos = _cstring(data, pos)
        kind, pos = _cstring(data, pos)
        (size,) = struct.unpack_from("<i", data, pos)
        value = data[pos + 4:pos + 4 + size]
        pos += 4 + size
        if kind == "chlist":
            attrs[name] = _channel_list(value)
        elif kind == "compression":
            attrs[name] = value[0]
        elif kind == "box2i":
            attrs[name] = struct.unpack("<4i", value)
        elif kind == "float":
            attrs[name] = struct.unpack("<f", value)[0]
        elif kind == "string":
            attrs[name] = value.decode("utf-8", "replace")
    missing = [k for k in ("channels", "compression", "dataWindow", "displayWindow") if k not in attrs]
    if missing:
        raise ValueError(f"the header has no {', '.join(missing)}")
    return attrs, pos + 1


def _channel_list(value: bytes) -> list[tuple[str, int, int, int]]:
    channels, pos = [], 0
    while value[pos] != 0:
        name, pos = _cstring(value, pos)
        ptype, _, xs, ys = struct.unpack_from("<iB3xii", value, pos)
        if ptype not in _DTYPES:
            raise ValueError(f"channel {name} has unknown pixel type {ptype}")
        channels.append((name, ptype, xs, ys))
        pos += 16
    return channels


def _cstring(data: bytes, pos: int) -> tuple[str, int]:
    end = data.index(b"\0", pos)
    return data[pos:end].decode("utf-8", "replace"), end + 1


def _unzip(block: bytes, size: int) -> bytes:
    """Undo zip compression: inflate, undo the byte predictor, re-interleave the two halves."""
    t = np.frombuffer(zlib.decompress(block), np.uint8)
    if t.size != size:
        raise ValueError(f"a block inflates to {t.size} bytes instead of {size}")
    deltas = t.astype(np.int64)
    deltas[1:] -= 128
    t = (np.cumsum(deltas) & 0xFF).astype(np.uint8)
    out = np.empty(size, np.uint8)
    half = (size + 1) // 2
    out[0::2] = t[:half]
    out[1::2] = t[half:]
    return out.tobytes()


def _stack(planes: list[np.ndarray]) -> np.ndarray:
    """One (height, width, channels) array; mixed or uint channels become float32, values kept."""
    if not planes:
        raise ValueError("the file has no channels")
    dtypes = {p.dtype for p in planes}
    dtype = dtypes.pop() if len(dtypes) == 1 and np.dtype("<u4") not in dtypes else np.dtype("float32")
    return np.stack([p.astype(dtype.newbyteorder("="), copy=False) for p in planes], axis=-1)


# -- writing -------------------------------------------------------------------------------

def _encode(image: Image) -> bytes:
    order = sorted(range(len(image.channels)), key=lambda i: image.channels[i].encode())
    names = [image.channels[i] for i in order]
    pixels = np.ascontiguousarray(image.pixels[:, :, order].astype(image.pixels.dtype.newbyteorder("<")))
    ptype = _PIXEL_TYPES[str(image.pixels.dtype)]
    x0, y0 = image.origin
    dx, dy, dw, dh = image.display or image.data_window
    height, width = image.height, image.width
    strings = {k: v for k, v in image.attributes.items() if isinstance(v, str) and k not in _REQUIRED}
    header = b"".join([
        _attr("channels", "chlist",
              b"".join(n.encode() + b"\0" + struct.pack("<iB3xii", ptype, 0, 1, 1) for n in names) + b"\0"),
        _attr("compression", "compression", bytes([_ZIP])),
        _attr("dataWindow", "box2i", struct.pack("<4i", x0, y0, x0 + width - 1, y0 + height - 1)),
        _attr("displayWindow", "box2i", struct.pack("<4i", dx, dy, dx + dw - 1, dy + dh - 1)),
        _attr("lineOrder", "lineOrder", b"\0"),
        _attr("pixelAspectRatio", "float", struct.pack("<f", image.pixel_aspect)),
        _attr("screenWindowCenter", "v2f", struct.pack("<2f", 0.0, 0.0)),
        _attr("screenWindowWidth", "float", struct.pack("<f", 1.0)),
        *(_attr(k, "string", v.encode()) for k, v in sorted(strings.items())),
        b"\0",
    ])
    long_names = any(len(n.encode()) > 31 for n in [*names, *strings])
    version = struct.pack("<i", 2 | (_LONG_NAMES if long_names else 0))
    lines = _LINES_PER_BLOCK[_ZIP]
    # Each scanline holds every channel's samples for that line, one channel after the other.
    rows = np.ascontiguousarray(pixels.transpose(0, 2, 1)).reshape(height, -1).view(np.uint8)
    blocks = [_block(y0 + y, rows[y:y + lines].tobytes()) for y in range(0, height, lines)]
    start = len(_MAGIC) + len(version) + len(header) + 8 * len(blocks)
    offsets = np.cumsum([start] + [len(b) for b in blocks[:-1]]).astype("<u8")
    return b"".join([_MAGIC, version, header, offsets.tobytes(), *blocks])


def _attr(name: str, kind: str, value: bytes) -> bytes:
    return name.encode() + b"\0" + kind.encode() + b"\0" + struct.pack("<i", len(value)) + value


def _block(y: int, raw: bytes) -> bytes:
    """One block, zip-compressed unless that would not make it smaller (EXR then stores it raw)."""
    data = np.frombuffer(raw, np.uint8)
    t = np.concatenate([data[0::2], data[1::2]])
    predicted = t.copy()
    predicted[1:] = np.bitwise_and(np.diff(t.astype(np.int16)) + 128, 0xFF)
    packed = zlib.compress(predicted.tobytes())
    body = packed if len(packed) < len(raw) else raw
    return struct.pack("<ii", y, len(body)) + body
