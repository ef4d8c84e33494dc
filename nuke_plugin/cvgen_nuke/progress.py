"""Progress bookkeeping: the server's events folded into what the compositor sees.

`JobProgress` turns the stream of a job (accepted, progress, frame, done, or how it ended)
into a percentage and a sentence for Nuke's progress window and one line for the node's status
knob. It is plain state, updated on the main thread, so the adapter only copies it to Nuke.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

from cvgen.protocol.client import Accepted, Done, FrameReady, Progress

#: How a render ended.
DONE, CANCELLED, FAILED = "done", "cancelled", "failed"


@dataclass(frozen=True)
class Outcome:
    """The end of a render session: `state` is done, cancelled or failed; `message` says why."""

    state: str
    message: str = ""


@dataclass(frozen=True)
class Notice:
    """Something the compositor should read that does not end the render (a cancel that failed)."""

    message: str


Update = Union[Accepted, Progress, FrameReady, Done, Outcome, Notice]


@dataclass
class JobProgress:
    """Where a render stands; `apply` every update in order."""

    frames: tuple[int, int]
    job_id: str = ""
    fraction: float = 0.0
    frame: int | None = None
    step: int = 0
    steps: int = 0
    eta_s: float | None = None
    finished: set[int] = field(default_factory=set)
    notice: str = ""
    outcome: Outcome | None = None

    @property
    def total(self) -> int:
        return self.frames[1] - self.frames[0] + 1

    @property
    def percent(self) -> int:
        return 100 if self.outcome and self.outcome.state == DONE else min(int(self.fraction * 100), 99)

    def apply(self, update: Update) -> None:
        if isinstance(update, Accepted):
            self.job_id = update.job_id
        elif isinstance(update, Progress):
            self.fraction = max(self.fraction, update.fraction)
            self.frame, self.step, self.steps, self.eta_s = update.frame, update.step, update.steps, update.eta_s
        elif isinstance(update, FrameReady):
            self.finished.add(update.frame)
        elif isinstance(update, Done):
            self.finished.update(update.frames)
            self.fraction = 1.0
        elif isinstance(update, Notice):
            self.notice = update.message
        elif isinstance(update, Outcome):
            self.outcome = update

    @property
    def message(self) -> str:
        """One line for the progress window: where the job is and how long is left."""
        if not self.job_id:
            return "sending the job"
        parts = [f"{len(self.finished)} of {self.total} frames done"]
        if self.frame is not None and self.steps:
            parts.insert(0, f"frame {self.frame}, step {self.step}/{self.steps}")
        if self.eta_s is not None:
            parts.append(f"about {_duration(self.eta_s)} left")
        if self.notice:
            parts.append(self.notice)
        return "; ".join(parts)

    def status(self, where: str) -> str:
        """The node's status line; `where` is the folder the results are in."""
        if self.outcome is None:
            return f"rendering: {self.message}"
        if self.outcome.state == DONE:
            return f"done: {self.total} frames in {where}"
        kept = f"{len(self.finished)} of {self.total} frames finished, in {where}"
        if self.outcome.state == CANCELLED:
            return f"cancelled: {kept}"
        return f"failed: {self.outcome.message} ({kept})"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(seconds, 1):.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
