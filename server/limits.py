"""Sizes the server accepts, advertised in `hello` so hosts can check before sending."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Limits:
    max_frames_per_job: int = 10_000
    max_resolution: int = 16_384
    max_buffer_bytes: int = 2**31 - 1
    max_message_bytes: int = 2**34

    def to_dict(self) -> dict[str, int]:
        return asdict(self)
