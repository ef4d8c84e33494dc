"""Server-side errors; each maps to a stable protocol error code."""

from __future__ import annotations

from cvgen.protocol.errors import CvgenError


class InputError(CvgenError):
    """An input frame is missing, unreadable, or lacks the channels the op needs."""

    code = "bad_request"


class UnknownOp(CvgenError):
    code = "unknown_op"


class Cancelled(CvgenError):
    """Raised inside an op at the next step after its job was cancelled."""

    code = "cancelled"


class NotFound(CvgenError):
    code = "not_found"


class ModelNotFound(CvgenError):
    """A model name is not configured, or its files are missing or not a model."""

    code = "model_not_found"
