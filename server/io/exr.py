"""OpenEXR frames in and out through OpenImageIO, keeping what compositors rely on.

Reading takes one part of a file (of a multipart EXR the part named, or its one RGB image) with
its channels in their own pixel type, its data and display windows, pixel aspect and metadata,
so that a plate written back by cvgen lines up with the original in Nuke or Blender. Damaged
files are common on farms (a render killed mid-frame, a filer hiccup): every way a file can be
bad ends in an `InputError` that names the file, never in a crash or a traceback.

Writing is atomic (a hidden temp file in the destination folder, then a rename), so a crash
never leaves half a frame where a host or a restarted job would take it for a finished one.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import struct
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, TypeVar

import numpy as np
import OpenImageIO as oiio

from cvgen.protocol.images import Image, metadata, real_valued

from ..errors import InputError
from cvgen.protocol.files import atomic_output

#: Compressions cvgen writes: lossless zip/zips/piz and lossy dwaa. Blender cannot read
#: htj2k or zstd EXRs, and the other legacy codecs gain nothing over these.
WRITE_COMPRESSIONS = ("zip", "zips", "piz", "dwaa")

#: Larger headers are treated as damage: real plates are far smaller, and trusting a
#: corrupted header would make us allocate tens of gigabytes before noticing.
MAX_SIDE = 65536
MAX_SAMPLES = 2**31

#: Why a write fails when the disk, the user's quota or a file size limit leaves no room.
NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)

#: How much of a file is searched for a header attribute OpenImageIO does not report as written.
_HEADER_BYTES = 1 << 20

_MAGIC = b"\x76\x2f\x31\x01"
_EXR_SUFFIXES = (".exr", ".sxr", ".mxr")
_NATIVE_TYPES = {"half": oiio.TypeHalf, "float": oiio.TypeFloat, "uint": oiio.TypeUInt}
_WRITE_TYPES = {"half": "half", "float16": "half", "float": "float", "float32": "float"}

# EXR attribute types that a plain list of numbers cannot tell apart from others, by lower-case
# name (OpenImageIO's and OpenEXR's), as OpenImageIO matches names.
_TYPED_ATTRIBUTES = {
    "smpte:timecode": oiio.TypeTimeCode,
    "timecode": oiio.TypeTimeCode,
    "smpte:keycode": oiio.TypeKeyCode,
    "keycode": oiio.TypeKeyCode,
    "framespersecond": oiio.TypeRational,
}
# Lists of whole numbers EXR has a type for (v2i, v3i, box2i); other lengths become floats.
_INT_VECTORS = {2: oiio.TypeVector2i, 3: oiio.TypeVector3i, 4: oiio.TypeBox2i}
_FLOAT_VECTORS = {2: oiio.TypeFloat2, 3: oiio.TypeVector, 9: oiio.TypeMatrix33, 16: oiio.TypeMatrix44}

_T = TypeVar("_T")

#: Parts looked at in a multi-part file (real ones hold tens; a damaged header may claim more),
#: and how many a refusal lists.
_MAX_PARTS = 10000
_LISTED_PARTS = 24


def read_exr(path: str | os.PathLike[str], fd: int | None = None, part: str | None = None) -> Image:
    """One part of an EXR file as an `Image`; half stays float16, float stays float32.

    `part` names it, by the part's name or by its view (`_choose_part`); a multi-part file read
    with no part named gives its one part with R, G and B channels, and is refused, naming its
    parts, when it has several (a stereo pair) or none.

    Files with channels of mixed pixel types, or with uint channels (object ids), come back
    as float32 with the values unchanged. `fd` is the file already opened (by the server's
    path rules, which refuse a path that changed after its check): it is read through
    `/proc/self/fd`, which no later change of `path` can redirect, and `path` only names it
    in messages (Linux only).
    """
    return _with_input(path, fd, part, _read_part)


def check_exr_header(path: str | os.PathLike[str], fd: int | None = None,
                     part: str | None = None) -> tuple[int, int, tuple[str, ...]]:
    """The width, height and channel names of what `read_exr` would read, from the headers alone,
    refusing what `read_exr` would refuse there with the same message: a job checks every input
    frame this way before it renders any, so a damaged frame stops it before the work, not
    halfway through. Damage in the pixels alone is found only when they are read."""
    def size(inp: oiio.ImageInput, index: int, name: str, shown: str) -> tuple[int, int, tuple[str, ...]]:
        spec = inp.spec()
        _check_spec(spec, shown)
        return spec.width, spec.height, tuple(spec.channelnames)

    return _with_input(path, fd, part, size)


def _choose_part(parts: list[tuple[str, str, tuple[str, ...]]], part: str | None, shown: str) -> int:
    """The index of the part to read among `parts` (name, view, channels), or an `InputError`
    listing them: the part named `part`, else the parts of view `part` (all parts when `part`
    is None), of which the only one, or else the only one with R, G and B channels."""
    if part is not None and any(name == part for name, _, _ in parts):
        return next(i for i, (name, _, _) in enumerate(parts) if name == part)
    candidates = [i for i, (_, view, _) in enumerate(parts) if part is None or view == part]
    if len(candidates) > 1:
        candidates = [i for i in candidates if {"R", "G", "B"} <= set(parts[i][2])]
    if len(candidates) == 1:
        return candidates[0]
    listed = "; ".join(
        f"{name or f'part {i}'}{f' (view {view})' if view else ''}: {', '.join(channels)}"
        for i, (name, view, channels) in enumerate(parts[:_LISTED_PARTS])
    ) + ("; ..." if len(parts) > _LISTED_PARTS else "")
    viewed = [p for p in parts if part is None or p[1] == part]
    rgb = sum({"R", "G", "B"} <= set(channels) for _, _, channels in viewed)
    if not viewed:
        why = f"it has no part or view named {part!r}"
    else:
        where = "it has" if part is None else f"its view {part!r} has"
        why = f"{where} {len(viewed)} parts, {rgb} of them with R, G and B channels"
    # An example naming a real part: an image with R, G and B where there is one.
    named = sorted((p for p in viewed or parts if p[0]), key=lambda p: not {"R", "G", "B"} <= set(p[2]))
    example = f", e.g. plate.####.exr#{named[0][0]}" if named else ""
    raise InputError(
        f"cannot read {shown}: {why}; its parts are {listed}. Name the part to read by ending the input's path"
        f" with #NAME (a part's name or view){example}"
    )


def _with_input(path: str | os.PathLike[str], fd: int | None, part: str | None,
                use: Callable[[oiio.ImageInput, int, str, str], _T]) -> _T:
    """`use(input, part index, name, shown)` on the file opened by OpenImageIO at the part chosen,
    every failure an `InputError` naming `path` (`shown`); `name` is what OpenImageIO opened,
    which its messages may quote."""
    shown = os.fspath(path)
    source = shown if fd is None else f"/proc/self/fd/{fd}"
    _check_signature(source, shown)
    try:
        with _exr_name(Path(source)) as name:
            inp = oiio.ImageInput.open(name)
            if inp is None:
                error = _oiio_error()
                detail = _clean(error, name, shown)
                raise InputError(
                    _unsupported(error, shown)
                    or f"cannot read {shown}: the file is damaged or not a valid OpenEXR image ({detail})"
                )
            try:
                index = _seek_part(inp, part, name, shown)
                return use(inp, index, name, shown)
            finally:
                inp.close()
    except InputError:
        raise
    except (RuntimeError, ValueError, TypeError, UnicodeError, MemoryError, OSError) as exc:
        # ValueError covers the frame itself being invalid (duplicate channel names, say).
        raise InputError(f"cannot read {shown}: the file is damaged or could not be read ({exc})") from None


def write_exr(
    path: str | os.PathLike[str],
    image: Image,
    compression: str = "zip",
    dtype: str | None = None,
    provenance: dict[str, Any] | None = None,
    dir_fd: int | None = None,
) -> None:
    """Write `image` to `path` atomically, keeping its windows, pixel aspect and attributes.

    `dtype` is "half" (float16) or "float" (float32); None keeps the image's own type, with
    8- and 16-bit integer images (0..max meaning 0..1) written as half. `provenance` entries
    become string attributes named `cvgen:<key>` (non-strings JSON-encoded), so anyone reading
    the frame can tell which op, parameters, seed and model made it. With `dir_fd` (an open
    folder: the server's checked output folder) the file goes into that folder, not wherever
    `path`'s folder leads by now (`atomic_output`).
    """
    if compression not in WRITE_COMPRESSIONS:
        raise ValueError(
            f"EXR compression {compression!r} is not allowed; use one of {', '.join(WRITE_COMPRESSIONS)}"
            " (Blender cannot read htj2k or zstd)"
        )
    spec = _write_spec(image, _write_type(image, dtype), compression, provenance or {})
    pixels = np.ascontiguousarray(image.pixels)
    with atomic_output(path, ".exr", dir_fd) as tmp:
        out = oiio.ImageOutput.create("openexr")
        if out is None:
            raise OSError(f"cannot write {os.fspath(path)}: OpenImageIO has no OpenEXR writer ({_oiio_error()})")
        ok = out.open(tmp, spec) and out.write_image(pixels)
        error = out.geterror() if (not ok or out.has_error) else ""
        closed = out.close()
        if not (ok and closed) or error:
            cause = _write_errno(tmp)
            if cause is not None:
                raise OSError(cause, f"cannot write {os.fspath(path)}: {os.strerror(cause)}")
            detail = _clean(error or _oiio_error() or "unknown error", tmp, os.fspath(path))
            raise OSError(f"cannot write {os.fspath(path)}: {detail}")


def _write_errno(tmp: str) -> int | None:
    """OpenImageIO reports a failed write without its OS error; when it was a lack of room,
    adding 1 MiB to the (doomed) temp file fails the same way, and says which."""
    try:
        with open(tmp, "ab") as f:
            for _ in range(16):
                f.write(bytes(65536))
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        return exc.errno if exc.errno in NO_ROOM else None
    return None


def _check_signature(source: str, path: str) -> None:
    """Refuse missing files and non-EXR files up front, with a message an artist can act on;
    `source` is what is opened, `path` what the messages name."""
    try:
        with open(source, "rb") as f:
            magic = f.read(4)
    except FileNotFoundError:
        raise InputError(f"cannot read {path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"cannot read {path}: it is a folder, not an EXR file") from None
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from None
    if magic != _MAGIC:
        raise InputError(f"cannot read {path}: not an OpenEXR file (it lacks the EXR signature)")


@contextmanager
def _exr_name(path: Path) -> Iterator[str]:
    """A name for `path` ending in .exr, so OpenImageIO uses its OpenEXR reader and reports
    that reader's error (rather than "no format reader found") for odd extensions. The link
    points at `path` as given, never at what it resolves to now: `/proc/self/fd/N` must stay
    the open file, not become its current name."""
    if path.suffix.lower() in _EXR_SUFFIXES:
        yield str(path)
        return
    with tempfile.TemporaryDirectory(prefix="cvgen-exr-") as folder:
        link = os.path.join(folder, "frame.exr")
        try:
            os.symlink(os.path.abspath(path), link)
        except OSError:  # no symlinks (Windows without developer mode): read a copy
            shutil.copyfile(path, link)
        yield link


def _unsupported(error: str, shown: str) -> str | None:
    """The refusal for a valid file OpenImageIO cannot read, or None: subsampled channels, which
    in practice are luminance/chroma files (Y, RY, BY: OpenEXR's RGBA interface writes them)."""
    subsampled = re.findall(r'Subsampled channels are not supported \(channel "([^"]*)"', error)
    if not subsampled:
        return None
    how = (
        "convert it to RGB first (Nuke: Read it and Write it with channels rgba; Blender or any reader built on"
        " OpenEXR's RGBA interface turns it into RGB when it loads it)"
    )
    if {"RY", "BY"} & set(subsampled):
        return (
            f"cannot read {shown}: it is a luminance/chroma (YC) EXR, a valid file whose chroma channels"
            f" ({', '.join(subsampled)}) are stored at reduced resolution, which cvgen does not read; {how}"
        )
    return (
        f"cannot read {shown}: it is a valid EXR with subsampled channels ({', '.join(subsampled)}), which cvgen"
        f" does not read; {how}"
    )


def _seek_part(inp: oiio.ImageInput, part: str | None, name: str, shown: str) -> int:
    """Move `inp` to the part to read (`_choose_part`) and return its index; a single-part file
    read with no part named is read as it is."""
    parts: list[tuple[str, str, tuple[str, ...]]] = []
    while len(parts) < _MAX_PARTS and inp.seek_subimage(len(parts), 0):
        spec = inp.spec()
        parts.append((spec.get_string_attribute("name"), spec.get_string_attribute("view"), tuple(spec.channelnames)))
    _oiio_error(inp)  # the seek past the last part leaves an error pending that is no fault of the file
    index = 0 if part is None and len(parts) <= 1 else _choose_part(parts, part, shown)
    if not inp.seek_subimage(index, 0):
        detail = _clean(_oiio_error(inp) or "no header could be read", name, shown)
        raise InputError(f"cannot read {shown}: the file is damaged or not a valid OpenEXR image ({detail})")
    return index


def _read_part(inp: oiio.ImageInput, index: int, name: str, shown: str) -> Image:
    spec = inp.spec()
    _check_spec(spec, shown)
    pixels = _read_pixels(inp, index, spec, name, shown)
    display = (spec.full_x, spec.full_y, spec.full_width, spec.full_height)
    if index == 0 and spec.get_string_attribute("textureformat") == "CubeFace Environment":
        display = _display_window(name, shown)
    return Image(
        pixels,
        tuple(spec.channelnames),
        (spec.x, spec.y),
        display,
        spec.get_float_attribute("PixelAspectRatio", 1.0),
        _attributes(spec),
    )


def _check_spec(spec: oiio.ImageSpec, shown: str) -> None:
    """Refuse a header cvgen cannot read pixels from, or should not trust, before any are read."""
    width, height, nch = spec.width, spec.height, spec.nchannels
    if spec.deep:
        raise InputError(
            f"cannot read {shown}: it holds deep data (several samples per pixel), which cvgen does not"
            " read; flatten it first (Nuke: DeepToImage)"
        )
    if nch < 1 or width < 1 or height < 1:
        raise InputError(
            f"cannot read {shown}: its header describes an empty image ({width}x{height}, {nch} channels)"
        )
    if width > MAX_SIDE or height > MAX_SIDE or width * height * nch > MAX_SAMPLES:
        raise InputError(
            f"cannot read {shown}: its header claims {width}x{height} pixels with {nch} channels, more than"
            f" cvgen reads (at most {MAX_SIDE} pixels a side, {MAX_SAMPLES:,} values in all); the file is"
            " probably damaged"
        )


def _display_window(name: str, shown: str) -> tuple[int, int, int, int]:
    """The display window as the file's (first) header states it, from its bytes: for a MIP-mapped
    cube map OpenImageIO reports one face's size instead, and a plate written back would not
    line up."""
    with open(name, "rb") as f:
        header = f.read(_HEADER_BYTES)
    pos = 8
    while pos < len(header) and header[pos]:
        name_end = header.find(b"\0", pos)
        type_end = header.find(b"\0", name_end + 1) if name_end >= 0 else -1
        if type_end < 0 or type_end + 5 > len(header):
            break
        size = int.from_bytes(header[type_end + 1:type_end + 5], "little", signed=True)
        if size < 0:
            break
        if header[pos:type_end] == b"displayWindow\0box2i" and size == 16 and type_end + 21 <= len(header):
            x0, y0, x1, y1 = struct.unpack("<4i", header[type_end + 5:type_end + 21])
            return (x0, y0, x1 - x0 + 1, y1 - y0 + 1)
        pos = type_end + 5 + size
    raise InputError(
        f"cannot read {shown}: its header's display window could not be found; the file is probably damaged"
    )


def _read_pixels(inp: oiio.ImageInput, index: int, spec: oiio.ImageSpec, name: str, shown: str) -> np.ndarray:
    """Read runs of channels that share a pixel type in that type; one run of half or float
    is returned as is, anything else as float32 (uint converted by value, not normalised)."""
    kinds = [str(t) for t in spec.channelformats] or [str(spec.format)] * spec.nchannels
    runs: list[tuple[int, int, str]] = []
    for channel, kind in enumerate(kinds):
        if kind not in _NATIVE_TYPES:
            raise InputError(f"cannot read {shown}: channel {channel} has unsupported pixel type {kind!r}")
        if runs and runs[-1][2] == kind:
            runs[-1] = (runs[-1][0], channel + 1, kind)
        else:
            runs.append((channel, channel + 1, kind))
    parts = []
    for begin, end, kind in runs:
        data = inp.read_image(index, 0, begin, end, _NATIVE_TYPES[kind])
        if data is None or inp.has_error:
            detail = _clean(_oiio_error(inp) or "no pixels could be read", name, shown)
            raise InputError(f"cannot read {shown}: the file is damaged or truncated ({detail})")
        parts.append(np.asarray(data).reshape(spec.height, spec.width, end - begin))
    if len(parts) == 1 and runs[0][2] != "uint":
        return parts[0]
    return np.concatenate([p.astype(np.float32) for p in parts], axis=2)


def _attributes(spec: oiio.ImageSpec) -> dict[str, Any]:
    """Header metadata as plain values (lists for tuples), as `metadata` keeps it: the file's
    structure (compression, oiio:*, openexr:*, ...) and attributes whose name or value is not
    valid text, or that a request could not send, are dropped rather than failing a good frame."""
    attributes: dict[str, Any] = {}
    params = spec.extra_attribs
    for index in range(len(params)):
        try:
            name, value = params[index].name, params[index].value
        except UnicodeError:
            continue
        attributes[name] = list(value) if isinstance(value, tuple) else value
    return metadata(attributes)


def _write_type(image: Image, dtype: str | None) -> str:
    if dtype is None:
        return "float" if image.pixels.dtype == np.float32 else "half"
    if dtype not in _WRITE_TYPES:
        raise ValueError(f"EXR pixel type {dtype!r} is not one of {', '.join(_WRITE_TYPES)}")
    return _WRITE_TYPES[dtype]


def _write_spec(image: Image, pixel_type: str, compression: str, provenance: dict[str, Any]) -> oiio.ImageSpec:
    """The file's layout comes from the pixels and the Image's fields alone; of `attributes`
    only what `metadata` keeps is written, so a header field named in them (a data window
    larger than the pixels, say, which would make OpenImageIO read past them) never is, even
    for an Image that did not come through a request's checks."""
    spec = oiio.ImageSpec(image.width, image.height, len(image.channels), pixel_type)
    spec.x, spec.y = image.origin
    spec.full_x, spec.full_y, spec.full_width, spec.full_height = image.display or image.data_window
    spec.channelnames = image.channels
    for name, value in metadata(image.attributes).items():
        _set_attribute(spec, name, value)
    for key, value in provenance.items():
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
        spec.attribute(f"cvgen:{key}", text)
    spec.attribute("compression", compression)
    spec.attribute("PixelAspectRatio", float(image.pixel_aspect))
    return spec


def _set_attribute(spec: oiio.ImageSpec, name: str, value: Any) -> None:
    """Set a metadata attribute (one `metadata` keeps) with the EXR type its plain value implies:
    true/false as text, whole numbers as int, real numbers as 32-bit float, lists as the EXR
    vector, matrix or array type of their length (whole numbers in lists of 2 to 4 only); whole
    numbers given for a standard attribute of real numbers as floats."""
    if isinstance(value, bool):
        spec.attribute(name, "true" if value else "false")
    elif isinstance(value, (int, float)) and real_valued(name):
        spec.attribute(name, float(value))
    elif isinstance(value, (str, int, float)):
        spec.attribute(name, value)
    elif name.lower() in _TYPED_ATTRIBUTES:
        spec.attribute(name, _TYPED_ATTRIBUTES[name.lower()], tuple(value))
    elif all(isinstance(v, str) for v in value):
        spec.attribute(name, oiio.TypeDesc(f"string[{len(value)}]"), tuple(value))
    elif all(isinstance(v, int) for v in value) and len(value) in _INT_VECTORS and not real_valued(name):
        spec.attribute(name, _INT_VECTORS[len(value)], tuple(value))
    else:
        kind = _FLOAT_VECTORS.get(len(value), oiio.TypeDesc(f"float[{len(value)}]"))
        spec.attribute(name, kind, tuple(float(v) for v in value))


def _oiio_error(source: oiio.ImageInput | None = None) -> str:
    """OpenImageIO's pending error text; damaged headers can put bytes in it that are not
    UTF-8, which the Python binding cannot decode."""
    try:
        return source.geterror() if source is not None else oiio.geterror()
    except UnicodeError:
        return "its header is corrupt: OpenEXR's description of the fault quotes bytes from it that are not text"


def _clean(text: str, name: str, shown: str) -> str:
    """The first line of an OpenImageIO/OpenEXR error, without its error codes and with our
    temporary names replaced by the file the user asked for."""
    lines = [line.strip() for line in text.replace(name, shown).splitlines() if line.strip()]
    if not lines:
        return "no details given"
    first = re.sub(r"^EXR Error \([^)]*\):\s*", "", lines[0])
    first = re.sub(r"^EXR_ERR_[A-Z_]+\s*", "", first)
    return first if len(first) <= 240 else first[:237] + "..."


def read_provenance(path: str | os.PathLike[str]) -> dict[str, str]:
    """The `cvgen:*` attributes of a frame's header (keys without the prefix), without reading
    its pixels; empty for a file cvgen did not write or cannot read."""
    inp = oiio.ImageInput.open(os.fspath(path))
    if inp is None:
        _oiio_error()
        return {}
    try:
        spec = inp.spec()
        return {name[len("cvgen:"):]: str(spec.getattribute(name)) for name in
                (p.name for p in spec.extra_attribs) if name.startswith("cvgen:")}
    except (RuntimeError, UnicodeError, ValueError):
        return {}
    finally:
        inp.close()

