"""The server: a ROUTER socket for hosts, a dispatch table of request handlers, and the workers.

One thread (the one calling `serve`) owns the ROUTER and the inproc PULL that collects worker
events; it answers requests, fans job events out to every host watching the job, and never
does slow work itself. A handler that fails answers `error`; nothing a host sends stops it.
"""

from __future__ import annotations

import gc
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import zmq

from cvgen.protocol.addresses import is_loopback
from cvgen.protocol.errors import CvgenError, ProtocolError
from cvgen.protocol.images import Image
from cvgen.protocol.jobs import JobSpec
from cvgen.protocol.limits import ENVELOPE_FRAMES, Limits
from cvgen.protocol.messages import (
    PROTOCOL_VERSION,
    Message,
    decode,
    encode,
    error_reply,
    image_from_wire,
    refused_request_header,
    reply,
)

from . import __version__
from .access import Access
from .auth import LOCAL, AllowList, Requester, ServerKeys, check_bind, secure
from .devices import available_devices
from .errors import NotFound
from .intake import Admission, Intake, Submission
from .io.exr import NO_ROOM
from .io.color import colorspace_names
from .jobs.runner import check_job
from .jobs.store import UNFINISHED, JobStore
from .ops import all_ops, get_op
from .paths import PathPolicy
from .workers import ActiveJob, Worker

log = logging.getLogger("cvgen.server")

DEFAULT_BIND = "tcp://127.0.0.1:5555"
#: Jobs in one `jobs` reply, at most (and by default).
MAX_JOBS_PAGE = 200
_SAME_JOB = ("op", "frames", "params", "colorspace", "seed", "name")


class CannotListen(CvgenError):
    """The bind address is taken or not one this machine has."""


@dataclass
class Subscriber:
    identity: bytes
    request: dict[str, Any]
    inline: bool


class Server:
    """`keys` are required for any address but loopback. `paths` says where requests may read
    and write; by default anywhere on loopback, and only the jobs folder (and inline frames)
    on any other address."""

    def __init__(self, bind: str = DEFAULT_BIND, jobs_dir: str | Path = "cvgen-jobs",
                 devices: list[str] | None = None, limits: Limits = Limits(),
                 models_file: str | Path | None = None, keys: ServerKeys | None = None,
                 paths: PathPolicy | None = None, model_memory: int | None = None) -> None:
        from .core.models import ModelCache, ModelRegistry

        check_bind(bind, keys)
        self.models = ModelCache(ModelRegistry.load(models_file), model_memory)
        self.store = JobStore(jobs_dir)
        self.limits = limits
        if paths is None:
            paths = PathPolicy() if is_loopback(bind) else PathPolicy((), ())
        self.devices = devices or available_devices()
        twice = sorted({d for d in self.devices if self.devices.count(d) > 1})
        if twice:
            # One worker per device: two workers on one device would share its loaded models, and an
            # adapter (LoRA, IP-Adapter) or attention processor one job installs would reach the other.
            raise ProtocolError(f"--device {twice[0]} is given more than once: each device runs one worker")
        self.context = zmq.Context()
        self.router = self.context.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 500)
        self.router.setsockopt(zmq.MAXMSGSIZE, max(limits.max_buffer_bytes, limits.max_map_bytes))
        self.keys = keys
        #: The client keys admitted now, checked on every request (None: no keys, all is the local user's).
        self.allow: AllowList | None = None
        self.authenticator = None
        if keys is not None:
            self.allow = AllowList(keys)
            self.authenticator = secure(self.router, keys, self.allow)
        self.access = Access(self.store, self.allow)
        self.paths = paths.with_input_root(self.store.root).with_jobs(self.store.root, self.access.job_folders)
        #: Who sent the request being handled: set by `_on_request` before each handler runs.
        self.requester: Requester = LOCAL if keys is None else Requester("")
        #: Set (by SIGHUP in `cvgen serve`) to re-read the allow-list without stopping running jobs.
        self.reload_keys = threading.Event()
        try:
            self.router.bind(bind)
        except zmq.ZMQError as exc:
            self.router.close(linger=0)
            if self.authenticator is not None:
                self.authenticator.stop()
            self.context.term()
            hint = "; is another cvgen serve running there?" if exc.errno == zmq.EADDRINUSE else ""
            raise CannotListen(f"cannot listen on {bind}: {os.strerror(exc.errno)}{hint}") from None
        self.endpoint = self.router.getsockopt_string(zmq.LAST_ENDPOINT)
        self._events_endpoint = f"inproc://cvgen-events-{id(self)}"
        self.events = self.context.socket(zmq.PULL)
        self.events.bind(self._events_endpoint)
        self.queue: queue.Queue[ActiveJob | None] = queue.Queue()
        self.active: dict[str, ActiveJob] = {}
        self.subscribers: dict[str, list[Subscriber]] = {}
        self.stopping = threading.Event()
        self.started = time.time()
        #: Submits the intake thread is storing, and their job ids, so a second submit of one job
        #: cannot race the first.
        self.storing: list[Submission] = []
        self.admitting: set[str] = set()
        self.intake = Intake(self.store, self.context, self._events_endpoint)
        self.workers = [Worker(d, self.queue, self.context, self._events_endpoint, self.stopping, self.models,
                               self.paths, limits) for d in self.devices]
        self.handlers: dict[str, Callable[[bytes, Message], None]] = {
            "hello": self.on_hello,
            "submit": self.on_submit,
            "cancel": self.on_cancel,
            "status": self.on_status,
            "jobs": self.on_jobs,
        }

    # -- lifecycle -------------------------------------------------------------------------

    def serve(self, stop: threading.Event) -> None:
        """Answer hosts until `stop` is set, then shut down in order."""
        self._resume_unfinished()
        self.intake.start()
        for worker in self.workers:
            worker.start()
        # Everything loaded so far (torch and the rest, some 175,000 objects) lives as long as the
        # server: outside the collector's reach, a full collection, which any burst of requests
        # triggers, takes a few ms instead of 160 ms during which no thread runs.
        gc.freeze()
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self.events, zmq.POLLIN)
        try:
            while not stop.is_set():
                sighup = self.reload_keys.is_set()
                self.reload_keys.clear()
                self.access.check_keys(sighup)
                for sock, _ in poller.poll(100):
                    if sock is self.router:
                        self._on_request(*self._receive_request())
                    else:
                        self._on_event(self.events.recv_multipart(copy=False))
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        self.stopping.set()
        self.intake.stop(10)
        for _ in self.workers:
            self.queue.put(None)
        deadline = time.monotonic() + 10
        for worker in self.workers:
            worker.join(max(deadline - time.monotonic(), 0))
        while self.events.poll(0):
            self._on_event(self.events.recv_multipart(copy=False))
        self.events.close(linger=0)
        self.router.close(linger=500)
        if self.authenticator is not None:
            self.authenticator.stop()
        self.context.term()
        gc.unfreeze()  # so that what the server held is collected at exit, before native modules unload

    def _resume_unfinished(self) -> None:
        self.store.remove_unfinished_submits()
        for record in self.store.all():
            if record.state().get("state") not in UNFINISHED:
                continue
            try:
                check_job(record.spec, registry=self.models.registry)
                self.paths.check_spec(record.spec)  # the roots may have narrowed since the submit
            except CvgenError as exc:
                record.set_state("failed", code="bad_request",
                                 message=f"could not resume after a restart: {exc}")
                continue
            log.info("resuming job %s (%d frames done)", record.job_id, len(record.done_frames()))
            job = ActiveJob(record)
            self.active[record.job_id] = job
            self.queue.put(job)

    # -- transport -------------------------------------------------------------------------

    def send(self, identity: bytes, msg: Message) -> None:
        self.router.send_multipart([identity, *encode(msg)], copy=False)

    def _receive_request(self) -> tuple[list[zmq.Frame], int]:
        """The frames of one request (routing identity first) up to the most a request may have,
        and how many it had. ZeroMQ hands a message over whole, so the frames past that are
        received and dropped one by one: 2,000,000 empty frames kept as zmq.Frame objects once
        held this thread for 20 s."""
        recv = self.router.recv
        keep = 1 + ENVELOPE_FRAMES + self.limits.max_buffers_per_message
        frame = recv(copy=False)
        frames = [frame]
        while frame.more and len(frames) < keep:
            frame = recv(copy=False)
            frames.append(frame)
        count = len(frames)
        while frame.more:
            frame = recv(copy=False)
            count += 1
        return frames, count

    def _on_request(self, frames: list[zmq.Frame], count: int | None = None) -> None:
        """Answer one request; `count` is how many frames it had where `frames` holds only the first."""
        identity = frames[0].bytes
        try:
            self.limits.check_buffer_count((count or len(frames)) - 1 - ENVELOPE_FRAMES)
            self.limits.check_message([len(f) for f in frames[1:]])
            msg = decode(frames[1:], self.limits)
        except ProtocolError as exc:
            parent = refused_request_header(frames[1:], self.limits)
            self.send(identity, Message("error", {"code": exc.code, "message": str(exc)}, parent=parent))
            return
        except Exception as exc:
            log.exception("could not decode a request")
            self.send(identity, Message("error", {"code": "bad_request", "message": f"undecodable message: {exc}"}))
            return
        handler = self.handlers.get(msg.msg_type)
        try:
            self.requester = self.access.requester(frames)
            if handler is None:
                raise ProtocolError(f"unknown message type {msg.msg_type!r}; requests are {', '.join(self.handlers)}")
            handler(identity, msg)
        except CvgenError as exc:
            self.send(identity, error_reply(msg, exc.code, str(exc)))
        except Exception as exc:
            if isinstance(exc, OSError) and exc.errno in NO_ROOM:
                self.send(identity, error_reply(msg, "no_space", f"the server has no room to store the job: {exc}"))
                return
            log.exception("handler for %s failed", msg.msg_type)
            self.send(identity, error_reply(msg, "internal", f"unexpected {type(exc).__name__}: {exc}"))

    def _on_event(self, frames: list[zmq.Frame]) -> None:
        event = decode(frames)
        if event.msg_type == "admitted":
            self._on_admitted(self.intake.results.pop(event.content["token"]))
            return
        job_id = event.job_id or ""
        for sub in self.subscribers.get(job_id, []):
            inline = sub.inline and event.msg_type == "frame"
            content = dict(event.content)
            if event.msg_type == "frame" and not inline:
                content["image"] = {k: v for k, v in content["image"].items() if k != "buffer"}
            out = Message(event.msg_type, content, job_id, sub.request, event.buffers if inline else [])
            self.send(sub.identity, out)
        if event.final:
            self.subscribers.pop(job_id, None)
            job = self.active.get(job_id)
            if job is not None and job.state != "queued":
                self.active.pop(job_id, None)

    # -- handlers --------------------------------------------------------------------------

    def on_hello(self, identity: bytes, msg: Message) -> None:
        self.send(identity, reply(msg, "hello_reply", {
            "protocol_version": PROTOCOL_VERSION,
            "server_version": __version__,
            "ops": [op.schema() for op in all_ops().values()],
            "models": self.models.registry.describe(),
            "default_model": self.models.registry.default,
            "devices": self.devices,
            "limits": self.limits.to_dict(),
            "colorspaces": colorspace_names(),
            "jobs_dir": str(self.store.root),
        }))

    def on_submit(self, identity: bytes, msg: Message) -> None:
        """Check what the message alone tells, then watch the existing job of that id, or hand the
        new job to the intake thread; `accepted` comes only once the job is stored."""
        spec = JobSpec.from_dict(msg.content.get("job"))
        deliver = msg.content.get("deliver", "path")
        if deliver not in ("path", "inline"):
            raise ProtocolError(f"deliver must be 'path' or 'inline', not {deliver!r}")
        count = len(spec.frame_numbers)
        if count > self.limits.max_frames_per_job:
            raise ProtocolError(f"{count} frames is over this server's limit max_frames_per_job = "
                                f"{self.limits.max_frames_per_job}")
        for role, template in spec.inputs.items():
            self.paths.check_input(role, template)
        if spec.output:
            self.paths.check_output(spec.output)
        self.access.check_job_paths(spec, self.requester)
        inline = self._inline_inputs(spec, msg)
        checked = check_job(spec, inline, self.models.registry)
        roles = set(spec.inputs) | set(inline)
        for frame in spec.frame_numbers if inline else ():
            checked.op.check_channels({role: (frames.get(frame) or next(iter(frames.values()))).channels
                                       for role, frames in inline.items()}, roles)
        subscriber = Subscriber(identity, msg.header, deliver == "inline")
        if spec.job_id in self.admitting:
            raise ProtocolError(f"job {spec.job_id} is being stored for another submit right now; "
                                "send this one again once that one is accepted, to watch it")
        existing = self._existing_job(spec, self.requester) if spec.job_id else None
        if existing is not None:
            self._accept(msg, existing, subscriber)
            return
        if spec.job_id:
            self.admitting.add(spec.job_id)
        submission = Submission(identity, msg, spec, inline, deliver == "inline", owner=self.requester.owner)
        self.storing.append(submission)
        self.intake.submit(submission)

    def _on_admitted(self, admission: Admission) -> None:
        submission = admission.submission
        self.admitting.discard(submission.spec.job_id or "")
        self.storing.remove(submission)
        if admission.record is None:
            self.send(submission.identity, error_reply(submission.request, admission.code, admission.message))
            return
        job = ActiveJob(admission.record, done=admission.done)
        self.store.listed(job.job_id)
        subscriber = Subscriber(submission.identity, submission.request.header, submission.deliver_inline)
        self._accept(submission.request, job, subscriber)

    def _accept(self, msg: Message, job: ActiveJob, subscriber: Subscriber) -> None:
        """Answer `accepted`, then watch and (if it is not already) queue the job: in that order, so
        the host hears of the job before any of its events, and a reply that cannot be built
        leaves nothing queued to answer a second time."""
        record = job.record
        watching = self.subscribers.get(job.job_id, [])
        if len(watching) >= self.limits.max_watchers_per_job:
            raise ProtocolError(f"job {job.job_id} already has {len(watching)} requests watching it, this server's "
                                f"limit max_watchers_per_job = {self.limits.max_watchers_per_job}; wait for one to end")
        queued = job.job_id not in self.active
        ahead = sum(1 for j in self.active.values() if j.state == "queued" and j is not job)
        content = {
            "job_id": job.job_id,
            "frames": list(record.spec.frames),
            "done": job.frames_done(),
            "output": str(record.output_dir),
            "queued_behind": ahead if queued or job.state == "queued" else 0,
        }
        self.send(subscriber.identity, reply(msg, "accepted", content, job_id=job.job_id))
        self.subscribers.setdefault(job.job_id, []).append(subscriber)
        if queued:
            self.active[job.job_id] = job
            self.queue.put(job)

    def _existing_job(self, spec: JobSpec, requester: Requester) -> ActiveJob | None:
        """The running or stored job with this id, to watch or resume; a different job is refused,
        and another client's job answers as one that does not exist.
        A stored job that is not running is queued again by `_accept`."""
        assert spec.job_id is not None
        if spec.job_id in self.active:
            self.access.check_owner(spec.job_id, requester)
            job = self.active[spec.job_id]
        elif self.store.exists(spec.job_id):
            self.access.check_owner(spec.job_id, requester)
            job = ActiveJob(self.store.get(spec.job_id))
        else:
            return None
        stored = job.record.spec.to_dict()
        different = [k for k in _SAME_JOB if stored[k] != spec.to_dict()[k]]
        if different:
            raise ProtocolError(f"job {spec.job_id} exists with a different {', '.join(different)}; use a new job id")
        if spec.job_id not in self.active:
            job.record.set_state("queued")
        return job

    def _inline_inputs(self, spec: JobSpec, msg: Message) -> dict[str, dict[int, Image]]:
        given = msg.content.get("inline") or {}
        if not isinstance(given, dict):
            raise ProtocolError("inline must map input roles to lists of frames")
        inline: dict[str, dict[int, Image]] = {}
        used: set[int] = set()
        image_roles = get_op(spec.op).image_roles
        for role, entries in given.items():
            if role in spec.inputs:
                raise ProtocolError(f"input {role!r} is given both as a path and inline")
            if not isinstance(entries, list):
                raise ProtocolError(f"inline {role} must be a list of {{frame, image}} entries")
            if len(entries) > len(spec.frame_numbers):
                raise ProtocolError(f"inline {role} has {len(entries)} entries for the {len(spec.frame_numbers)} "
                                    "frames of the range")
            frames: dict[int, Image] = {}
            for entry in entries:
                if not isinstance(entry, dict) or not isinstance(entry.get("frame"), int):
                    raise ProtocolError(f"inline {role} entries need an integer frame and an image")
                image = image_from_wire(entry.get("image"), msg.buffers)
                used.add(entry["image"]["buffer"])
                if min(image.width, image.height) < 1:
                    raise ProtocolError(f"{role} frame {entry['frame']} is {image.width}x{image.height}: no pixels")
                self.limits.check_resolution(f"{role} frame {entry['frame']}", image.width, image.height)
                frames[entry["frame"]] = image
            if role in image_roles:
                if len(frames) != 1:
                    raise ProtocolError(f"inline {role} is an image (one frame for the whole shot) but has "
                                        f"{len(frames)} entries; send one")
                inline[role] = frames
                continue
            missing = [f for f in spec.frame_numbers if f not in frames]
            extra = sorted(set(frames) - set(spec.frame_numbers))
            if missing or extra:
                raise ProtocolError(f"inline {role} frames do not match the range {spec.frames[0]}-{spec.frames[1]}: "
                                    f"{len(missing)} missing (first {missing[:1]}), {len(extra)} outside")
            inline[role] = frames
        staged = sum(msg.buffers[index].nbytes for index in used)
        if staged > self.limits.max_staged_bytes_per_job:
            raise ProtocolError(f"the job's inline frames hold {staged} bytes of pixels, over this server's limit "
                                f"max_staged_bytes_per_job = {self.limits.max_staged_bytes_per_job}; send fewer "
                                "frames per job, or paths")
        return inline

    def on_cancel(self, identity: bytes, msg: Message) -> None:
        job_id = str(msg.content.get("job_id") or msg.job_id or "")
        self.access.check_owner(job_id, self.requester)
        job = self.active.get(job_id)
        if job is None:
            state = self.store.get(job_id).state().get("state")
            self.send(identity, reply(msg, "cancel_reply", {"job_id": job_id, "state": state}, job_id=job_id))
            return
        with job.lock:
            job.cancel.set()
            not_started = not job.started
        if not_started:
            job.state = "cancelled"
            job.record.set_state("cancelled", code="cancelled", message="cancelled before it started")
            self._on_event(encode(Message("error", {"code": "cancelled", "message": "the job was cancelled before it started"}, job_id)))
        state = "cancelled" if not_started else "cancelling"
        self.send(identity, reply(msg, "cancel_reply", {"job_id": job_id, "state": state}, job_id=job_id))

    def on_status(self, identity: bytes, msg: Message) -> None:
        job_id = msg.content.get("job_id") or msg.job_id
        if not job_id:
            self.send(identity, reply(msg, "status_reply", {
                "queued": sum(1 for j in self.active.values() if j.state == "queued"),
                "running": [j.job_id for j in self.active.values()
                            if j.state == "running" and self.requester.may_use(self.store.owner(j.job_id))],
                "devices": self.devices,
                "uptime_s": time.time() - self.started,
                "storing": [sub.request.msg_id for sub in self.storing if sub.identity == identity],
            }))
            return
        self.access.check_owner(str(job_id), self.requester)
        self.send(identity, reply(msg, "status_reply", self._job_status(str(job_id)), job_id=str(job_id)))

    def _job_status(self, job_id: str) -> dict[str, Any]:
        """A job's status from its state file and what the server holds in memory; frames on disk
        are counted only for a job that finished before the server recorded its count."""
        job = self.active.get(job_id)
        record = job.record if job else self.store.get(job_id)
        state = record.state()
        if job is not None:
            done = job.frames_done()
        elif isinstance(state.get("done"), int):
            done = state["done"]
        else:
            done = len(record.done_frames())
        status = {**state, "job_id": job_id, "op": record.spec.op, "frames": list(record.spec.frames),
                  "done": done, "output": str(record.output_dir)}
        if job is not None:
            status.update(state=job.state, progress=job.progress)
        return status

    def on_jobs(self, identity: bytes, msg: Message) -> None:
        """A page of the requester's jobs, newest last; `before` (a job id from an earlier page)
        pages back. A job that cannot be read is listed as `unreadable` rather than failing the rest."""
        limit = msg.content.get("limit", MAX_JOBS_PAGE)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_JOBS_PAGE:
            raise ProtocolError(f"jobs limit must be a whole number from 1 to {MAX_JOBS_PAGE}, not {limit!r}")
        before = msg.content.get("before")
        ids = [job_id for job_id in self.store.ids() if self.requester.may_use(self.store.owner(job_id))]
        if before is not None:
            if not isinstance(before, str) or before not in ids:
                raise NotFound(f"no job {before!r} to list the jobs before")
            ids = ids[:ids.index(before)]
        page = ids[-limit:]
        self.send(identity, reply(msg, "jobs_reply", {"jobs": [self._listed(job_id) for job_id in page],
                                                      "more": len(ids) > len(page)}))

    def _listed(self, job_id: str) -> dict[str, Any]:
        try:
            return self._job_status(job_id)
        except (CvgenError, OSError, ValueError) as exc:
            return {"job_id": job_id, "state": "unreadable", "message": f"the job cannot be read: {exc}"}

