"""A synchronous client for hosts: Blender and Nuke call this, nothing else.

Every call has a timeout. While a job streams events the client checks, whenever the server
has been quiet for `timeout` seconds, that it still answers (a `status` request); a dead
server therefore surfaces as `ServerUnavailable`, never as a hang. A server reached over the
network needs CurveZMQ key files; a refused handshake surfaces as `AuthenticationFailed`, which
says why, instead of a plain timeout.
"""

from __future__ import annotations

import collections
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterator, Union

import zmq
from zmq.utils.monitor import recv_monitor_message

from .errors import AuthenticationFailed, JobCancelled, ProtocolError, ServerError, ServerUnavailable
from .images import Image
from .jobs import JobSpec
from .keys import PathLike, load_client_keys
from .limits import Limits
from .messages import Message, decode, encode, image_from_wire, image_to_wire, make_header

DEFAULT_ADDRESS = "tcp://127.0.0.1:5555"


@dataclass
class Accepted:
    job_id: str
    frames: tuple[int, int]
    done: int
    output: str


@dataclass
class Progress:
    job_id: str
    frame: int
    step: int
    steps: int
    fraction: float
    eta_s: float | None


@dataclass
class FrameReady:
    """A finished frame: always on disk at `path`; `image` holds the pixels when sent inline."""

    job_id: str
    frame: int
    path: str
    image: Image | None = None


@dataclass
class Done:
    job_id: str
    frames: dict[int, str] = field(default_factory=dict)
    output: str = ""


Event = Union[Accepted, Progress, FrameReady, Done]  # Union, not |: Nuke 14 runs Python 3.9


_HANDSHAKE_FAILURES = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                       | zmq.EVENT_HANDSHAKE_FAILED_AUTH)


class Client:
    """`server_key` is the server's public key file, `client_key` this workstation's secret key
    file; give both for a server on the network (`cvgen keys generate` makes them), neither for
    one on this machine.
    """

    def __init__(self, address: str = DEFAULT_ADDRESS, timeout: float = 10.0,
                 context: zmq.Context | None = None, server_key: PathLike | None = None,
                 client_key: PathLike | None = None) -> None:
        self.address = address
        self.timeout = timeout
        self.session = uuid.uuid4().hex
        #: The server's limits once `hello` has been called; every request is checked against them.
        self.limits: Limits | None = None
        keys = load_client_keys(server_key, client_key)
        self._socket = (context or zmq.Context.instance()).socket(zmq.DEALER)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.IDENTITY, self.session.encode())
        self._has_keys = keys is not None
        if keys is not None:
            self._socket.curve_serverkey = keys.server_public
            self._socket.curve_publickey = keys.public
            self._socket.curve_secretkey = keys.secret
        self._monitor = self._socket.get_monitor_socket(_HANDSHAKE_FAILURES)
        self._poller = zmq.Poller()
        self._poller.register(self._socket, zmq.POLLIN)
        self._poller.register(self._monitor, zmq.POLLIN)
        self._socket.connect(address)
        self._pending: dict[str, collections.deque[Message]] = {}

    def close(self) -> None:
        self._socket.disable_monitor()
        self._monitor.close(linger=0)
        self._socket.close(linger=0)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- requests --------------------------------------------------------------------------

    def hello(self) -> dict[str, Any]:
        """Server version, ops with their parameter schemas, devices and limits."""
        info = self._call("hello", {}).content
        self.limits = Limits.from_dict(info.get("limits"))
        return info

    def status(self, job_id: str | None = None) -> dict[str, Any]:
        return self._call("status", {"job_id": job_id} if job_id else {}, job_id).content

    def jobs(self, limit: int | None = None, before: str | None = None) -> list[dict[str, Any]]:
        """This client's most recent jobs, oldest first: `limit` of them (the server's page size by
        default), created before the job `before` if given (to page back)."""
        content: dict[str, Any] = {}
        if limit is not None:
            content["limit"] = limit
        if before is not None:
            content["before"] = before
        return list(self._call("jobs", content).content.get("jobs", []))

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._call("cancel", {"job_id": job_id}, job_id).content

    def submit(self, job: JobSpec, inline: dict[str, dict[int, Image]] | None = None,
               deliver: str = "path") -> "JobStream":
        """Send a job; iterate the returned stream for its events until `Done`.

        `inline` carries input frames as pixels (role -> frame -> Image) for a server that does
        not share the host's file system; `deliver="inline"` asks for result pixels back too.
        """
        buffers: list[Any] = []
        wire_inline = {
            role: [{"frame": f, "image": image_to_wire(img, buffers)} for f, img in sorted(frames.items())]
            for role, frames in (inline or {}).items()
        }
        content = {"job": job.to_dict(), "inline": wire_inline, "deliver": deliver}
        msg_id = self._send("submit", content, buffers, job.job_id)
        return JobStream(self, msg_id)

    # -- plumbing --------------------------------------------------------------------------

    def _send(self, msg_type: str, content: dict[str, Any], buffers: list[Any] | None = None,
              job_id: str | None = None) -> str:
        header = make_header(msg_type, job_id, self.session)
        msg = Message(msg_type, content, job_id, buffers=buffers or [], header=header)
        frames = encode(msg)
        if self.limits is not None:
            self.limits.check_message([memoryview(f).nbytes for f in frames])
            decode(frames, self.limits)  # refuses what the server would refuse to decode, with its sentence
        self._pending[msg.msg_id] = collections.deque()
        try:
            self._socket.send_multipart(frames, copy=False, flags=zmq.NOBLOCK)
        except zmq.Again:
            del self._pending[msg.msg_id]
            self._raise_handshake_failure()
            raise ServerUnavailable(f"cannot send to {self.address}: the connection is not ready") from None
        return msg.msg_id

    def _call(self, msg_type: str, content: dict[str, Any], job_id: str | None = None) -> Message:
        msg_id = self._send(msg_type, content, job_id=job_id)
        try:
            answer = self._receive(msg_id, self.timeout)
        finally:
            self._pending.pop(msg_id, None)
        if answer is None:
            self._raise_handshake_failure()
            raise ServerUnavailable(
                f"no answer from the cvgen server at {self.address} within {self.timeout:g} s; "
                "is `cvgen serve` running there?"
            )
        if answer.msg_type == "error":
            raise _error(answer)
        return answer

    def _receive(self, msg_id: str, timeout: float) -> Message | None:
        """The next reply to request `msg_id`, or None after `timeout` seconds of silence."""
        queue = self._pending[msg_id]
        deadline = time.monotonic() + timeout
        while not queue:
            remaining = deadline - time.monotonic()
            ready = dict(self._poller.poll(int(remaining * 1000) + 1)) if remaining > 0 else {}
            if self._monitor in ready:
                self._raise_handshake_failure()  # a refused handshake is final: say so now, not at the timeout
            if self._socket not in ready:
                if not queue and time.monotonic() >= deadline:
                    return None
                continue
            try:
                msg = decode(self._socket.recv_multipart(copy=False))
            except ProtocolError:
                continue
            target = self._pending.get(msg.parent_id)
            if target is not None:
                target.append(msg)
        return queue.popleft()

    def _raise_handshake_failure(self) -> None:
        """After a silence: if the reason was a refused handshake, say so."""
        failed = None
        while self._monitor.poll(0):
            failed = recv_monitor_message(self._monitor)
        if failed is None:
            return
        if failed["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            raise AuthenticationFailed(
                f"the cvgen server at {self.address} refused this workstation's key: ask whoever runs it to "
                "put this workstation's public key (NAME.key) in the server's authorized/ folder")
        if not self._has_keys:
            raise AuthenticationFailed(
                f"the cvgen server at {self.address} was started with keys (an encrypted connection) and this "
                "workstation has none: give the server's public key (server.key) and this workstation's secret "
                "key (NAME.key_secret) from `cvgen keys generate`")
        raise AuthenticationFailed(
            f"could not set up an encrypted connection to the cvgen server at {self.address}: the server's public "
            "key given here does not belong to that server, or the server does not use keys")


def _error(msg: Message) -> ServerError:
    code = str(msg.content.get("code", "internal"))
    cls = JobCancelled if code == "cancelled" else ServerError
    return cls(code, str(msg.content.get("message", "")), msg.job_id)


class JobStream:
    """The events of one submitted job, in order; raises `ServerError` if the job fails."""

    def __init__(self, client: Client, msg_id: str) -> None:
        self.client = client
        self.msg_id = msg_id
        self.job_id: str | None = None
        self.finished = False

    def __iter__(self) -> Iterator[Event]:
        return self

    def __next__(self) -> Event:
        if self.finished:
            raise StopIteration
        msg = self._next_message()
        if msg.job_id and not self.job_id:
            self.job_id = msg.job_id
        if msg.final:
            self.finished = True
            self.client._pending.pop(self.msg_id, None)
            if msg.msg_type == "error":
                raise _error(msg)
        return _event(msg)

    def _next_message(self) -> Message:
        unacknowledged = 0
        while True:
            msg = self.client._receive(self.msg_id, self.client.timeout)
            if msg is not None:
                return msg
            # Quiet for a whole timeout: a long step, a queue, a server storing many inline frames
            # before it accepts, or a dead server. Ask.
            status = self.client.status(self.job_id)
            if self.job_id is None and self.msg_id not in status.get("storing", ()):
                unacknowledged += 1
                if unacknowledged >= 2:
                    raise ProtocolError(
                        f"the cvgen server at {self.client.address} answers but never acknowledged the job; "
                        "the request was probably over its size limits (see `hello`'s limits)")

    def wait(self) -> Done:
        """Consume events until the job is done; returns the final `Done`."""
        last: Event | None = None
        for last in self:
            pass
        assert isinstance(last, Done)
        return last

    def cancel(self) -> dict[str, Any]:
        if not self.job_id:
            raise ProtocolError("the job has not been accepted yet")
        return self.client.cancel(self.job_id)


def _event(msg: Message) -> Event:
    c = msg.content
    job_id = msg.job_id or ""
    if msg.msg_type == "accepted":
        return Accepted(job_id, (c["frames"][0], c["frames"][1]), int(c.get("done", 0)), str(c.get("output", "")))
    if msg.msg_type == "progress":
        return Progress(job_id, int(c["frame"]), int(c["step"]), int(c["steps"]), float(c["fraction"]), c.get("eta_s"))
    if msg.msg_type == "frame":
        image = image_from_wire(c["image"], msg.buffers) if msg.buffers else None
        return FrameReady(job_id, int(c["frame"]), str(c["path"]), image)
    if msg.msg_type == "done":
        return Done(job_id, {int(f["frame"]): str(f["path"]) for f in c.get("frames", [])}, str(c.get("output", "")))
    raise ProtocolError(f"unexpected {msg.msg_type!r} reply to a submit")
