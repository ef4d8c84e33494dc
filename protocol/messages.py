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

PROTOCOL_VERSION = "1.1"
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


def _unpack(frame: Any, what: str) -> dict[str, Any]:
    raw = frame.bytes if hasattr(frame, "bytes") else bytes(frame)
    try:
        value = msgpack.unpackb(raw, raw=False)
    except Exception as exc:  # msgpack raises several unrelated types for garbage
        raise ProtocolError(f"{what} is not valid msgpack: {exc}") from None
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} must be a map, got {type(value).__name__}")
    return value


def decode(frames: Sequence[Any]) -> Message:
    """Parse frames (bytes or zmq.Frame) after any routing identities have been removed."""
    if len(frames) < 4:
        raise ProtocolError(f"a message has at least 4 frames, got {len(frames)}")
    first = frames[0].bytes if hasattr(frames[0], "bytes") else bytes(frames[0])
    if first != DELIMITER:
        raise ProtocolError("not a cvgen message (missing the <CVGEN|MSG> delimiter)")
    header = _unpack(frames[1], "header")
    parent = _unpack(frames[2], "parent header")
    content = _unpack(frames[3], "content")
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
