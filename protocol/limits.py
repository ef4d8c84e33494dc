"""What a server accepts, advertised in `hello`, checked by the server on every message and by
the client before it sends, so an oversized request is refused with a sentence naming the limit
rather than by ZeroMQ dropping the connection.

ZeroMQ's own ZMQ_MAXMSGSIZE is set to `max_buffer_bytes` on the server: a single frame larger
than that never reaches our code (the transport closes the connection), which is why the client
checks first.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Sequence

from .errors import ProtocolError

#: Frames before the pixel buffers: delimiter, header, parent header, content.
ENVELOPE_FRAMES = 4


@dataclass(frozen=True)
class Limits:
    max_frames_per_job: int = 10_000
    max_resolution: int = 16_384
    max_buffer_bytes: int = 2**31 - 1
    max_buffers_per_message: int = 4096
    max_message_bytes: int = 2**34
    max_map_bytes: int = 16 * 2**20

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ProtocolError(f"limit {f.name} must be a whole number of 1 or more, not {value!r}")

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> "Limits":
        """From a `hello` reply; limits this side does not know are ignored, missing ones default."""
        if not isinstance(data, dict):
            return cls()
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})

    def check_resolution(self, what: str, width: int, height: int) -> None:
        """Refuse a frame (`what`, e.g. "plate frame 1001") larger than `max_resolution` a side."""
        if max(width, height) > self.max_resolution:
            raise ProtocolError(f"{what} is {width}x{height}, over the server's limit max_resolution = "
                                f"{self.max_resolution} pixels a side")

    def check_message(self, sizes: Sequence[int]) -> None:
        """Refuse a message from the byte sizes of its frames (envelope first, then pixel buffers)."""
        buffers = max(len(sizes) - ENVELOPE_FRAMES, 0)
        if buffers > self.max_buffers_per_message:
            raise ProtocolError(f"the message has {buffers} pixel buffers, over the server's limit "
                                f"max_buffers_per_message = {self.max_buffers_per_message}; send fewer frames inline "
                                "per job, or send paths")
        for index, size in enumerate(sizes[1:ENVELOPE_FRAMES], start=1):
            if size > self.max_map_bytes:
                what = ("header", "parent header", "content")[index - 1]
                raise ProtocolError(f"the message's {what} is {size} bytes, over the server's limit "
                                    f"max_map_bytes = {self.max_map_bytes}")
        for index, size in enumerate(sizes[ENVELOPE_FRAMES:]):
            if size > self.max_buffer_bytes:
                raise ProtocolError(f"pixel buffer {index} is {size} bytes, over the server's limit "
                                    f"max_buffer_bytes = {self.max_buffer_bytes}; send smaller frames, or paths")
        total = sum(sizes)
        if total > self.max_message_bytes:
            raise ProtocolError(f"the message is {total} bytes, over the server's limit max_message_bytes = "
                                f"{self.max_message_bytes}; split the job into shorter frame ranges")
