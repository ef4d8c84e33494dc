"""Coverage-guided fuzzing of the server's request handling, with atheris (see README.md).

    python fuzz/fuzz_handler.py -atheris_runs=100000
    CVGEN_FUZZ_RUN_JOBS=1 python fuzz/fuzz_handler.py -max_total_time=600

One `Server` lives in this process with its jobs folder and path policy inside a temporary folder
(so a fuzzed path can neither read nor write anything else); it never serves a socket. Each input
becomes one request's frames (raw, any envelope, or a nearly valid `submit`), handed to
`Server._on_request` as the ROUTER would hand them (at any alignment, as TCP delivers them), with
`Server.send` replaced by a recorder.

A crash is: an exception out of `_on_request` (it would end the server's serving loop), a request
answered other than exactly once, a reply that does not encode and decode again, an unexpected
reply type, or an `error` whose code is `internal` (an unhandled exception in a handler) or not
a stable code at all. With CVGEN_FUZZ_RUN_JOBS=1 accepted jobs also run, one after another, on
the server's own worker (slower), and their events are held to the same rules.
"""

from __future__ import annotations

import os
import queue
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import atheris
import numpy as np
import zmq

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# fuzz_decode instruments cvgen.protocol as it is imported
from fuzz_decode import INTERESTING, Values, buffer_desc, build_frames, keep_going, pack  # noqa: E402

with atheris.instrument_imports(include=["cvgen"]):
    import cvgen.server.core.models  # noqa: F401  (imported lazily by Server; instrumented here)
    import cvgen.server.jobs.runner  # noqa: F401
    import cvgen.server.ops.colormatch  # noqa: F401
    import cvgen.server.ops.harmonize  # noqa: F401
    from cvgen.protocol.errors import ERROR_CODES
    from cvgen.protocol.images import PIXEL_DTYPES, Image
    from cvgen.protocol.messages import DELIMITER, REPLY_TYPES, REQUEST_TYPES, Message, decode, encode, make_header
    from cvgen.server.io.exr import write_exr
    from cvgen.server.paths import PathPolicy
    from cvgen.server.service import Server

ROOT = Path(tempfile.mkdtemp(prefix="cvgen-fuzz-handler-")).resolve()
os.environ.setdefault("CVGEN_CACHE", str(ROOT / "cache"))  # the tiny model, if a harmonize job runs
RUN_JOBS = os.environ.get("CVGEN_FUZZ_RUN_JOBS") == "1"
STABLE_CODES = frozenset(ERROR_CODES) - {"internal"}
EXPECTED_REPLY = {"hello": "hello_reply", "submit": "accepted", "cancel": "cancel_reply",
                  "status": "status_reply", "jobs": "jobs_reply"}


def _make_shot(folder: Path) -> dict[str, str]:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for f in (1, 2):
        plate = np.dstack([rng.uniform(0.02, 0.5, (8, 8, 3)), np.ones((8, 8))]).astype(np.float16)
        fg = rng.uniform(0, 1, (8, 8, 4)).astype(np.float16)
        write_exr(folder / f"plate.{f:04d}.exr", Image(plate, ("R", "G", "B", "A")))
        write_exr(folder / f"fg.{f:04d}.exr", Image(fg, ("R", "G", "B", "A")))
    return {"plate": str(folder / "plate.####.exr"), "fg": str(folder / "fg.####.exr")}


SHOT = _make_shot(ROOT / "shot")
SERVER = Server(bind="tcp://127.0.0.1:*", jobs_dir=ROOT / "jobs", devices=["cpu"],
                paths=PathPolicy.roots([ROOT], [ROOT]))
SENT: list[tuple[bytes, Message]] = []


def _record(identity: bytes, msg: Message) -> None:
    """Stands in for Server.send: the reply must go on the wire and come back intact."""
    again = decode([bytes(f) for f in encode(msg)])
    if again.msg_type not in REPLY_TYPES:
        raise AssertionError(f"the server sent a {again.msg_type!r}")
    if again.msg_type == "error" and again.content.get("code") not in STABLE_CODES:
        raise AssertionError(f"error {again.content.get('code')!r}: {again.content.get('message')}")
    SENT.append((identity, again))


SERVER.send = _record  # type: ignore[method-assign]
PUSH = SERVER.context.socket(zmq.PUSH)
PUSH.connect(SERVER._events_endpoint)


def _admit_submits() -> None:
    """Do the intake thread's work here: store each submit handed to it, and let the transport
    hear the result (the reply to the submit comes from there)."""
    while True:
        try:
            item = SERVER.intake.pending.get_nowait()
        except queue.Empty:
            return
        assert item is not None
        SERVER.intake.admit_one(*item, PUSH)
        SERVER._on_event(SERVER.events.recv_multipart(copy=False))

PATHS: list[Any] = [
    SHOT["plate"], SHOT["fg"], str(ROOT / "shot" / "plate.%04d.exr"), str(ROOT / "shot" / "fg.#.exr"),
    str(ROOT / "shot" / "plate.####.exr.missing"), str(ROOT / "shot" / ".." / "shot" / "plate.####.exr"),
    str(ROOT / ".." / "plate.####.exr"), str(ROOT / "shot" / "plate.%099999999999999999999d.exr"),
    str(ROOT / "shot") + "\x00/plate.####.exr", str(ROOT / "shot"), str(ROOT / "shot" / "####"), str(ROOT / "jobs"),
    "plate.####.exr", "../../etc/passwd.####", "/etc/passwd.####", "/", "", "~/x.####.exr", "/dev/zero.####",
]
OUTPUTS: list[Any] = [None, str(ROOT / "out"), str(ROOT / "out" / ".." / ".."), str(ROOT / "shot"),
                      "/tmp/cvgen-fuzz-elsewhere", "relative/out", "", str(ROOT / "o\x00")]
JOB_IDS: list[Any] = [None, "fuzz-a", "fuzz-b", "../fuzz", "a/b", ".", "..", "x" * 65, "fuzz..x", "", "-x",
                      "fuzz\x00", "fuzz-a/../../x"]
OPS: list[Any] = ["colormatch", "harmonize", "sharpen", "", "COLORMATCH"]
PARAM_NAMES: list[Any] = ["strength", "temporal", "radius", "contrast", "prompt", "negative_prompt", "model", "steps",
                          "guidance", "tau_b", "tau", "feather", "replace_background", "blur", b"strength"]
COLORSPACES: list[Any] = ["Linear Rec.709 (sRGB)", "ACEScg", "lin_rec709_srgb", "ACEScct", "sRGB-ish", "", "Raw"]
ROLES: list[Any] = ["plate", "fg", "matte", "", "PLATE", b"plate"]
IMAGE_FIELDS: list[Any] = ["channels", "origin", "display", "pixel_aspect", "attributes", "buffer"]


def _pixels(v: Values, dtype: str, shape: tuple[int, ...]) -> tuple[dict[str, Any], bytes]:
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = v.fdp.ConsumeBytes(size)
    return {"dtype": dtype, "shape": list(shape)}, raw + bytes(size - len(raw))


def _field_value(v: Values, name: str) -> Any:
    fdp = v.fdp
    if fdp.ConsumeIntInRange(0, 3) == 0:
        return v.value()
    if name == "op":
        return v.pick(OPS)
    if name == "frames":
        return [v.pick([0, 1, 2, 3, *INTERESTING]) for _ in range(fdp.ConsumeIntInRange(0, 3))]
    if name == "inputs":
        return {v.pick(ROLES): v.pick(PATHS) if fdp.ConsumeBool() else v.text(24)
                for _ in range(fdp.ConsumeIntInRange(0, 3))}
    if name == "params":
        return {v.pick(PARAM_NAMES): v.pick(INTERESTING) if fdp.ConsumeBool() else fdp.ConsumeFloatInRange(0, 1)
                for _ in range(fdp.ConsumeIntInRange(0, 3))}
    if name == "colorspace":
        return v.pick(COLORSPACES)
    if name == "output":
        return v.pick(OUTPUTS)
    if name == "job_id":
        return v.pick(JOB_IDS)
    return v.pick(INTERESTING)


def submit_frames(v: Values) -> list[bytes]:
    """A valid submit (colormatch or harmonize, frames from files or inline) after 0-4 mutations."""
    fdp = v.fdp
    op = v.pick(["colormatch", "colormatch", "harmonize"])
    first = fdp.ConsumeIntInRange(1, 2)
    job: dict[Any, Any] = {"op": op, "frames": [first, fdp.ConsumeIntInRange(first, 2)]}
    if op == "harmonize":
        job["params"] = {"steps": 2, "strength": 0.5}
    content: dict[Any, Any] = {"job": job, "deliver": v.pick(["path", "inline"])}
    buffers: list[tuple[Any, bytes]] = []
    if fdp.ConsumeBool():
        job["inputs"] = dict(SHOT)
    else:
        inline: dict[Any, Any] = {}
        for role in ("plate", "fg"):
            inline[role] = []
            for frame in range(job["frames"][0], job["frames"][1] + 1):
                shape = (fdp.ConsumeIntInRange(1, 4), fdp.ConsumeIntInRange(1, 4), 4)
                buffers.append(_pixels(v, v.pick(["float16", "float32"]), shape))
                inline[role].append({"frame": frame, "image": {"channels": ["R", "G", "B", "A"],
                                                               "buffer": len(buffers) - 1}})
        content["inline"] = inline
    header_job_id = None
    for _ in range(fdp.ConsumeIntInRange(0, 4)):
        what = fdp.ConsumeIntInRange(0, 11)
        if what <= 2:
            name = v.pick(["op", "frames", "inputs", "params", "colorspace", "seed", "name", "output", "job_id"])
            job[name] = _field_value(v, name)
        elif what == 3 and job:
            job.pop(v.pick(sorted(job, key=repr)))
        elif what == 4:
            job[v.key()] = v.value()
        elif what == 5:
            content[v.pick(["job", "deliver", "inline"])] = v.value()
        elif what == 6 and isinstance(content.get("inline"), dict) and content["inline"]:
            entries = content["inline"][v.pick(sorted(content["inline"], key=repr))]
            if isinstance(entries, list) and entries:
                entry = entries[fdp.ConsumeIntInRange(0, len(entries) - 1)]
                if isinstance(entry, dict):
                    key = v.pick(["frame", "image", "frame", "other"])
                    entry[key] = v.pick(INTERESTING) if fdp.ConsumeBool() else v.value()
        elif what == 7 and isinstance(content.get("inline"), dict) and content["inline"]:
            entries = content["inline"][v.pick(sorted(content["inline"], key=repr))]
            if isinstance(entries, list) and entries and isinstance(entries[0], dict):
                image = entries[fdp.ConsumeIntInRange(0, len(entries) - 1)].get("image")
                if isinstance(image, dict):
                    image[v.pick(IMAGE_FIELDS)] = v.pick(INTERESTING) if fdp.ConsumeBool() else v.value()
        elif what == 8 and buffers:
            shape = tuple(fdp.ConsumeIntInRange(0, 4) for _ in range(fdp.ConsumeIntInRange(0, 4)))
            buffers[fdp.ConsumeIntInRange(0, len(buffers) - 1)] = _pixels(v, v.pick(PIXEL_DTYPES), shape)
        elif what == 9 and buffers:
            i = fdp.ConsumeIntInRange(0, len(buffers) - 1)
            buffers[i] = (buffer_desc(v), buffers[i][1])
        elif what == 10:
            header_job_id = v.pick(JOB_IDS) if fdp.ConsumeBool() else v.text(12)
        elif what == 11:
            job.setdefault("params", {})
            if isinstance(job["params"], dict):
                job["params"][v.pick(PARAM_NAMES)] = v.pick(INTERESTING)
    head = make_header("submit", header_job_id)
    head["buffers"] = [desc for desc, _ in buffers]
    return [DELIMITER, pack(head), pack({}), pack(content), *(raw for _, raw in buffers)]


def envelope_frames(v: Values) -> list[bytes]:
    msg_type = v.pick(sorted(REQUEST_TYPES | REPLY_TYPES)) if v.fdp.ConsumeBool() else v.text(10)
    content = v.map()
    if v.fdp.ConsumeBool():
        content["job_id"] = v.pick(JOB_IDS) if v.fdp.ConsumeBool() else v.value()
    head = make_header(msg_type, v.pick(JOB_IDS) if v.fdp.ConsumeBool() else None)
    head["buffers"] = []
    return [DELIMITER, pack(head), pack({}), pack(content)]


def _run_queued_jobs() -> None:
    worker = SERVER.workers[0]
    while True:
        try:
            job = SERVER.queue.get_nowait()
        except queue.Empty:
            return
        if job is None or not job.claim():
            continue
        worker._run(job, PUSH)
        finished = False
        while not finished:
            if not SERVER.events.poll(10_000):
                raise AssertionError(f"job {job.job_id} sent no final event")
            before = len(SENT)
            SERVER._on_event(SERVER.events.recv_multipart(copy=False))
            finished = any(m.final and m.job_id == job.job_id for _, m in SENT[before:])


def _forget_job(job_id: str) -> None:
    """Accepted jobs are not kept between inputs (nor their folders, which would pile up)."""
    while True:
        try:
            SERVER.queue.get_nowait()
        except queue.Empty:
            break
    SERVER.active.clear()
    SERVER.subscribers.clear()
    shutil.rmtree(ROOT / "jobs" / job_id, ignore_errors=True)


def _frame(data: bytes, offset: int) -> zmq.Frame:
    """A frame at any address, as ZeroMQ hands them over from TCP (frames of a batch back to back)."""
    return zmq.Frame(memoryview(bytes(offset) + data)[offset:], copy=False) if offset else zmq.Frame(data)


def TestOneInput(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    v = Values(fdp)
    offset = fdp.ConsumeIntInRange(0, 7)
    mode = fdp.ConsumeIntInRange(0, 3)
    frames = build_frames(fdp) if mode == 0 else envelope_frames(v) if mode == 1 else submit_frames(v)
    try:
        request: Message | None = decode(frames, SERVER.limits)  # as the server decodes requests
    except Exception:  # ProtocolError; anything else is fuzz_decode.py's business
        request = None
    SENT.clear()
    identity = b"\x00fuzz"
    SERVER._on_request([zmq.Frame(identity), *(_frame(f, offset) for f in frames)])
    _admit_submits()
    replies = [m for _, m in SENT]
    if len(replies) != 1:
        raise AssertionError(f"{len(replies)} replies: {[m.msg_type for m in replies]}")
    reply = replies[0]
    if request is None or request.msg_type not in EXPECTED_REPLY:
        if reply.msg_type != "error" or reply.content.get("code") != "bad_request":
            raise AssertionError(f"a bad request answered by {reply.msg_type} {reply.content}")
    else:
        if reply.parent_id != request.msg_id:
            raise AssertionError("the reply names another request as its parent")
        if reply.msg_type not in (EXPECTED_REPLY[request.msg_type], "error"):
            raise AssertionError(f"{request.msg_type} answered by {reply.msg_type}")
    if reply.msg_type == "accepted":
        try:
            output = Path(reply.content["output"]).resolve()
            if output != ROOT and ROOT not in output.parents:
                raise AssertionError(f"an accepted job writes to {output}, outside {ROOT}")
            if RUN_JOBS:
                _run_queued_jobs()
        finally:
            _forget_job(reply.content["job_id"])


def main() -> None:
    atheris.Setup(sys.argv, keep_going(TestOneInput))
    atheris.Fuzz()


if __name__ == "__main__":
    main()
