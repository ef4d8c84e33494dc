"""Wire format v1: one message = delimiter, header, parent header, content, then raw pixel buffers.

Header, parent header and content are msgpack maps; pixel buffers are sent as their own ZeroMQ
frames, untouched, and described (dtype, shape) in the header so the receiver can wrap them in
numpy arrays without a copy. No pickle anywhere. See PROTOCOL.md for the message catalogue.
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Sequence

import msgpack
import numpy as np

from .errors import ProtocolError
from .images import PIXEL_DTYPES, Image
from .limits import Limits

PROTOCOL_VERSION = "1.3"
DELIMITER = b"<CVGEN|MSG>"

REQUEST_TYPES = frozenset({"hello", "submit", "cancel", "status", "jobs"})
#: Replies after which nothing more will come for that request.
FINAL_TYPES = frozenset({"hello_reply", "cancel_reply", "status_reply", "jobs_reply", "done", "error"})
REPLY_TYPES = FINAL_TYPES | {"accepted", "progress", "frame"}


def new_id() -> str:
    return uuid.uuid4().hex


@dataclass
class Message:
    """A decoded message. `buffers` hold pixel arrays referenced by index from the content."""

    msg_type: str
    content: dict[str, Any] = field(default_factory=dict)
    job_id: str | None = None
    parent: dict[str, Any] = field(default_factory=dict)
    buffers: list[np.ndarray] = field(default_factory=list)
    header: dict[str, Any] = field(default_factory=dict)

    @property
    def msg_id(self) -> str:
        return str(self.header.get("msg_id", ""))

    @property
    def parent_id(self) -> str:
        return str(self.parent.get("msg_id", ""))

    @property
    def final(self) -> bool:
        return self.msg_type in FINAL_TYPES


def make_header(msg_type: str, job_id: str | None = None, session: str = "") -> dict[str, Any]:
    return {
        "version": PROTOCOL_VERSION,
        "msg_id": new_id(),
        "msg_type": msg_type,
        "job_id": job_id,
        "session": session,
        "time": time.time(),
    }


def encode(msg: Message) -> list[Any]:
    """Frames for `socket.send_multipart(frames, copy=False)`; pixel buffers are not copied."""
    header = dict(msg.header) if msg.header else make_header(msg.msg_type, msg.job_id)
    header["msg_type"] = msg.msg_type
    header["job_id"] = msg.job_id
    views = []
    descs = []
    for array in msg.buffers:
        array = np.ascontiguousarray(array)
        if str(array.dtype) not in PIXEL_DTYPES:
            raise ProtocolError(f"pixel buffers must be one of {', '.join(PIXEL_DTYPES)}, not {array.dtype}")
        descs.append({"dtype": str(array.dtype), "shape": list(array.shape)})
        views.append(memoryview(array).cast("B") if array.size else b"")
    header["buffers"] = descs
    msg.header = header
    return [
        DELIMITER,
        msgpack.packb(header),
        msgpack.packb(msg.parent or {}),
        msgpack.packb(msg.content, default=_pack_default),
        *views,
    ]


def _pack_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (tuple, set)):
        return list(obj)
    raise TypeError(f"cannot send {type(obj).__name__} in a message")


class _Bounds:
    """Decoding within a message's limits, at a cost bounded by them rather than by its bytes.

    msgpack refuses a map or array longer than `max_map_entries` from its length alone; the hooks
    count the values of each map and array as msgpack completes it, so a message of millions of
    tiny containers is refused after `Limits.map_items` of them, not built whole (a 16 MiB map of
    empty arrays once took 1.3 GiB and seconds). msgpack itself nests up to 1024 levels, deeper
    than Python's recursion limit; nesting is measured level by level once a map is decoded.
    Extension types are no part of the protocol and are refused (msgpack decodes a timestamp
    itself: it arrives as float seconds, as our own `time` fields are sent).
    """

    def __init__(self, limits: Limits, buffers: int) -> None:
        self.limits = limits
        self.buffers = buffers
        self.items = limits.map_items(buffers)
        self.left = self.items
        self.entries = max(limits.max_map_entries, buffers)

    def count(self, container: Any) -> Any:
        self.left -= len(container)
        if self.left < 0:
            per_buffer = (f" + max_map_items_per_buffer = {self.limits.max_map_items_per_buffer} for each of its "
                          f"{self.buffers} pixel buffers" if self.buffers else "")
            raise ProtocolError(f"the message's maps and arrays hold more than {self.items} values, over the "
                                f"server's limit max_map_items = {self.limits.max_map_items}{per_buffer}")
        return container

    @staticmethod
    def refuse_extension(code: int, data: bytes) -> Any:
        raise ProtocolError(f"msgpack extension type {code} is not part of the cvgen protocol")

    def unpack(self, raw: bytes, what: str) -> Any:
        try:
            value = msgpack.unpackb(raw, raw=False, list_hook=self.count, object_hook=self.count,
                                    ext_hook=self.refuse_extension, timestamp=1, max_array_len=self.entries,
                                    max_map_len=self.entries, max_str_len=len(raw), max_bin_len=len(raw))
        except msgpack.StackError:
            raise self.too_deep(what) from None
        except ValueError as exc:
            if "exceeds max_array_len" not in str(exc) and "exceeds max_map_len" not in str(exc):
                raise
            raise ProtocolError(f"the message's {what} has a map or array of {str(exc).split()[0]} entries, over the "
                                f"server's limit max_map_entries = {self.limits.max_map_entries}, or one per pixel "
                                "buffer where a message has more") from None
        self.check_depth(value, what)
        return value

    def check_depth(self, value: Any, what: str) -> None:
        level = [value] if type(value) in _CONTAINERS else []
        for _ in range(self.limits.max_map_depth):
            if not level:
                return
            level = [v for c in level for v in (c.values() if type(c) is dict else c) if type(v) in _CONTAINERS]
        if level:
            raise self.too_deep(what)

    def too_deep(self, what: str) -> ProtocolError:
        return ProtocolError(f"the message's {what} nests maps and arrays more than {self.limits.max_map_depth} "
                             f"deep, over the server's limit max_map_depth = {self.limits.max_map_depth}")


_CONTAINERS = (list, dict)


def _unpack(frame: Any, what: str, bounds: _Bounds | None) -> dict[str, Any]:
    raw = frame.buffer if hasattr(frame, "buffer") else memoryview(frame)
    try:
        value = msgpack.unpackb(raw, raw=False) if bounds is None else bounds.unpack(raw, what)
    except ProtocolError:
        raise
    except Exception as exc:  # msgpack raises several unrelated types for garbage
        raise ProtocolError(f"{what} is not valid msgpack: {exc}") from None
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} must be a map, got {type(value).__name__}")
    return value


def decode(frames: Sequence[Any], limits: Limits | None = None) -> Message:
    """Parse frames (bytes or zmq.Frame) after any routing identities have been removed.

    With `limits` (a server reading requests, a client checking its own before sending) the maps
    are decoded within them, see `_Bounds`; without, as they come (a message from our own side).
    """
    if len(frames) < 4:
        raise ProtocolError(f"a message has at least 4 frames, got {len(frames)}")
    first = frames[0].bytes if hasattr(frames[0], "bytes") else bytes(frames[0])
    if first != DELIMITER:
        raise ProtocolError("not a cvgen message (missing the <CVGEN|MSG> delimiter)")
    bounds = _Bounds(limits, len(frames) - 4) if limits is not None else None
    header = _unpack(frames[1], "header", bounds)
    parent = _unpack(frames[2], "parent header", bounds)
    content = _unpack(frames[3], "content", bounds)
    version = str(header.get("version", ""))
    if version.split(".")[0] != PROTOCOL_VERSION.split(".")[0]:
        raise ProtocolError(f"protocol version {version or '(none)'} is not supported; this side speaks {PROTOCOL_VERSION}")
    msg_type = header.get("msg_type")
    if not isinstance(msg_type, str):
        raise ProtocolError("header has no msg_type")
    job_id = header.get("job_id")
    if job_id is not None and not isinstance(job_id, str):
        raise ProtocolError("header job_id must be a string")
    descs = header.get("buffers") or []
    raw_buffers = frames[4:]
    if not isinstance(descs, list) or len(descs) != len(raw_buffers):
        raise ProtocolError(f"header describes {len(descs) if isinstance(descs, list) else '?'} buffers but {len(raw_buffers)} arrived")
    buffers = [_wrap_buffer(frame, desc, i) for i, (frame, desc) in enumerate(zip(raw_buffers, descs))]
    return Message(msg_type, content, job_id, parent, buffers, header)


def refused_request_header(frames: Sequence[Any], limits: Limits) -> dict[str, Any]:
    """What can be read of the header of a request that `decode` refused (over a limit, a bad
    content map): its `msg_id`, `msg_type` and `session`, so the `error` reply names the request
    and the client waiting for it hears why; {} when the header itself is unreadable."""
    try:
        header = _unpack(frames[1], "header", _Bounds(limits, 0))
    except (ProtocolError, IndexError):
        return {}
    return {k: header[k] for k in ("msg_id", "msg_type", "session") if isinstance(header.get(k), str)
            and len(header[k]) <= 256}


def _wrap_buffer(frame: Any, desc: Any, index: int) -> np.ndarray:
    try:
        dtype = str(desc["dtype"])
        shape = tuple(int(s) for s in desc["shape"])
    except (KeyError, TypeError, ValueError, OverflowError):
        raise ProtocolError(f"buffer {index} has a bad description {desc!r}") from None
    if dtype not in PIXEL_DTYPES:
        raise ProtocolError(f"buffer {index} has pixel type {dtype!r}; allowed: {', '.join(PIXEL_DTYPES)}")
    if any(s < 0 for s in shape):
        raise ProtocolError(f"buffer {index} has a negative dimension in shape {list(shape)}")
    data = frame.buffer if hasattr(frame, "buffer") else memoryview(frame)
    expected = math.prod(shape) * np.dtype(dtype).itemsize
    if data.nbytes != expected:
        raise ProtocolError(f"buffer {index} holds {data.nbytes} bytes but its shape {list(shape)} {dtype} needs {expected}")
    try:
        array = np.frombuffer(data, dtype=dtype).reshape(shape)
    except ValueError as exc:
        raise ProtocolError(f"buffer {index} cannot take the shape {list(shape)}: {exc}") from None
    return array if array.flags.aligned else array.copy()


def image_to_wire(image: Image, buffers: list[np.ndarray]) -> dict[str, Any]:
    """Describe `image` for a content map and queue its pixels as the next buffer."""
    buffers.append(image.pixels)
    return {**image.describe(), "buffer": len(buffers) - 1}


def image_from_wire(desc: Any, buffers: Sequence[np.ndarray]) -> Image:
    if not isinstance(desc, dict):
        raise ProtocolError(f"an image must be described by a map, got {type(desc).__name__}")
    index = desc.get("buffer")
    if not isinstance(index, int) or not 0 <= index < len(buffers):
        raise ProtocolError(f"image refers to buffer {index!r} but the message has {len(buffers)}")
    return Image.from_description(buffers[index], desc)


def reply(request: Message, msg_type: str, content: dict[str, Any] | None = None,
          buffers: list[np.ndarray] | None = None, job_id: str | None = None) -> Message:
    """A reply that carries the request's header as its parent, as Jupyter does."""
    return Message(msg_type, content or {}, job_id if job_id is not None else request.job_id,
                   request.header, buffers or [])


def error_reply(request: Message, code: str, message: str, job_id: str | None = None) -> Message:
    return reply(request, "error", {"code": code, "message": message}, job_id=job_id)
