"""cvgen's wire protocol and host client: needs only pyzmq, msgpack and numpy."""

from .errors import CvgenError, JobCancelled, ProtocolError, ServerError, ServerUnavailable
from .images import Image
from .jobs import DEFAULT_COLORSPACE, JobSpec, frame_path
from .messages import PROTOCOL_VERSION, Message

__all__ = [
    "PROTOCOL_VERSION",
    "DEFAULT_COLORSPACE",
    "CvgenError",
    "Image",
    "JobCancelled",
    "JobSpec",
    "Message",
    "ProtocolError",
    "ServerError",
    "ServerUnavailable",
    "frame_path",
]
