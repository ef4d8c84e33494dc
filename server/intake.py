"""Admitting a submitted job: the slow half of `submit`, on a thread of its own.

The transport thread checks what it can from the message alone (the spec, limits, path rules,
inline image descriptions) and hands the rest here: looking for every input frame on disk,
refusing to take over frames another job wrote, and storing inline pixels. Only when the job is
on disk, inputs included, does the host hear `accepted`, so a job that was accepted survives a
crash, and a submit that fails (a full disk, say) leaves nothing behind and can be sent again
with the same job id.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from cvgen.protocol.errors import CvgenError
from cvgen.protocol.images import Image
from cvgen.protocol.jobs import JobSpec
from cvgen.protocol.messages import Message, encode

from .io.exr import NO_ROOM, write_exr
from .jobs.runner import own_frames
from .jobs.shot import FileShot
from .jobs.store import JobRecord, JobStore
from .ops import get_op

log = logging.getLogger("cvgen.server")


@dataclass(eq=False)
class Submission:
    """A submit the transport thread has checked, waiting for its files to be checked or stored."""

    identity: bytes
    request: Message
    spec: JobSpec
    inline: dict[str, dict[int, Image]]
    deliver_inline: bool
    owner: str = ""


@dataclass
class Admission:
    """How a submission ended: a stored job ready to queue, or the error to answer with."""

    submission: Submission
    record: JobRecord | None = None
    code: str = ""
    message: str = ""
    done: int = 0


@dataclass
class Intake:
    """Admits submissions one after another; each result is posted to `results` under a token
    and announced on the server's events socket, which the transport thread reads."""

    store: JobStore
    context: zmq.Context
    events_endpoint: str
    pending: "queue.Queue[tuple[int, Submission] | None]" = field(default_factory=queue.Queue)
    results: dict[int, Admission] = field(default_factory=dict)
    _next: int = 0
    _thread: threading.Thread | None = None

    def submit(self, submission: Submission) -> None:
        self._next += 1
        self.pending.put((self._next, submission))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="cvgen-intake", daemon=True)
        self._thread.start()

    def stop(self, timeout: float) -> None:
        if self._thread is not None:
            self.pending.put(None)
            self._thread.join(timeout)

    def _run(self) -> None:
        push = self.context.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 1000)
        push.connect(self.events_endpoint)
        try:
            while (item := self.pending.get()) is not None:
                self.admit_one(*item, push)
        finally:
            push.close()

    def admit_one(self, token: int, submission: Submission, push: zmq.Socket) -> None:
        """Admit one submission and announce the result (also called directly by the fuzz harness)."""
        self.results[token] = admit(self.store, submission)
        push.send_multipart(encode(Message("admitted", {"token": token})))


def admit(store: JobStore, submission: Submission) -> Admission:
    """Check the submission's files and store the job; every failure becomes an error reply."""
    spec = submission.spec
    try:
        if spec.inputs and not submission.inline:
            FileShot(spec.inputs, spec.frame_numbers, image_roles=get_op(spec.op).image_roles).check_complete()
        # A new job's own folder holds no frames yet; a folder it names may (a resubmitted id).
        done = len(own_frames(spec, Path(spec.output))) if spec.output else 0
        image_roles = get_op(spec.op).image_roles
        record = store.create(spec, prepare=lambda folder, final: stage_inline_inputs(
            spec, submission.inline, folder / "inputs", final / "inputs", image_roles), owner=submission.owner)
        return Admission(submission, record, done=done)
    except CvgenError as exc:
        return Admission(submission, code=exc.code, message=str(exc))
    except OSError as exc:
        if exc.errno in NO_ROOM:
            return Admission(submission, code="no_space", message=(
                f"the server has no room to store the job ({exc.strerror or exc}); nothing was kept: make room, "
                "then send the job again, frames included, with the same job id"))
        log.exception("could not admit a job")
        return Admission(submission, code="internal", message=f"could not store the job: {exc}")
    except Exception as exc:
        log.exception("could not admit a job")
        return Admission(submission, code="internal", message=f"unexpected {type(exc).__name__}: {exc}")


def stage_inline_inputs(spec: JobSpec, inline: dict[str, dict[int, Image]], folder: Path, final: Path,
                        image_roles: tuple[str, ...] = ()) -> None:
    """Store pixels that arrived in the request as EXRs in `folder`, flushed to disk, and point
    the job's inputs at them (in `final`, where the folder will be).

    The job then reads its inputs from files like any other, and resumes after a crash without
    the host sending the frames again. Frames that share one buffer of the message (a held
    frame, the same matte on every frame) are written once and hard-linked, so a small message
    cannot make the server write far more than it received. An image role's one frame becomes
    one file, `ROLE.exr`, which the job reads for every frame.
    """
    if not inline:
        return
    folder.mkdir()
    written: dict[tuple[Any, ...], Path] = {}
    for role, frames in inline.items():
        template = f"{role}.exr" if role in image_roles else f"{role}.####.exr"
        for frame, image in frames.items():
            path = folder / (template if role in image_roles else f"{role}.{frame:04d}.exr")
            key = _buffer_key(image)
            if key in written:
                os.link(written[key], path)
                continue
            write_exr(path, image)
            _flush(path)
            written[key] = path
        spec.inputs[role] = str(final / template)
    _flush(folder)


def _buffer_key(image: Image) -> tuple[Any, ...]:
    """Frames with equal keys would be written as identical files: the same pixel memory, the same header."""
    interface = image.pixels.__array_interface__
    header = json.dumps(image.describe(), sort_keys=True, default=str)
    return interface["data"][0], interface["shape"], interface["strides"], interface["typestr"], header


def _flush(path: Path) -> None:
    """Make a staged file (or a folder's entries) durable before the host hears `accepted`."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno != errno.EINVAL:  # some file systems cannot fsync a folder
            raise
    finally:
        os.close(fd)
