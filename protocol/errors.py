"""Errors a host can catch, each with a stable code it can branch on."""

from __future__ import annotations

#: Stable error codes carried by `error` replies (PROTOCOL.md, "Errors").
ERROR_CODES = (
    "bad_request",
    "unknown_op",
    "model_not_found",
    "out_of_memory",
    "no_space",
    "cancelled",
    "not_found",
    "internal",
)


class CvgenError(Exception):
    """Base of every error cvgen raises on purpose; its message is meant for an artist."""

    code = "internal"


class ProtocolError(CvgenError, ValueError):
    """A message, frame or job description does not follow the protocol."""

    code = "bad_request"


class ServerError(CvgenError):
    """The server answered a request with an `error` reply."""

    def __init__(self, code: str, message: str, job_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.job_id = job_id

    def __str__(self) -> str:
        return f"{self.code}: {self.args[0]}"


class JobCancelled(ServerError):
    """The job stopped because someone cancelled it."""


class ServerUnavailable(CvgenError, TimeoutError):
    """No answer from the server within the timeout: it is not running, not reachable, or stuck."""

    code = "unavailable"


class KeyFileError(CvgenError):
    """A CurveZMQ key file is missing, unreadable, or the wrong half of a key pair."""

    code = "bad_keys"


class AuthenticationFailed(ServerUnavailable):
    """The server would not complete the encrypted handshake: unknown client key, wrong server key, or keys on one side only."""

    code = "unauthorized"
