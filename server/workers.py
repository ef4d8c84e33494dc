"""GPU (or CPU) workers: one thread per device, each running one job at a time from a shared FIFO.

Workers never touch the ROUTER socket; they hand every event to the transport thread through
their own inproc PUSH socket, so each ZeroMQ socket is used by exactly one thread.
"""

from __future__ import annotations

import errno
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
from cvgen.protocol.limits import Limits
from cvgen.protocol.messages import Message, encode

from .errors import Cancelled
from .io.exr import NO_ROOM
from .jobs.runner import run_job
from .jobs.store import JobRecord
from .paths import PathPolicy

log = logging.getLogger("cvgen.server")


@dataclass
class ActiveJob:
    """A job the server holds in memory while it is queued or running."""

    record: JobRecord
    cancel: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    started: bool = False
    state: str = "queued"
    progress: dict[str, Any] = field(default_factory=dict)
    #: Frames of the job on disk, counted once and then as they are written, so that listing jobs
    #: never counts files; None until counted.
    done: int | None = None

    @property
    def job_id(self) -> str:
        return self.record.job_id

    def frames_done(self) -> int:
        """`done`, counting the frames on disk the first time it is asked."""
        if self.done is None:
            self.done = len(self.record.done_frames())
        return self.done

    def claim(self) -> bool:
        """Mark the job started, unless it was cancelled while queued; under the lock the cancel
        handler takes, so a job is either cancelled before it starts or runs."""
        with self.lock:
            if self.cancel.is_set():
                return False
            self.started = True
            return True


class Worker(threading.Thread):
    def __init__(self, device: str, jobs: "queue.Queue[ActiveJob | None]", context: zmq.Context,
                 events_endpoint: str, stopping: threading.Event, models: Any = None,
                 paths: PathPolicy | None = None, limits: Limits | None = None) -> None:
        super().__init__(name=f"cvgen-worker-{device}", daemon=True)
        self.device = device
        self.models = models
        self.paths = paths
        self.limits = limits
        self.jobs = jobs
        self.context = context
        self.events_endpoint = events_endpoint
        self.stopping = stopping

    def run(self) -> None:
        push = self.context.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 1000)
        push.connect(self.events_endpoint)
        try:
            while True:
                job = self.jobs.get()
                if job is None:
                    break
                if job.claim():
                    self._run(job, push)
        finally:
            push.close()

    def _emit(self, push: zmq.Socket, job: ActiveJob, msg_type: str, content: dict[str, Any],
              buffers: list | None = None) -> None:
        push.send_multipart(encode(Message(msg_type, content, job.job_id, buffers=buffers or [])), copy=False)

    def _run(self, job: ActiveJob, push: zmq.Socket) -> None:
        record = job.record
        job.state = "running"
        try:
            record.remove_stale_temp_files()
            record.set_state("running", device=self.device)
            job.done = len(record.done_frames())

            def on_progress(p: dict[str, Any]) -> None:
                job.progress = p
                self._emit(push, job, "progress", p)

            def on_frame(frame: int, path: Path, image: Image) -> None:
                job.done = (job.done or 0) + 1
                content = {"frame": frame, "path": str(path), "image": {**image.describe(), "buffer": 0}}
                self._emit(push, job, "frame", content, [image.pixels])

            run_job(record.spec, record.output_dir, on_progress=on_progress, on_frame=on_frame,
                    is_cancelled=lambda: job.cancel.is_set() or self.stopping.is_set(),
                    models=self.models, device=self.device, paths=self.paths.for_job(record) if self.paths else None,
                    limits=self.limits)
        except Cancelled:
            if job.cancel.is_set():
                self._finish(push, job, "cancelled", "cancelled", "the job was cancelled; finished frames are kept")
            else:
                job.state = "queued"
                _record_state(job, "queued")
                self._emit(push, job, "error", {"code": "cancelled",
                           "message": "the server is shutting down; the job resumes when it starts again"})
            return
        except CvgenError as exc:
            self._finish(push, job, "failed", exc.code, str(exc))
            return
        except MemoryError:
            self._finish(push, job, "failed", "out_of_memory", "the job ran out of memory")
            return
        except Exception as exc:
            if type(exc).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError, without importing torch
                self._finish(push, job, "failed", "out_of_memory",
                             f"the device {self.device} ran out of memory; try a smaller frame or fewer frames at once")
                return
            if isinstance(exc, OSError) and exc.errno in NO_ROOM:
                log.error("job %s failed: %s", job.job_id, exc)
                self._finish(push, job, "failed", "no_space", _no_room_message(exc, record))
                return
            log.exception("job %s failed", job.job_id)
            self._finish(push, job, "failed", "internal", f"unexpected {type(exc).__name__}: {exc}")
            return
        job.state = "done"
        frames = [{"frame": f, "path": str(record.frame_file(f))} for f in record.spec.frame_numbers]
        _record_state(job, "done")
        self._emit(push, job, "done", {"frames": frames, "output": str(record.output_dir)})

    def _finish(self, push: zmq.Socket, job: ActiveJob, state: str, code: str, message: str) -> None:
        job.state = state
        _record_state(job, state, code=code, message=message)
        self._emit(push, job, "error", {"code": code, "message": message})


def _record_state(job: ActiveJob, state: str, **extra: Any) -> None:
    """Write the job's state file; a disk too full for even that is logged, and the hosts
    watching still hear how the job ended (the worker must live on to run the next job)."""
    if job.done is not None:
        extra["done"] = job.done
    try:
        job.record.set_state(state, **extra)
    except OSError as exc:
        log.error("job %s: could not record its state %r: %s", job.job_id, state, exc)


def _no_room_message(exc: OSError, record: JobRecord) -> str:
    """A failure for lack of disk space, said plainly: what could not be written, and what is kept."""
    why = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
           errno.EFBIG: "the file would be larger than the file system or the server's file size limit allows"}
    what = exc.strerror or os.strerror(exc.errno)
    if exc.filename and exc.filename not in what:
        what = f"{what}: {exc.filename}"
    done = len(record.done_frames())
    return (f"{why[exc.errno]} ({what}); {done} of {len(record.spec.frame_numbers)} frames are finished and kept; "
            "make room, then submit the job again with the same job id to render the rest")

