"""cvgen's wire protocol and host client: needs only pyzmq, msgpack and numpy."""

from .errors import (AuthenticationFailed, CvgenError, JobCancelled, KeyFileError, ProtocolError, ServerError,
                     ServerUnavailable)
from .images import Image
from .jobs import DEFAULT_COLORSPACE, JobSpec, frame_path
from .messages import PROTOCOL_VERSION, Message

__all__ = [
    "PROTOCOL_VERSION",
    "DEFAULT_COLORSPACE",
    "AuthenticationFailed",
    "CvgenError",
    "Image",
    "JobCancelled",
    "JobSpec",
    "KeyFileError",
    "Message",
    "ProtocolError",
    "ServerError",
    "ServerUnavailable",
    "frame_path",
]
