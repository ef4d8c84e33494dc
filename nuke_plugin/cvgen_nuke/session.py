"""The render session: a job sent and followed in a worker thread, drained on the main thread.

Nuke allows its API on the main thread only, and a ZeroMQ socket belongs to the thread that
made it. So a worker owns the client and does all network and file work, never touching Nuke,
and hands updates to the main thread through a queue. `drive` is the main thread's side: it
waits on that queue in short slices, so Nuke's progress window stays live and a cancel asked
for there reaches the server within a slice.

A cancel goes out on a short-lived client of its own thread, because the worker is blocked
reading the job's stream and its socket must not be shared between threads. Every client uses
the submission's CurveZMQ key files, if any.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import queue
import threading
from typing import Any, Callable, Protocol, TypeVar

from cvgen.protocol import CvgenError, JobCancelled, ProtocolError, ServerError, frame_path
from cvgen.protocol.client import Accepted, Client, Done, Event, FrameReady

from . import exr, transfer
from .errors import RenderCancelled
from .jobbuild import NO_KEYS, KeyFiles, Submission
from .progress import CANCELLED, DONE, FAILED, JobProgress, Notice, Outcome, Update

log = logging.getLogger("cvgen.nuke")

T = TypeVar("T")

#: Seconds of silence after which the client checks that the server is still there.
TIMEOUT_S = 10.0
#: Seconds the main thread waits for updates before it looks at the progress window again.
POLL_S = 0.1


class ProgressView(Protocol):
    """What `drive` needs from the host: the progress window, and the Read node to reload."""

    def cancel_requested(self) -> bool: ...

    def show(self, progress: JobProgress) -> None: ...

    def frame_ready(self, frame: int, path: str) -> None: ...


def in_worker(fn: Callable[..., T], *args: Any) -> concurrent.futures.Future[T]:
    """Run `fn(*args)` in a daemon thread; the future holds its result or its exception."""
    future: concurrent.futures.Future[T] = concurrent.futures.Future()

    def run() -> None:
        future.set_running_or_notify_cancel()
        try:
            future.set_result(fn(*args))
        except Exception as exc:  # handed to the main thread, which reports it
            future.set_exception(exc)

    threading.Thread(target=run, name="cvgen-worker", daemon=True).start()
    return future


def wait(future: concurrent.futures.Future[T], cancelled: Callable[[], bool], poll_s: float = POLL_S) -> T:
    """The future's result, waited for in slices so the caller can offer a Cancel meanwhile."""
    while not future.done():
        if cancelled():
            raise RenderCancelled("stopped waiting for the cvgen server")
        concurrent.futures.wait([future], poll_s)
    return future.result()


def connect(address: str, timeout: float, keys: KeyFiles = NO_KEYS) -> Client:
    """A client for `address`, encrypted when `keys` names key files; a missing or wrong key file
    raises `KeyFileError`, a server that refuses the keys `AuthenticationFailed` (both `CvgenError`)."""
    return Client(address, timeout, server_key=keys.server_key or None, client_key=keys.client_key or None)


def hello(address: str, timeout: float = TIMEOUT_S, keys: KeyFiles = NO_KEYS) -> dict[str, Any]:
    """The server's `hello`: its ops, colour spaces, limits and jobs folder."""
    with connect(address, timeout, keys) as client:
        return client.hello()


def cancel_job(address: str, job_id: str, timeout: float = TIMEOUT_S, keys: KeyFiles = NO_KEYS) -> dict[str, Any]:
    """Cancel a job by id; the reply's `state` is cancelled, cancelling, or how it had ended."""
    with connect(address, timeout, keys) as client:
        return client.cancel(job_id)


def failure_message(exc: CvgenError) -> str:
    """A sentence for the compositor about why the server did not render the job."""
    if isinstance(exc, ServerError):
        verb = "refused" if exc.code in ("bad_request", "unknown_op") else "could not render"
        return f"the cvgen server {verb} the job: {exc.args[0]}"
    return str(exc)


class RenderSession:
    """One submission, sent and followed by a worker thread; see the module's docstring."""

    def __init__(self, submission: Submission, timeout: float = TIMEOUT_S) -> None:
        self.submission = submission
        self.timeout = timeout
        self._updates: queue.Queue[Update] = queue.Queue()
        self._lock = threading.Lock()
        self._job_id = ""
        self._cancel_wanted = False
        self._cancel_sent = False

    def start(self) -> None:
        threading.Thread(target=self._run, name="cvgen-render", daemon=True).start()

    def cancel(self) -> None:
        """Cancel the job on the server: now, or as soon as the server has accepted it."""
        with self._lock:
            self._cancel_wanted = True
            job_id = self._claim_cancel()
        if job_id:
            self._send_cancel(job_id)

    def updates(self, timeout: float) -> list[Update]:
        """The updates that have arrived, waiting up to `timeout` seconds for the first one."""
        try:
            arrived = [self._updates.get(timeout=timeout)]
        except queue.Empty:
            return []
        while True:
            try:
                arrived.append(self._updates.get_nowait())
            except queue.Empty:
                return arrived

    # -- the worker --------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._stream()
            outcome = Outcome(DONE)
        except JobCancelled:
            outcome = Outcome(CANCELLED, "the job was cancelled")
        except CvgenError as exc:
            outcome = Outcome(FAILED, failure_message(exc))
        except OSError as exc:
            outcome = Outcome(FAILED, f"cannot write a result frame: {exc}")
        except Exception as exc:  # the thread's boundary: a bug must end the render, not leave Nuke waiting
            log.exception("the cvgen render session failed")
            outcome = Outcome(FAILED, f"internal error in the cvgen plugin: {type(exc).__name__}: {exc}")
        self._updates.put(outcome)

    def _stream(self) -> None:
        sub = self.submission
        inline = transfer.load_inline(sub.inline_inputs, sub.job.frame_numbers, sub.image_frames)
        with connect(sub.address, self.timeout, sub.keys) as client:
            # First `hello` on this very client: it learns the server's limits and checks the job
            # against them before sending, and a refused handshake is reported as such.
            client.hello()
            stream = client.submit(sub.job, inline or None, deliver="inline" if sub.deliver_to else "path")
            for event in stream:
                if isinstance(event, Accepted):
                    with self._lock:
                        self._job_id = event.job_id
                        job_id = self._claim_cancel()
                    if job_id:
                        self._send_cancel(job_id)
                self._updates.put(self._delivered(event))

    def _delivered(self, event: Event) -> Event:
        """The event with paths on this machine: results sent as pixels are written locally first."""
        target = self.submission.deliver_to
        if target is None:
            return event
        if isinstance(event, FrameReady):
            if event.image is None:
                raise ProtocolError(f"the server sent frame {event.frame} without its pixels")
            path = frame_path(target, event.frame)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            exr.write(path, event.image)
            return FrameReady(event.job_id, event.frame, path)
        if isinstance(event, Done):
            return Done(event.job_id, {f: frame_path(target, f) for f in event.frames}, os.path.dirname(target))
        return event

    def _claim_cancel(self) -> str:
        """The job id to cancel, once: when a cancel is wanted and the job id is known (lock held)."""
        if self._cancel_wanted and self._job_id and not self._cancel_sent:
            self._cancel_sent = True
            return self._job_id
        return ""

    def _send_cancel(self, job_id: str) -> None:
        def send() -> None:
            try:
                cancel_job(self.submission.address, job_id, self.timeout, self.submission.keys)
            except CvgenError as exc:
                self._updates.put(Notice(f"the cancel did not reach the server: {exc}"))

        threading.Thread(target=send, name="cvgen-cancel", daemon=True).start()


def drive(session: RenderSession, view: ProgressView, frames: tuple[int, int], poll_s: float = POLL_S) -> JobProgress:
    """Start `session` and follow it on this (the main) thread until it ends; returns its progress."""
    progress = JobProgress(frames)
    session.start()
    cancelling = False
    while progress.outcome is None:
        if not cancelling and view.cancel_requested():
            cancelling = True
            session.cancel()
        for update in session.updates(poll_s):
            progress.apply(update)
            if isinstance(update, FrameReady):
                view.frame_ready(update.frame, update.path)
        view.show(progress)
    return progress
