"""Frames as hosts and the server exchange them: pixels plus the EXR facts compositors rely on.

An `Image` keeps what an EXR header says about where its pixels sit (data window inside a
display window, pixel aspect) so a round trip through cvgen never shifts or squashes a plate.
Channels are addressed by name because neither EXR nor OpenImageIO promise an order.

Images arrive from clients, and every field ends up in OpenImageIO's EXR writer, native code
that trusts what it is given. So an `Image` holds only what that writer can write and read back
unchanged: windows inside OpenEXR's coordinate range, a sane pixel aspect, channel names an EXR
header can hold. The layout of a file (windows, channels, pixel type, tiling, compression, line
order, ...) comes only from the pixels and these fields, never from `attributes`: those are
metadata, and `attribute_problem` says which names and values count as such.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from .errors import ProtocolError

#: Pixel types that travel on the wire and in EXR files.
PIXEL_DTYPES = ("float16", "float32", "uint8", "uint16")

Window = tuple[int, int, int, int]
"""x, y, width, height in pixels (EXR's min corner plus size)."""

#: OpenEXR keeps every window corner strictly between -COORDINATE_LIMIT and COORDINATE_LIMIT
#: (INT_MAX / 2, so that no width or sum of coordinates overflows 32 bits); files outside it
#: are refused by the writer ("Invalid data window").
COORDINATE_LIMIT = (2**31 - 1) // 2
#: Longest side of a data or display window: OpenImageIO refuses to read back more than this
#: ("limits:resolution") and to write more than this a side.
MAX_WINDOW_SIDE = 2**20
#: Pixel aspect ratios kept: far beyond anamorphic lenses (2:1) and squeezed or stretched
#: plates in either direction, and inside OpenEXR's own 1e-6..1e6. Checked after rounding to
#: the 32-bit float an EXR header stores.
PIXEL_ASPECT_RANGE = (1e-3, 1e3)
#: More channels than any render's passes; OpenImageIO writes at most 4,096.
MAX_CHANNELS = 1024
#: Longest channel or attribute name, in UTF-8 bytes: OpenEXR's limit with long names.
MAX_NAME_BYTES = 255
#: Bounds on `attributes`: how many, the longest text, the longest list, and the total size
#: (names plus values, 4 bytes a number), so a header stays a header.
MAX_ATTRIBUTES = 256
MAX_TEXT_BYTES = 65536
MAX_LIST_ITEMS = 256
MAX_ATTRIBUTE_BYTES = 2**20

#: Names of header fields that describe the file's layout or that OpenImageIO's EXR writer
#: takes as instructions rather than metadata; lower case, as OpenImageIO matches names
#: without regard to case. The pixels and the Image's own fields set these.
RESERVED_ATTRIBUTES = frozenset({
    # OpenEXR's required, multi-part and deep header fields
    "channels", "compression", "datawindow", "displaywindow", "lineorder", "pixelaspectratio",
    "tiles", "name", "type", "version", "chunkcount", "maxsamplesperpixel",
    # codec settings, and header fields of other typed structure
    "dwacompressionlevel", "zipcompressionlevel", "envmap", "preview", "deepimagestate", "idmanifest",
    # what OpenImageIO's writer interprets (MIP-maps, environment maps, sample layout)
    "textureformat", "planarconfig",
})
#: OpenImageIO's own namespaces: instructions to the writer (oiio:ioproxy is a raw pointer),
#: file-structure facts from the reader, and the reader's preview-image fields.
RESERVED_PREFIXES = ("oiio:", "openexr:", "thumbnail_")

_INT32 = (-(2**31), 2**31)
_UINT32 = (0, 2**32)
# Standard OpenEXR metadata (and OpenImageIO's names for it) has one EXR type; a value of any
# other shape is dropped by the writer or makes the file unreadable, so it is refused instead.
# kind: "text", "number", or (item kind, count) for lists; count None means any length.
_TEXT, _NUMBER, _NON_NEGATIVE = "text", "number", "non-negative number"
_STANDARD_KINDS: dict[str, Any] = {
    **dict.fromkeys(("owner", "copyright", "comments", "imagedescription", "description", "capdate",
                     "datetime", "wrapmodes", "renderingtransform", "lookmodtransform", "view"), _TEXT),
    **dict.fromkeys(("xdensity", "xresolution", "utcoffset", "longitude", "latitude", "altitude", "focus",
                     "exptime", "exposuretime", "aperture", "fnumber", "isospeed", "whiteluminance"), _NUMBER),
    "screenwindowwidth": _NON_NEGATIVE,
    **dict.fromkeys(("screenwindowcenter", "adoptedneutral"), (_NUMBER, 2)),
    "chromaticities": (_NUMBER, 8),
    **dict.fromkeys(("worldtocamera", "worldtondc", "worldtoscreen"), (_NUMBER, 16)),
    "multiview": (_TEXT, None),
    **dict.fromkeys(("timecode", "smpte:timecode"), (_UINT32, 2)),
    # film manufacturer, film type, prefix, count, perforation offset, perfs per frame, perfs per count
    **dict.fromkeys(("keycode", "smpte:keycode"),
                    [(0, 100), (0, 100), (0, 1000000), (0, 10000), (0, 120), (1, 16), (20, 121)]),
    "framespersecond": ((0, 2**31), 2),
}


@dataclass
class Image:
    """One frame: an (height, width, channels) array placed in a data window.

    `origin` is the data window's top-left corner and `display` the display window; both use
    EXR conventions (y down, integer pixel coordinates) and lie inside OpenEXR's coordinate
    range. `pixel_aspect` is kept as the 32-bit float an EXR header stores. `attributes` carries
    metadata that must survive processing (camera, lens, timecode, ...): text, numbers and flat
    lists of either; `attribute_problem` has the rules, which requests are held to at submit
    and which the EXR writer applies again, skipping what breaks them.
    """

    pixels: np.ndarray
    channels: tuple[str, ...]
    origin: tuple[int, int] = (0, 0)
    display: Window | None = None
    pixel_aspect: float = 1.0
    attributes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.pixels.ndim == 2:
            self.pixels = self.pixels[:, :, None]
        if self.pixels.ndim != 3:
            raise ProtocolError(f"image pixels must be (height, width, channels), got shape {self.pixels.shape}")
        if str(self.pixels.dtype) not in PIXEL_DTYPES:
            raise ProtocolError(f"pixel type {self.pixels.dtype} is not one of {', '.join(PIXEL_DTYPES)}")
        if min(self.pixels.shape) < 1:
            raise ProtocolError(f"image pixels of shape {self.pixels.shape} hold no pixels")
        self.channels = tuple(self.channels)
        if len(self.channels) != self.pixels.shape[2]:
            raise ProtocolError(
                f"image has {self.pixels.shape[2]} channels but {len(self.channels)} names: {list(self.channels)[:8]}"
            )
        if len(self.channels) > MAX_CHANNELS:
            raise ProtocolError(f"image has {len(self.channels)} channels, more than the {MAX_CHANNELS} cvgen takes")
        for name in self.channels:
            problem = _name_problem(name)
            if problem:
                raise ProtocolError(f"channel name {_shown(name)} {problem}")
        if len(set(self.channels)) != len(self.channels):
            raise ProtocolError(f"duplicate channel names: {list(self.channels)[:8]}")
        if self.display is None:
            self.display = self.data_window
        if len(self.origin) != 2 or len(self.display) != 4:
            raise ProtocolError(f"an image needs an origin (x, y) and a display window (x, y, width, height), "
                                f"not {self.origin} and {self.display}")
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (*self.origin, *self.display)):
            raise ProtocolError(f"image windows {self.origin} {self.display} must be whole numbers")
        x, y, w, h = (int(v) for v in self.display)
        self.origin, self.display = (int(self.origin[0]), int(self.origin[1])), (x, y, w, h)
        _check_window("data window", self.data_window)
        _check_window("display window", self.display)
        try:
            aspect = float(self.pixel_aspect)
        except (TypeError, ValueError, OverflowError):
            raise ProtocolError(f"pixel aspect must be a number, not {self.pixel_aspect!r}") from None
        low, high = PIXEL_ASPECT_RANGE
        if not low <= aspect <= high:  # NaN fails too
            raise ProtocolError(f"pixel aspect {self.pixel_aspect!r} is outside {low:g}..{high:g}")
        self.pixel_aspect = float(np.float32(aspect))
        if not isinstance(self.attributes, dict) or not all(isinstance(k, str) for k in self.attributes):
            raise ProtocolError("image attributes must be a map with text names")

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def data_window(self) -> Window:
        return (self.origin[0], self.origin[1], self.width, self.height)

    def has(self, *names: str) -> bool:
        return all(n in self.channels for n in names)

    def channel(self, name: str) -> np.ndarray:
        """The named channel as a 2-D view; the error lists what the frame does have."""
        try:
            return self.pixels[:, :, self.channels.index(name)]
        except ValueError:
            raise ProtocolError(
                f"channel {name!r} not found; the image has {', '.join(self.channels) or 'no channels'}"
            ) from None

    def stack(self, names: tuple[str, ...] | list[str], dtype: str = "float32") -> np.ndarray:
        """Named channels stacked as (height, width, len(names)), converted to `dtype`."""
        return np.stack([self.channel(n) for n in names], axis=-1).astype(dtype, copy=False)

    def in_window(self, window: Window) -> "Image":
        """This image's pixels placed in another data window: cropped where outside, zero where missing.

        Inputs of one shot (a plate and a foreground rendered with a tighter bounding box, say)
        often have different data windows; ops work per pixel, so they get one common window.
        """
        x, y, w, h = window
        if (x, y, w, h) == self.data_window:
            return self
        out = np.zeros((h, w, self.pixels.shape[2]), dtype=self.pixels.dtype)
        x0, y0 = max(x, self.origin[0]), max(y, self.origin[1])
        x1 = min(x + w, self.origin[0] + self.width)
        y1 = min(y + h, self.origin[1] + self.height)
        if x1 > x0 and y1 > y0:
            out[y0 - y : y1 - y, x0 - x : x1 - x] = self.pixels[
                y0 - self.origin[1] : y1 - self.origin[1], x0 - self.origin[0] : x1 - self.origin[0]
            ]
        return Image(out, self.channels, (x, y), self.display, self.pixel_aspect, dict(self.attributes))

    def describe(self) -> dict[str, Any]:
        """Header fields for the wire (everything but the pixels)."""
        return {
            "channels": list(self.channels),
            "origin": list(self.origin),
            "display": list(self.display or self.data_window),
            "pixel_aspect": float(self.pixel_aspect),
            "attributes": self.attributes,
        }

    @classmethod
    def from_description(cls, pixels: np.ndarray, desc: Mapping[str, Any]) -> "Image":
        """An image from its wire description (the fields `describe` gives), held to the rules
        strictly: a field of the wrong type is refused rather than converted, and so is any
        attribute `attribute_problem` refuses, with a sentence naming it."""
        channels = desc.get("channels")
        if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
            raise ProtocolError(f"an image's channels must be a list of names, not {_shown(channels)}")
        origin = _whole_numbers(desc.get("origin", [0, 0]), 2, "origin (x, y)")
        display = desc.get("display")
        if display is not None:
            display = _whole_numbers(display, 4, "display window (x, y, width, height)")
        aspect = desc.get("pixel_aspect", 1.0)
        if isinstance(aspect, bool) or not isinstance(aspect, (int, float)):
            raise ProtocolError(f"an image's pixel aspect must be a number, not {_shown(aspect)}")
        attributes = check_attributes(desc.get("attributes"))
        return cls(pixels, tuple(channels), origin, display, aspect, attributes)  # type: ignore[arg-type]


def attribute_problem(name: Any, value: Any) -> str | None:
    """Why `name: value` cannot be kept as EXR metadata (a phrase that follows the name), or None.

    A name is text of 1 to MAX_NAME_BYTES UTF-8 bytes without control characters, and neither a
    reserved header field (`RESERVED_ATTRIBUTES`, any case) nor in a reserved namespace. A value
    is text without NUL (which would cut it short in the file) of at most MAX_TEXT_BYTES, a whole
    number that fits 32 bits, a real number (stored as a 32-bit float), true or false (stored as
    the text "true" or "false"), or a flat list of 1 to MAX_LIST_ITEMS texts or numbers (whole
    numbers alone in lists of 2 to 4, else stored as 32-bit floats). EXR headers hold no maps:
    structured metadata travels as JSON text. Standard EXR attributes (chromaticities, timecode,
    ...) must have their standard type. (OpenImageIO does not store empty text.)
    """
    problem = _name_problem(name)
    if problem is not None:
        return problem
    lower = name.lower()
    if lower in RESERVED_ATTRIBUTES or lower.startswith(RESERVED_PREFIXES):
        return ("names a field of the EXR header that cvgen sets from the pixels and the image's own fields; "
                "it cannot be given as an attribute")
    kind = _STANDARD_KINDS.get(lower)
    return _value_problem(value) if kind is None else _kind_problem(value, kind)


def check_attributes(attributes: Any) -> dict[str, Any]:
    """Attributes from a request, or a ProtocolError naming the first one `attribute_problem`
    refuses, or saying which bound (count, total size) the whole map exceeds."""
    if attributes is None:
        return {}
    if not isinstance(attributes, dict):
        raise ProtocolError(f"an image's attributes must be a map of names to values, not {_shown(attributes)}")
    if len(attributes) > MAX_ATTRIBUTES:
        raise ProtocolError(f"an image has {len(attributes)} attributes, more than the {MAX_ATTRIBUTES} cvgen keeps")
    total = 0
    for name, value in attributes.items():
        problem = attribute_problem(name, value)
        if problem is not None:
            raise ProtocolError(f"image attribute {_shown(name)} {problem}")
        total += _size(name) + _size(value)
    if total > MAX_ATTRIBUTE_BYTES:
        raise ProtocolError(f"an image's attributes hold {total:,} bytes, more than the {MAX_ATTRIBUTE_BYTES:,} "
                            "cvgen keeps")
    return dict(attributes)


def metadata(attributes: Mapping[Any, Any]) -> dict[str, Any]:
    """The attributes that are metadata by `attribute_problem`, within the bounds on count and
    total size (later ones are dropped first): what an EXR writer may put in a header, and what
    is kept of a header read back, so a frame read from a file can always be sent again."""
    kept: dict[str, Any] = {}
    total = 0
    for name, value in attributes.items():
        if len(kept) == MAX_ATTRIBUTES:
            break
        if attribute_problem(name, value) is not None:
            continue
        size = _size(name) + _size(value)
        if total + size <= MAX_ATTRIBUTE_BYTES:
            kept[name] = value
            total += size
    return kept


def _whole_numbers(value: Any, count: int, what: str) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or len(value) != count or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ProtocolError(f"an image's {what} must be {count} whole numbers, not {_shown(value)}")
    return tuple(value)


def _check_window(what: str, window: Window) -> None:
    x, y, w, h = window
    if not (1 <= w <= MAX_WINDOW_SIDE and 1 <= h <= MAX_WINDOW_SIDE):
        raise ProtocolError(f"the image's {what} is {w}x{h} pixels; each side must be 1 to {MAX_WINDOW_SIDE:,}")
    if not all(-COORDINATE_LIMIT < v < COORDINATE_LIMIT for v in (x, y, x + w - 1, y + h - 1)):
        raise ProtocolError(
            f"the image's {what} {list(window)} reaches outside the pixel coordinates OpenEXR can hold "
            f"({1 - COORDINATE_LIMIT:,} to {COORDINATE_LIMIT - 1:,})"
        )


def _name_problem(name: Any) -> str | None:
    if not isinstance(name, str):
        return "is not a text name"
    if not name:
        return "is an empty name"
    try:
        size = len(name.encode("utf-8"))
    except UnicodeError:
        return "is not valid UTF-8 text"
    if size > MAX_NAME_BYTES:
        return f"is a name of {size} bytes, more than the {MAX_NAME_BYTES} an EXR header holds"
    if any(unicodedata.category(c) == "Cc" for c in name):
        return "holds a control character (NUL, newline, ...), which an EXR name cannot"
    return None


def _text_problem(text: str) -> str | None:
    try:
        size = len(text.encode("utf-8"))
    except UnicodeError:
        return "is not valid UTF-8 text"
    if size > MAX_TEXT_BYTES:
        return f"is text of {size:,} bytes, more than the {MAX_TEXT_BYTES:,} cvgen keeps"
    if "\0" in text:
        return "holds a NUL character, which would cut it short in the file"
    return None


def _is_number(value: Any) -> bool:
    """A real number, or a whole number that fits 32 bits (an EXR header's int)."""
    if isinstance(value, bool):
        return False
    return isinstance(value, float) or isinstance(value, int) and _INT32[0] <= value < _INT32[1]


def real_valued(name: str) -> bool:
    """Whether the standard EXR attribute `name` holds real numbers (chromaticities, focus, ...),
    so that whole numbers given for it are written as the floats it is made of."""
    kind = _STANDARD_KINDS.get(name.lower())
    return kind in (_NUMBER, _NON_NEGATIVE) or isinstance(kind, tuple) and kind[0] == _NUMBER


def _value_problem(value: Any) -> str | None:
    if isinstance(value, str):
        return _text_problem(value)
    if isinstance(value, (bool, float)):
        return None
    if isinstance(value, int):
        if _INT32[0] <= value < _INT32[1]:
            return None
        return "is a whole number beyond 32 bits, which an EXR header cannot hold; send it as text"
    if isinstance(value, dict):
        return "is a map, which an EXR header cannot hold; send structured metadata as JSON text"
    if not isinstance(value, (list, tuple)):
        return f"is {type(value).__name__}; an attribute is text, a number, true/false or a list of texts or numbers"
    if not value:
        return "is an empty list"
    if len(value) > MAX_LIST_ITEMS:
        return f"is a list of {len(value):,} items, more than the {MAX_LIST_ITEMS:,} cvgen keeps"
    if all(isinstance(v, str) for v in value):
        problems = [p for p in map(_text_problem, value) if p]
        return f"holds an item that {problems[0]}" if problems else None
    if all(_is_number(v) for v in value):
        return None
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return "holds a whole number beyond 32 bits, which an EXR header cannot hold"
    return ("is a list that mixes texts and numbers, or holds lists, maps or true/false; "
            "a list holds texts only or numbers only")


def _kind_problem(value: Any, kind: Any) -> str | None:
    """Why `value` is not of a standard attribute's `kind` (see _STANDARD_KINDS), or None."""
    if kind == _TEXT:
        return _text_problem(value) if isinstance(value, str) else "is a standard EXR attribute and must be text"
    if kind == _NUMBER:
        return None if _is_number(value) else "is a standard EXR attribute and must be a number"
    if kind == _NON_NEGATIVE:
        fits = _is_number(value) and not value < 0
        return None if fits else "is a standard EXR attribute and must be a number of 0 or more"
    if isinstance(kind, list):
        rules, count = kind, len(kind)
        wanted = f"{count} whole numbers, each in its range ({', '.join(f'{lo}-{hi - 1}' for lo, hi in kind)})"
    else:
        item, count = kind
        rules = [item] * (count if count is not None else len(value) if isinstance(value, (list, tuple)) else 0)
        noun = {_TEXT: "texts", _NUMBER: "numbers"}.get(item) or f"whole numbers from {item[0]} to {item[1] - 1}"
        wanted = f"{count} {noun}" if count is not None else noun
    fits = isinstance(value, (list, tuple)) and 0 < len(value) == len(rules) <= MAX_LIST_ITEMS and all(
        isinstance(v, str) and _text_problem(v) is None if rule == _TEXT else _is_number(v) if rule == _NUMBER
        else isinstance(v, int) and not isinstance(v, bool) and rule[0] <= v < rule[1]
        for v, rule in zip(value, rules))
    return None if fits else f"is a standard EXR attribute and must be a list of {wanted}"


def _size(value: Any) -> int:
    """Bytes a name or value takes in a header, near enough: UTF-8 text, 4 bytes a number."""
    if isinstance(value, str):
        return len(value.encode("utf-8", "replace"))
    if isinstance(value, (list, tuple)):
        return sum(_size(v) for v in value)
    return 4


def _shown(value: Any) -> str:
    """A value for an error message, cut short: a request can make it as long as it likes."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
