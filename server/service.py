"""The server: a ROUTER socket for hosts, a dispatch table of request handlers, and the workers.

One thread (the one calling `serve`) owns the ROUTER and the inproc PULL that collects worker
events; it answers requests, fans job events out to every host watching the job, and never
does slow work itself. A handler that fails answers `error`; nothing a host sends stops it.
"""

from __future__ import annotations

import logging
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
from cvgen.protocol.limits import Limits
from cvgen.protocol.messages import (
    PROTOCOL_VERSION,
    Message,
    decode,
    encode,
    error_reply,
    image_from_wire,
    reply,
)

from . import __version__
from .auth import ServerKeys, allow_listed, check_bind, secure
from .devices import available_devices
from .io.exr import NO_ROOM
from .io.color import colorspace_names
from .jobs.runner import check_job
from .jobs.shot import FileShot
from .jobs.store import UNFINISHED, JobStore
from .ops import all_ops
from .paths import PathPolicy
from .workers import ActiveJob, Worker

log = logging.getLogger("cvgen.server")

DEFAULT_BIND = "tcp://127.0.0.1:5555"
_SAME_JOB = ("op", "frames", "params", "colorspace", "seed", "name")


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
                 paths: PathPolicy | None = None) -> None:
        from .core.models import ModelCache, ModelRegistry

        check_bind(bind, keys)
        self.models = ModelCache(ModelRegistry.load(models_file))
        self.store = JobStore(jobs_dir)
        self.limits = limits
        if paths is None:
            paths = PathPolicy() if is_loopback(bind) else PathPolicy((), ())
        self.paths = paths.with_input_root(self.store.root)
        self.devices = devices or available_devices()
        self.context = zmq.Context()
        self.router = self.context.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 500)
        self.router.setsockopt(zmq.MAXMSGSIZE, max(limits.max_buffer_bytes, limits.max_map_bytes))
        self.keys = keys
        self.authenticator = secure(self.router, keys) if keys is not None else None
        #: Set (by SIGHUP in `cvgen serve`) to re-read the allow-list without stopping running jobs.
        self.reload_keys = threading.Event()
        self.router.bind(bind)
        self.endpoint = self.router.getsockopt_string(zmq.LAST_ENDPOINT)
        self._events_endpoint = f"inproc://cvgen-events-{id(self)}"
        self.events = self.context.socket(zmq.PULL)
        self.events.bind(self._events_endpoint)
        self.queue: queue.Queue[ActiveJob | None] = queue.Queue()
        self.active: dict[str, ActiveJob] = {}
        self.subscribers: dict[str, list[Subscriber]] = {}
        self.stopping = threading.Event()
        self.started = time.time()
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
        for worker in self.workers:
            worker.start()
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self.events, zmq.POLLIN)
        try:
            while not stop.is_set():
                if self.reload_keys.is_set():
                    self.reload_keys.clear()
                    self._reload_keys()
                for sock, _ in poller.poll(100):
                    if sock is self.router:
                        self._on_request(self.router.recv_multipart(copy=False))
                    else:
                        self._on_event(self.events.recv_multipart(copy=False))
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        self.stopping.set()
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

    def _reload_keys(self) -> None:
        if self.authenticator is None or self.keys is None:
            log.warning("no keys to reload: this server was started without --keys")
            return
        count = allow_listed(self.authenticator, self.keys)
        log.info("re-read %s: %d client key(s) admitted from now on", self.keys.authorized, count)

    def _resume_unfinished(self) -> None:
        for record in self.store.all():
            if record.state().get("state") not in UNFINISHED:
                continue
            try:
                check_job(record.spec, registry=self.models.registry)
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

    def _on_request(self, frames: list[zmq.Frame]) -> None:
        identity = frames[0].bytes
        try:
            self.limits.check_message([len(f) for f in frames[1:]])
            msg = decode(frames[1:])
        except ProtocolError as exc:
            self.send(identity, Message("error", {"code": exc.code, "message": str(exc)}))
            return
        except Exception as exc:
            log.exception("could not decode a request")
            self.send(identity, Message("error", {"code": "bad_request", "message": f"undecodable message: {exc}"}))
            return
        handler = self.handlers.get(msg.msg_type)
        try:
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
        inline = self._inline_inputs(spec, msg)
        checked = check_job(spec, inline, self.models.registry)
        roles = set(spec.inputs) | set(inline)
        for frame in spec.frame_numbers if inline else ():
            checked.op.check_channels({role: frames[frame].channels for role, frames in inline.items()}, roles)
        if spec.inputs and not inline:
            FileShot(spec.inputs, spec.frame_numbers).check_complete()
        subscriber = Subscriber(identity, msg.header, deliver == "inline")
        job = self._existing_job(spec) if spec.job_id else None
        if job is None:
            job = ActiveJob(self.store.create(spec), inline or None)
            self.active[job.job_id] = job
            self.queue.put(job)
        self.subscribers.setdefault(job.job_id, []).append(subscriber)
        record = job.record
        self.send(identity, reply(msg, "accepted", {
            "job_id": job.job_id,
            "frames": list(record.spec.frames),
            "done": len(record.done_frames()),
            "output": str(record.output_dir),
            "queued_behind": self.queue.qsize() - 1,
        }, job_id=job.job_id))

    def _existing_job(self, spec: JobSpec) -> ActiveJob | None:
        """The running or stored job with this id, to watch or resume; a different job is refused."""
        assert spec.job_id is not None
        if spec.job_id in self.active:
            job = self.active[spec.job_id]
        elif self.store.exists(spec.job_id):
            record = self.store.get(spec.job_id)
            job = ActiveJob(record)
        else:
            return None
        stored = job.record.spec.to_dict()
        different = [k for k in _SAME_JOB if stored[k] != spec.to_dict()[k]]
        if different:
            raise ProtocolError(f"job {spec.job_id} exists with a different {', '.join(different)}; use a new job id")
        if spec.job_id not in self.active:
            job.record.set_state("queued")
            self.active[spec.job_id] = job
            self.queue.put(job)
        return job

    def _inline_inputs(self, spec: JobSpec, msg: Message) -> dict[str, dict[int, Image]]:
        given = msg.content.get("inline") or {}
        if not isinstance(given, dict):
            raise ProtocolError("inline must map input roles to lists of frames")
        inline: dict[str, dict[int, Image]] = {}
        for role, entries in given.items():
            if role in spec.inputs:
                raise ProtocolError(f"input {role!r} is given both as a path and inline")
            if not isinstance(entries, list):
                raise ProtocolError(f"inline {role} must be a list of {{frame, image}} entries")
            frames: dict[int, Image] = {}
            for entry in entries:
                if not isinstance(entry, dict) or not isinstance(entry.get("frame"), int):
                    raise ProtocolError(f"inline {role} entries need an integer frame and an image")
                image = image_from_wire(entry.get("image"), msg.buffers)
                if min(image.width, image.height) < 1:
                    raise ProtocolError(f"{role} frame {entry['frame']} is {image.width}x{image.height}: no pixels")
                self.limits.check_resolution(f"{role} frame {entry['frame']}", image.width, image.height)
                frames[entry["frame"]] = image
            missing = [f for f in spec.frame_numbers if f not in frames]
            extra = sorted(set(frames) - set(spec.frame_numbers))
            if missing or extra:
                raise ProtocolError(f"inline {role} frames do not match the range {spec.frames[0]}-{spec.frames[1]}: "
                                    f"{len(missing)} missing (first {missing[:1]}), {len(extra)} outside")
            inline[role] = frames
        return inline

    def on_cancel(self, identity: bytes, msg: Message) -> None:
        job_id = str(msg.content.get("job_id") or msg.job_id or "")
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
                "running": [j.job_id for j in self.active.values() if j.state == "running"],
                "devices": self.devices,
                "uptime_s": time.time() - self.started,
            }))
            return
        self.send(identity, reply(msg, "status_reply", self._job_status(str(job_id)), job_id=str(job_id)))

    def _job_status(self, job_id: str) -> dict[str, Any]:
        job = self.active.get(job_id)
        record = job.record if job else self.store.get(job_id)
        status = {**record.state(), "job_id": job_id, "op": record.spec.op, "frames": list(record.spec.frames),
                  "done": len(record.done_frames()), "output": str(record.output_dir)}
        if job is not None:
            status.update(state=job.state, progress=job.progress)
        return status

    def on_jobs(self, identity: bytes, msg: Message) -> None:
        records = self.store.all()[-200:]
        self.send(identity, reply(msg, "jobs_reply", {"jobs": [self._job_status(r.job_id) for r in records]}))

