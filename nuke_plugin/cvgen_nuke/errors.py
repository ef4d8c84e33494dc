"""Errors the node reports to the compositor: a message that says what to change.

They derive from `cvgen.protocol.CvgenError`, so the adapter shows every error cvgen raises on
purpose the same way (a message box in the GUI, an exception under `nuke -t`) and only a bug
shows up as a traceback.
"""

from __future__ import annotations

from cvgen.protocol import CvgenError


class SetupError(CvgenError):
    """The node cannot render as it is set up (an input missing, a value out of range, ...)."""

    code = "setup"


class RenderFailed(CvgenError):
    """The render ended without all its frames: the server refused or failed the job."""

    code = "failed"


class RenderCancelled(RenderFailed):
    """The render was cancelled; frames finished before that are kept."""

    code = "cancelled"
