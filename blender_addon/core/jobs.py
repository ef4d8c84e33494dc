"""Sending one job and following it to the end, on the calling thread or on a worker thread.

Blender's UI must never wait on the network, so the panel's Render runs `run_job` on a
`JobWorker` thread and polls its events from a timer; a script or a farm task (background mode)
calls `run_job` directly and waits. Either way the job is checked against the server's own op
schema (`hello`) before it is sent, so a wrong op, input or parameter is reported by name.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import SetupError
from .connection import ServerSettings, open_client
from .params import check_params, find_op, job_params, ops_from_hello
from .protocol import client, errors, protocol, schema


@dataclass(frozen=True)
class RenderRequest:
    """Everything a job needs, read from Blender before any work starts."""

    server: ServerSettings
    online_access: bool
    op: str
    frames: tuple[int, int]
    inputs: dict[str, str]
    params: dict[str, Any]
    name: str
    output: str
    job_id: str
    seed: int = 0
    colorspace: str = protocol.DEFAULT_COLORSPACE


@dataclass(frozen=True)
class Notice:
    """Something the artist should know that does not stop the job (a dropped input, say)."""

    text: str


@dataclass(frozen=True)
class Finished:
    """The last event of a `Worker`: the job's `Done`, or why it stopped."""

    done: Any = None
    error: str = ""
    cancelled: bool = False


Emit = Callable[[Any], None]


def build_job(request: RenderRequest, hello: dict[str, Any], emit: Emit) -> Any:
    """The `JobSpec` to submit, checked against the server's op schema.

    Inputs the op does not take are left out (with a notice): the panel offers every role, and an
    op without depth simply ignores a depth strip. A missing required input stops here.
    """
    op = find_op(ops_from_hello(hello), request.op)
    inputs = {role: path for role, path in request.inputs.items() if role in op.roles}
    for role in sorted(set(request.inputs) - set(inputs)):
        emit(Notice(f"{op.name} does not take a {schema.role_label(role)} input; it was not sent"))
    missing = [f"{r.label} {'image' if r.kind == 'image' else 'strip'}"  # the panel's names, not the wire's
               for r in op.role_schemas if r.required and r.name not in inputs]
    if missing:
        raise SetupError(f"{op.name} needs a {' and a '.join(missing)}")
    check_params(op, request.params)
    params, warnings = job_params(op, request.params)
    for text in warnings:
        emit(Notice(text))
    return protocol.JobSpec(
        request.op, request.frames, inputs, params, colorspace=request.colorspace, seed=request.seed,
        name=request.name, output=request.output, job_id=request.job_id,
    )


def hello(server: ServerSettings, online_access: bool) -> dict[str, Any]:
    with open_client(server, online_access) as c:
        return c.hello()


def check_job(request: RenderRequest) -> None:
    """Everything `run_job` checks before it sends (server up, keys, op, inputs, parameters), without
    sending: run before inputs are converted, so a refused job costs no conversion and leaves no files."""
    with open_client(request.server, request.online_access) as c:
        build_job(request, c.hello(), lambda event: None)


def run_job(request: RenderRequest, emit: Emit, cancelled: Callable[[], bool] = lambda: False) -> Any:
    """Check, submit and follow the job; every event goes to `emit`; returns the `Done`.

    `cancelled` is asked once more just before submitting, so a cancel that comes while the
    server is still being asked for its schema never starts the job. The job goes out on the
    client that asked `hello`, so the client knows the server's limits before it sends (the
    add-on sends paths, never pixels, so only the message itself is measured against them).
    """
    with open_client(request.server, request.online_access) as c:
        spec = build_job(request, c.hello(), emit)
        if cancelled():
            raise protocol.JobCancelled("cancelled", "the job was cancelled before it was sent", request.job_id)
        done = None
        for event in c.submit(spec):
            if isinstance(event, client.Accepted):  # a refused job leaves nothing behind
                keep_sent(spec, emit)
            emit(event)
            done = event
        return done


#: The job as sent, in its output folder: to attach to it again, a host must send the very same job.
SENT_FILE = "cvgen-job.json"
#: Server states of a job that is not finished, so a host can attach to it and wait for its frames.
UNFINISHED = ("queued", "running")


def keep_sent(spec: Any, emit: Emit) -> None:
    """Write the job as sent beside its results, so Blender can attach to it after a server restart."""
    folder = Path(spec.output)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / SENT_FILE).write_text(json.dumps(spec.to_dict(), indent=1))
    except OSError as exc:
        emit(Notice(f"{folder} cannot be written ({exc.strerror}): this job cannot be resumed from Blender"))


def unfinished_jobs(server: ServerSettings, online_access: bool, shot: str) -> list[RenderRequest]:
    """The server's unfinished jobs of `shot` that this workstation sent, oldest first, as the requests
    that attach to them (a job sent again under its id attaches, or resumes, on the server)."""
    with open_client(server, online_access) as c:
        listed = c.jobs()
    found = []
    for status in listed:
        sent = Path(str(status.get("output", ""))) / SENT_FILE
        if status.get("state") not in UNFINISHED or not sent.is_file():
            continue
        spec = protocol.JobSpec.from_dict(json.loads(sent.read_text()))
        if spec.name == shot and spec.job_id == status.get("job_id"):
            found.append(RenderRequest(server, online_access, spec.op, spec.frames, dict(spec.inputs),
                                       dict(spec.params), spec.name, str(spec.output), spec.job_id, spec.seed,
                                       spec.colorspace))
    return found


def cancel_job(server: ServerSettings, online_access: bool, job_id: str) -> str:
    """Ask the server to cancel; its own socket, so it is safe while a `Worker` streams the job."""
    with open_client(server, online_access) as c:
        return str(c.cancel(job_id).get("state", ""))


def describe(exc: BaseException) -> str:
    """An exception as a sentence for a Blender report."""
    if isinstance(exc, (errors.KeyFileError, errors.AuthenticationFailed)):
        return f"{exc} (the key files are set in the cvgen add-on's preferences)"
    if isinstance(exc, protocol.ServerError):
        return f"cvgen server: {exc.args[0]} ({exc.code})"
    if isinstance(exc, (SetupError, protocol.CvgenError)):
        return str(exc)
    return f"unexpected {type(exc).__name__}: {exc}"


class Worker:
    """A task on a daemon thread; `poll()` hands its events to the UI thread, ending with `Finished`.

    The task gets an `emit` for its events and returns the result carried by `Finished.done`.
    """

    def __init__(self, task: Callable[[Emit], Any], name: str = "cvgen") -> None:
        self.task = task
        self.name = name
        self.events: queue.Queue[Any] = queue.Queue()

    def start(self) -> Worker:
        threading.Thread(target=self._run, name=self.name, daemon=True).start()
        return self

    def _run(self) -> None:
        try:
            result = self.task(self.events.put)
        except protocol.JobCancelled as exc:
            self.events.put(Finished(error=describe(exc), cancelled=True))
        except Exception as exc:  # everything reaches the artist as a report, nothing kills Blender
            self.events.put(Finished(error=describe(exc)))
        else:
            self.events.put(Finished(done=result))

    def poll(self) -> list[Any]:
        """The events since the last poll, in order."""
        out = []
        while True:
            try:
                out.append(self.events.get_nowait())
            except queue.Empty:
                return out


class JobWorker(Worker):
    """`run_job` on a worker thread, with a cancel that reaches the server once it has the job."""

    def __init__(self, request: RenderRequest) -> None:
        super().__init__(lambda emit: run_job(request, emit, lambda: self.cancel_requested), f"cvgen {request.job_id}")
        self.request = request
        self.accepted = False
        self.cancel_requested = False
        self._cancel_sent = False

    def poll(self) -> list[Any]:
        """Events since the last poll; sends a requested cancel once the server has accepted the job
        (before that, `run_job` sees the request and does not submit)."""
        out = super().poll()
        self.accepted = self.accepted or any(isinstance(e, client.Accepted) for e in out)
        if self.cancel_requested and self.accepted and not self._cancel_sent:
            self._cancel_sent = True
            try:
                cancel_job(self.request.server, self.request.online_access, self.request.job_id)
            except (SetupError, protocol.CvgenError) as exc:  # the stream itself will say what happened
                out.append(Notice(f"could not cancel the job: {describe(exc)}"))
        return out

    def cancel(self) -> None:
        """Cancel at the next poll: the server stops the job at its next step, and its stream
        ends with `Finished(cancelled=True)`."""
        self.cancel_requested = True
