"""What a server accepts, advertised in `hello`, checked by the server on every message and by
the client before it sends, so an oversized request is refused with a sentence naming the limit
rather than by ZeroMQ dropping the connection.

ZeroMQ's own ZMQ_MAXMSGSIZE is set to `max_buffer_bytes` on the server: a single frame larger
than that never reaches our code (the transport closes the connection), which is why the client
checks first.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Sequence

from .errors import ProtocolError

#: Frames before the pixel buffers: delimiter, header, parent header, content.
ENVELOPE_FRAMES = 4


@dataclass(frozen=True)
class Limits:
    max_frames_per_job: int = field(default=10_000, metadata={"help": "frames in one job's range"})
    max_resolution: int = field(default=16_384, metadata={
        "help": "pixels a side of any frame, inline or read from a file"})
    max_buffer_bytes: int = field(default=2**31 - 1, metadata={
        "help": "bytes of one inline pixel buffer (one frame); a larger frame closes the connection"})
    max_buffers_per_message: int = field(default=4096, metadata={"help": "inline pixel buffers in one message"})
    max_message_bytes: int = field(default=2**34, metadata={"help": "bytes of one whole message, pixels included"})
    max_map_bytes: int = field(default=16 * 2**20, metadata={
        "help": "bytes of a message's header or content map (everything but the pixels)"})
    max_map_entries: int = field(default=1024, metadata={
        "help": "entries in any one map or array of a message's header or content (a message with more "
                "pixel buffers may have one per buffer)"})
    max_map_items: int = field(default=4096, metadata={
        "help": "values held by all maps and arrays of a message's header and content together, a map "
                "entry counting one"})
    max_map_items_per_buffer: int = field(default=128, metadata={
        "help": "values a message may hold beyond max_map_items for each pixel buffer it carries (the "
                "description of its image)"})
    max_map_depth: int = field(default=32, metadata={
        "help": "maps and arrays nested inside each other in a message's header or content"})
    max_staged_bytes_per_job: int = field(default=8 * 2**30, metadata={
        "help": "bytes of distinct inline pixels one job may store on the server's disk"})
    max_watchers_per_job: int = field(default=16, metadata={
        "help": "requests watching one job at once (its submit and later attaches)"})

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

    def check_buffer_count(self, buffers: int) -> None:
        """Refuse a message of more than `max_buffers_per_message` pixel buffers; the server counts
        a long message's frames without keeping them, and checks the count here."""
        if buffers > self.max_buffers_per_message:
            raise ProtocolError(f"the message has {buffers} pixel buffers, over the server's limit "
                                f"max_buffers_per_message = {self.max_buffers_per_message}; send fewer frames inline "
                                "per job, or send paths")

    def map_items(self, buffers: int) -> int:
        """Values the maps and arrays of a message with `buffers` pixel buffers may hold together."""
        return self.max_map_items + self.max_map_items_per_buffer * buffers

    def check_message(self, sizes: Sequence[int]) -> None:
        """Refuse a message from the byte sizes of its frames (envelope first, then pixel buffers)."""
        self.check_buffer_count(max(len(sizes) - ENVELOPE_FRAMES, 0))
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
