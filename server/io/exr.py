"""OpenEXR frames in and out through OpenImageIO, keeping what compositors rely on.

Reading takes part 0 of a file (the first part of a multipart EXR) with its channels in their
own pixel type, its data and display windows, pixel aspect and metadata, so that a plate
written back by cvgen lines up with the original in Nuke or Blender. Damaged files are common
on farms (a render killed mid-frame, a filer hiccup): every way a file can be bad ends in an
`InputError` that names the file, never in a crash or a traceback.

Writing is atomic (a hidden temp file in the destination folder, then a rename), so a crash
never leaves half a frame where a host or a restarted job would take it for a finished one.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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


def read_exr(path: str | os.PathLike[str], fd: int | None = None) -> Image:
    """Part 0 of an EXR file as an `Image`; half stays float16, float stays float32.

    Files with channels of mixed pixel types, or with uint channels (object ids), come back
    as float32 with the values unchanged. `fd` is the file already opened (by the server's
    path rules, which refuse a path that changed after its check): it is read through
    `/proc/self/fd`, which no later change of `path` can redirect, and `path` only names it
    in messages (Linux only).
    """
    shown = os.fspath(path)
    source = shown if fd is None else f"/proc/self/fd/{fd}"
    _check_signature(source, shown)
    try:
        with _exr_name(Path(source)) as name:
            inp = oiio.ImageInput.open(name)
            if inp is None:
                detail = _clean(_oiio_error(), name, shown)
                raise InputError(f"cannot read {shown}: the file is damaged or not a valid OpenEXR image ({detail})")
            try:
                return _read_part(inp, name, shown)
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


def _read_part(inp: oiio.ImageInput, name: str, shown: str) -> Image:
    spec = inp.spec()
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
    pixels = _read_pixels(inp, spec, name, shown)
    return Image(
        pixels,
        tuple(spec.channelnames),
        (spec.x, spec.y),
        (spec.full_x, spec.full_y, spec.full_width, spec.full_height),
        spec.get_float_attribute("PixelAspectRatio", 1.0),
        _attributes(spec),
    )


def _read_pixels(inp: oiio.ImageInput, spec: oiio.ImageSpec, name: str, shown: str) -> np.ndarray:
    """Read runs of channels that share a pixel type in that type; one run of half or float
    is returned as is, anything else as float32 (uint converted by value, not normalised)."""
    kinds = [str(t) for t in spec.channelformats] or [str(spec.format)] * spec.nchannels
    runs: list[tuple[int, int, str]] = []
    for index, kind in enumerate(kinds):
        if kind not in _NATIVE_TYPES:
            raise InputError(f"cannot read {shown}: channel {index} has unsupported pixel type {kind!r}")
        if runs and runs[-1][2] == kind:
            runs[-1] = (runs[-1][0], index + 1, kind)
        else:
            runs.append((index, index + 1, kind))
    parts = []
    for begin, end, kind in runs:
        data = inp.read_image(0, 0, begin, end, _NATIVE_TYPES[kind])
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
        return "OpenEXR reported an error whose text is unreadable"


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

