"""Hostile input: property-based fuzzing of the message decoder, the limits check and the server's
request handler (bounded, for CI; fuzz/ has atheris harnesses for longer runs).

Properties:

* `decode(frames)` returns a `Message` or raises `ProtocolError`, whatever the frames: garbage,
  or valid messages with flipped bits, cut or missing frames, other header maps, and buffer
  descriptions with wrong pixel types or impossible shapes. A decoded buffer holds exactly its
  frame's bytes, so nothing sized by what a header claims is ever allocated.
* `Limits.check_message` and `Limits.from_dict` raise nothing but `ProtocolError`.
* A real server (in this process, on loopback) answers every request with exactly one first
  reply of the type that request expects, or an `error` with a stable code other than
  `internal` (which means an unhandled bug); jobs that a fuzzed `submit` gets accepted run (or
  are cancelled) to their end without an `internal` error either, with exactly one final
  reply; the serving thread never dies, and the server still answers `hello` at the end.
* A frame an accepted inline job delivers inline holds no byte the request did not send: it has
  the plate's data window and channels, its channels other than RGB are the plate's, and so is
  its RGB wherever the op keeps the plate (outside the matte), byte for byte. Fuzzed inline
  images carry header field names among their attributes (dataWindow, channels, compression,
  oiio:..., which once made OpenImageIO read past the pixels) and windows near the limits.

The server may read and write only under this module's temporary folder (its path policy says
so), so a fuzzed path or output folder cannot touch anything else. `--hypothesis-show-statistics`
reports how many inputs each test tried; CVGEN_FUZZ_SCALE=10 tries ten times as many, and
CVGEN_FUZZ_SHRINK=1 also shrinks a failing server example (slow: it replays real jobs).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import msgpack
import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from support import make_shot

from cvgen.protocol.errors import ERROR_CODES, ProtocolError
from cvgen.protocol.images import PIXEL_DTYPES, Image
from cvgen.protocol.limits import Limits
from cvgen.protocol.messages import (
    DELIMITER,
    REPLY_TYPES,
    REQUEST_TYPES,
    Message,
    decode,
    encode,
    image_from_wire,
    make_header,
)
from cvgen.server.paths import PathPolicy
from cvgen.server.service import Server

SCALE = max(1, int(os.environ.get("CVGEN_FUZZ_SCALE", "1")))
#: Shrinking a failing server example replays real jobs, for minutes; CVGEN_FUZZ_SHRINK=1 does it anyway.
SHRINK_SERVER = os.environ.get("CVGEN_FUZZ_SHRINK") == "1"
# Fuzzed pixels include Inf, NaN and huge values: numpy's overflow warnings from the ops are expected.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def fuzz_settings(examples: int, shrink: bool = True) -> settings:
    phases = [Phase.explicit, Phase.generate] + ([Phase.shrink, Phase.explain] if shrink else [])
    return settings(max_examples=examples * SCALE, deadline=None, database=None, print_blob=True, phases=phases,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


#: Codes an `error` reply may carry; `internal` is what an unhandled exception turns into.
STABLE_CODES = frozenset(ERROR_CODES) - {"internal"}
#: The reply a well-formed request of each type gets when it succeeds.
EXPECTED_REPLY = {"hello": "hello_reply", "submit": "accepted", "cancel": "cancel_reply",
                  "status": "status_reply", "jobs": "jobs_reply"}
REPLY_TIMEOUT_S = 5.0
#: A fuzzed job that is accepted runs for real (tiny frames; the first harmonize loads the tiny model).
JOB_TIMEOUT_S = 180.0

# -- values that msgpack can carry -----------------------------------------------------------------

INTS = st.one_of(st.integers(-3, 3), st.integers(-2**63, 2**64 - 1),
                 st.sampled_from([2**31 - 1, 2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, -2**63]))
SCALARS = st.one_of(st.none(), st.booleans(), INTS, st.floats(), st.text(max_size=12), st.binary(max_size=12),
                    st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=6)))
KEYS = st.one_of(st.text(max_size=8), st.binary(max_size=4))
#: JSON-like data as msgpack carries it: maps (str or bytes keys), lists, scalars.
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(KEYS, inner, max_size=4)), max_leaves=10)
MAPS = st.dictionaries(KEYS, VALUES, max_size=5)


def pack(value: Any) -> bytes:
    return msgpack.packb(value)


def as_bytes(frames: list[Any]) -> list[bytes]:
    return [bytes(f) for f in frames]


# -- messages, valid and damaged ---------------------------------------------------------------------

@st.composite
def pixel_arrays(draw: st.DrawFn, dtypes: st.SearchStrategy[str],
                 shapes: st.SearchStrategy[tuple[int, ...]]) -> np.ndarray:
    """Pixels of one value (in 0-2), or of random bits (NaN, Inf and huge values included)."""
    dtype, shape = np.dtype(draw(dtypes)), draw(shapes)
    if draw(st.booleans()):
        return np.full(shape, draw(st.floats(0, 2)), dtype)
    size = int(np.prod(shape)) * dtype.itemsize
    return np.frombuffer(draw(st.binary(min_size=size, max_size=size)), dtype).reshape(shape)


SMALL_ARRAYS = pixel_arrays(st.sampled_from(PIXEL_DTYPES),
                            st.one_of(st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 5)),
                                      hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=3)))

DTYPE_NAMES = st.one_of(
    st.sampled_from(PIXEL_DTYPES),
    st.sampled_from(["float64", "int8", "int64", "bool", "object", "O", "<f2", ">u2", "V8", "S3", "U1", "complex64",
                     "float96", "", "float16 ", "FLOAT16", "datetime64"]),
    st.text(max_size=10), VALUES,
)
ODD_DIMENSIONS = [float("inf"), float("-inf"), float("nan"), 2.5, -0.0, 1e300, "2", "0x10", b"3"]
DIMENSIONS = st.one_of(st.integers(-3, 8), INTS, st.floats(), st.sampled_from(ODD_DIMENSIONS), st.text(max_size=4),
                       st.none(), st.booleans())
SHAPES = st.one_of(
    st.lists(st.integers(0, 4), max_size=4),
    st.lists(DIMENSIONS, max_size=4),
    st.lists(st.just(1), min_size=60, max_size=70),  # more dimensions than numpy has
    st.lists(st.sampled_from([0, 1, 2**62, 2**63, 2**64 - 1, -1, -2**63, 10**12]), max_size=4),
    VALUES,
)
BUFFER_DESCS = st.one_of(st.fixed_dictionaries({"dtype": DTYPE_NAMES, "shape": SHAPES}),
                         st.fixed_dictionaries({}, optional={"dtype": DTYPE_NAMES, "shape": SHAPES, "x": VALUES}),
                         VALUES)
HEADER_KEYS = st.one_of(st.sampled_from(["version", "msg_type", "job_id", "buffers", "msg_id", "session", "time"]),
                        KEYS)
HEADER_VALUES = st.one_of(st.sampled_from(["1.0", "1", "2.0", "0.9", "", "1.0.0", "hello", "submit"]),
                          st.lists(BUFFER_DESCS, max_size=3), VALUES)


def _described_size(desc: Any) -> int:
    """Bytes a buffer description asks for, where that is a small number (else 0)."""
    try:
        count = 1
        for dim in desc["shape"]:
            count *= int(dim)
        size = count * np.dtype(str(desc["dtype"])).itemsize
    except Exception:
        return 0
    return size if 0 <= size <= 4096 else 0


@st.composite
def valid_messages(draw: st.DrawFn) -> list[bytes]:
    """Frames of a well-formed message, made by `encode`."""
    msg_type = draw(st.one_of(st.sampled_from(sorted(REQUEST_TYPES | REPLY_TYPES)), st.text(max_size=10)))
    job_id = draw(st.one_of(st.none(), st.text(max_size=12)))
    buffers = draw(st.lists(SMALL_ARRAYS, max_size=3))
    return as_bytes(encode(Message(msg_type, draw(MAPS), job_id, draw(MAPS), buffers)))


@st.composite
def damaged_messages(draw: st.DrawFn) -> list[bytes]:
    """A valid message after 0-4 mutations: bit flips, cuts, lost or extra frames, other header
    fields, other buffer descriptions, other maps."""
    frames = draw(valid_messages())
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["flip", "truncate", "drop", "duplicate", "insert", "swap", "header_field",
                                     "header", "describe_buffer", "describe_and_fit", "map", "append"]))
        if not frames:
            frames.append(draw(st.binary(max_size=16)))
            continue
        i = draw(st.integers(0, len(frames) - 1))
        if kind == "flip" and frames[i]:
            pos = draw(st.integers(0, len(frames[i]) - 1))
            raw = bytearray(frames[i])
            raw[pos] ^= 1 << draw(st.integers(0, 7))
            frames[i] = bytes(raw)
        elif kind == "truncate":
            frames[i] = frames[i][: draw(st.integers(0, max(len(frames[i]) - 1, 0)))]
        elif kind == "drop":
            del frames[i]
        elif kind == "duplicate":
            frames.insert(i, frames[i])
        elif kind == "insert":
            frames.insert(i, draw(st.one_of(st.binary(max_size=32), VALUES.map(pack))))
        elif kind == "swap":
            j = draw(st.integers(0, len(frames) - 1))
            frames[i], frames[j] = frames[j], frames[i]
        elif kind == "append":
            frames[i] = frames[i] + draw(st.binary(min_size=1, max_size=8))
        elif kind in ("header_field", "describe_buffer", "describe_and_fit") and len(frames) > 1:
            try:
                header = msgpack.unpackb(frames[1], raw=False)
            except Exception:
                continue
            if not isinstance(header, dict):
                continue
            if kind == "header_field":
                if draw(st.booleans()):
                    header[draw(HEADER_KEYS)] = draw(HEADER_VALUES)
                else:
                    header.pop(draw(HEADER_KEYS), None)
            else:
                descs = header.get("buffers")
                if not isinstance(descs, list) or not descs:
                    descs = header["buffers"] = draw(st.lists(BUFFER_DESCS, min_size=1, max_size=3))
                b = draw(st.integers(0, len(descs) - 1))
                descs[b] = draw(BUFFER_DESCS)
                if kind == "describe_and_fit" and 4 + b < len(frames):
                    # the frame gets the size the (odd) description asks for, so the check goes past the size
                    frames[4 + b] = bytes(_described_size(descs[b]))
            frames[1] = pack(header)
        elif kind == "header" and len(frames) > 1:
            frames[1] = pack(draw(st.one_of(VALUES, MAPS)))
        elif kind == "map":
            frames[min(i, 3)] = draw(st.one_of(VALUES.map(pack), st.binary(max_size=16)))
    return frames


@st.composite
def described_buffers(draw: st.DrawFn) -> list[bytes]:
    """A well-formed envelope whose header describes its buffers oddly: other pixel types, negative,
    huge, fractional, infinite or too many dimensions; each frame has the size the description asks
    for (where that is small) or a random one."""
    descs = draw(st.lists(st.fixed_dictionaries({"dtype": st.one_of(st.sampled_from(PIXEL_DTYPES), DTYPE_NAMES),
                                                 "shape": SHAPES}), min_size=1, max_size=3))
    raws = [bytes(_described_size(d)) if draw(st.booleans()) else draw(st.binary(max_size=32)) for d in descs]
    head = make_header(draw(st.sampled_from(sorted(REQUEST_TYPES))))
    head["buffers"] = descs
    return [DELIMITER, pack(head), pack({}), pack({}), *raws]


#: Anything at all: raw byte frames, frames after the delimiter, msgpack maps after it, damaged messages.
ANY_FRAMES = st.one_of(
    st.lists(st.binary(max_size=40), max_size=8),
    st.lists(st.binary(max_size=40), max_size=8).map(lambda fs: [DELIMITER, *fs]),
    st.lists(st.one_of(VALUES, MAPS).map(pack), max_size=6).map(lambda fs: [DELIMITER, *fs]),
    damaged_messages(),
    described_buffers(),
)


def check_decode(frames: list[bytes]) -> Message | None:
    """The decoder's contract: a Message whose buffers hold exactly their frames' bytes, or ProtocolError."""
    started = time.monotonic()
    try:
        msg = decode(frames)
    except ProtocolError:
        return None
    finally:
        assert time.monotonic() - started < 5, "decode took over 5 s"
    assert isinstance(msg, Message) and isinstance(msg.msg_type, str)
    assert msg.job_id is None or isinstance(msg.job_id, str)
    assert len(msg.buffers) == len(frames) - 4
    for array, frame in zip(msg.buffers, frames[4:]):
        assert isinstance(array, np.ndarray) and str(array.dtype) in PIXEL_DTYPES
        assert array.nbytes == len(frame)
    return msg


# -- the decoder and the limits ------------------------------------------------------------------------


@fuzz_settings(400)
@given(ANY_FRAMES)
def test_decode_answers_any_frames_with_a_message_or_a_protocol_error(frames):
    check_decode(frames)


@fuzz_settings(400)
@given(damaged_messages())
def test_decode_of_damaged_messages_raises_only_protocol_errors(frames):
    check_decode(frames)


@fuzz_settings(300)
@given(described_buffers())
def test_decode_of_odd_buffer_descriptions_raises_only_protocol_errors(frames):
    check_decode(frames)


@fuzz_settings(100)
@given(valid_messages())
def test_decode_reads_back_what_encode_wrote(frames):
    msg = check_decode(frames)
    assert msg is not None


LIMIT_VALUES = st.one_of(st.integers(1, 2**40), st.integers(-2, 0), st.floats(), st.booleans(), st.text(max_size=4),
                         st.none())


@fuzz_settings(200)
@given(st.dictionaries(st.sampled_from(list(Limits().to_dict())), st.integers(1, 2**40), max_size=6),
       st.one_of(st.lists(st.integers(-2**70, 2**70), max_size=12),
                 st.lists(st.integers(0, 2**35), max_size=12),
                 st.integers(0, 5000).map(lambda n: [1] * n)))
def test_limits_check_message_raises_only_protocol_errors(limits, sizes):
    try:
        Limits(**limits).check_message(sizes)
    except ProtocolError:
        pass


@fuzz_settings(200)
@given(st.one_of(VALUES, st.dictionaries(st.sampled_from(list(Limits().to_dict())), LIMIT_VALUES, max_size=6)))
def test_limits_from_a_hello_reply_raise_only_protocol_errors(data):
    try:
        limits = Limits.from_dict(data)
    except ProtocolError:
        return
    assert all(isinstance(v, int) and v >= 1 for v in limits.to_dict().values())


# -- the server ----------------------------------------------------------------------------------------


class ServerHarness:
    """A real Server in a thread of this process, restarted if a request kills it (so one bad input
    fails its own example, not every one after it)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.shot = make_shot(root / "shot", range(1, 3), size=(8, 8))
        self.context = zmq.Context()
        self.deaths = 0
        #: How the last exchange went, for `hypothesis.event` (shown by --hypothesis-show-statistics).
        self.outcome = ""
        self._start()

    def _start(self) -> None:
        self.server = Server(bind="tcp://127.0.0.1:*", jobs_dir=self.root / "jobs", devices=["cpu"],
                             paths=PathPolicy.roots([self.root], [self.root]))
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.server.serve, args=(self.stop,), name="cvgen-fuzz-server",
                                       daemon=True)
        self.thread.start()

    def revive(self) -> None:
        if not self.thread.is_alive():
            self.deaths += 1
            self._start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)
        self.context.term()

    def exchange(self, frames: list[bytes], cancel: bool = False) -> Message:
        """Send one request on a fresh socket; check its first reply, follow an accepted job to its
        end (cancelling it first if asked), then check nothing else came for it."""
        self.revive()
        try:
            request: Message | None = decode(frames, self.server.limits)  # as the server decodes requests
        except Exception:  # ProtocolError expected; anything else is the decoder tests' business
            request = None
        sock = self.context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.server.endpoint)
        try:
            sock.send_multipart(frames)
            first = self._receive(sock, REPLY_TIMEOUT_S)
            self._check_first(first, request)
            self.outcome = " ".join([first.msg_type, str(first.content.get("code", ""))]).strip()
            if first.msg_type == "accepted":
                assert request is not None
                self.outcome += " then " + self._follow_job(sock, request, first, cancel)
            self._check_no_more(sock)
            return first
        finally:
            sock.close()

    def _receive(self, sock: zmq.Socket, timeout: float) -> Message:
        deadline = time.monotonic() + timeout
        while not sock.poll(50):
            assert self.thread.is_alive(), "the server's serving thread died"
            assert time.monotonic() < deadline, f"no reply within {timeout:.0f} s"
        frames = sock.recv_multipart()
        reply = decode(frames)  # the server must always send well-formed messages
        assert reply.msg_type in REPLY_TYPES, f"unknown reply type {reply.msg_type!r}"
        if reply.msg_type == "error":
            code = reply.content.get("code")
            assert code in STABLE_CODES, f"error code {code!r}: {reply.content.get('message')}"
        return reply

    def _check_first(self, first: Message, request: Message | None) -> None:
        if request is None:
            assert first.msg_type == "error" and first.content["code"] == "bad_request", first
            return
        assert first.parent_id == request.msg_id, "the first reply answers another request"
        expected = EXPECTED_REPLY.get(request.msg_type)
        if expected is None:
            assert first.msg_type == "error" and first.content["code"] == "bad_request", first
        else:
            assert first.msg_type in (expected, "error"), f"{request.msg_type} answered by {first.msg_type}"

    def _follow_job(self, sock: zmq.Socket, request: Message, accepted: Message, cancel: bool) -> str:
        """The job's events up to its last one; returns how it ended."""
        job_id = accepted.content["job_id"]
        assert accepted.job_id == job_id
        output = Path(accepted.content["output"]).resolve()
        assert output == self.root or self.root in output.parents, f"job {job_id} writes to {output}"
        waiting = {request.msg_id}
        if cancel:
            frames = encode(Message("cancel", {"job_id": job_id}, job_id))
            cancel_id = msgpack.unpackb(frames[1])["msg_id"]
            sock.send_multipart(frames)
            waiting.add(cancel_id)
        deadline = time.monotonic() + JOB_TIMEOUT_S
        ended = ""
        while waiting:
            msg = self._receive(sock, max(deadline - time.monotonic(), 0.1))
            assert msg.parent_id in waiting, f"{msg.msg_type} for a request already answered"
            if msg.parent_id == request.msg_id:
                assert msg.job_id == job_id and msg.msg_type != "accepted"
                if msg.msg_type == "frame":
                    check_delivered_frame(request, msg)
                if msg.final:
                    ended = " ".join([msg.msg_type, str(msg.content.get("code", ""))]).strip()
            else:
                assert msg.msg_type in ("cancel_reply", "error")
            if msg.final:
                waiting.discard(msg.parent_id)
        return ended

    def _check_no_more(self, sock: zmq.Socket) -> None:
        """Replies come in order, so a reply to a status request sent now is the next message unless
        the server answered the fuzzed request more than once."""
        frames = encode(Message("status"))
        sentinel = msgpack.unpackb(frames[1])["msg_id"]
        sock.send_multipart(frames)
        reply = self._receive(sock, REPLY_TIMEOUT_S)
        assert reply.parent_id == sentinel, f"an extra {reply.msg_type} reply: {reply.content}"
        assert reply.msg_type == "status_reply"


def check_delivered_frame(request: Message, frame: Message) -> None:
    """A frame delivered inline for a job whose plate and fg were sent inline holds only the
    plate's bytes where the op keeps the plate: outside the matte (the fg's alpha, as the ops
    read it), and in every channel but RGB."""
    inline, job = request.content.get("inline"), request.content.get("job")
    if request.content.get("deliver") != "inline" or not isinstance(inline, dict) or not isinstance(job, dict):
        return
    number = frame.content["frame"]
    sent = {role: _sent_image(request, role, number) for role in ("plate", "fg")}
    plate, fg = sent["plate"], sent["fg"]
    if plate is None or fg is None:
        return  # an input read from a file
    out = image_from_wire(frame.content["image"], frame.buffers)
    assert (out.data_window, out.display, out.channels) == (plate.data_window, plate.display, plate.channels)
    assert out.pixels.dtype == plate.pixels.dtype and out.pixels.nbytes == plate.pixels.nbytes
    keep = np.ones((plate.height, plate.width), bool)
    params = job.get("params") if isinstance(job.get("params"), dict) else {}
    if "matte" in (job.get("inputs") or {}) or "matte" in inline:
        keep[:] = False  # a matte from elsewhere: only the other channels are known
    elif job.get("op") != "colormatch" and params.get("replace_background", True) is False:
        keep[:] = False  # harmonize renders the whole frame
    elif fg.has("A"):
        alpha = fg.in_window(plate.data_window).channel("A").astype(np.float32)
        keep = np.clip(np.nan_to_num(alpha, nan=0.0), 0.0, 1.0) == 0
    bits = {2: np.uint16, 4: np.uint32}[plate.pixels.dtype.itemsize]
    for name in plate.channels:
        where = keep if name in ("R", "G", "B") else np.ones_like(keep)
        got, want = out.channel(name)[where].view(bits), plate.channel(name)[where].view(bits)
        assert np.array_equal(got, want), (
            f"frame {number} channel {name}: {int(np.count_nonzero(got != want))} values the plate did not have")


def _sent_image(request: Message, role: str, number: int) -> Image | None:
    entries = request.content["inline"].get(role)
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, dict) and entry.get("frame") == number:
            return image_from_wire(entry.get("image"), request.buffers)
    return None


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHarness]:
    h = ServerHarness(tmp_path_factory.mktemp("fuzz-server").resolve())
    yield h
    h.close()
    assert not h.thread.is_alive(), "the server did not stop within 30 s"


def wire(msg_type: Any, content: Any, buffers: Sequence[tuple[Any, bytes]] = (), job_id: Any = None,
         header: dict[Any, Any] | None = None) -> list[bytes]:
    """Frames of a request, with buffers as (description, raw bytes) so any of them can lie."""
    head: dict[Any, Any] = make_header("", None)
    head.update(msg_type=msg_type, job_id=job_id, buffers=[desc for desc, _ in buffers], **(header or {}))
    return [DELIMITER, pack(head), pack({}), pack(content), *(raw for _, raw in buffers)]


def raw_buffer(array: np.ndarray) -> tuple[dict[str, Any], bytes]:
    return {"dtype": str(array.dtype), "shape": list(array.shape)}, array.tobytes()


@fuzz_settings(150, shrink=SHRINK_SERVER)
@given(st.one_of(ANY_FRAMES.filter(bool), described_buffers()))
def test_server_answers_garbage_frames_once_and_keeps_serving(harness, frames):
    harness.exchange(frames)
    event(harness.outcome)


STR_JOB_IDS = st.one_of(st.sampled_from(["fuzz-a", "fuzz-b", "../fuzz", "a/b", ".", "..", "x" * 65, "fuzz..x", "", " ",
                                         "-x", "fuzz\x00", "fuzz-a/../../x"]),
                        st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,8}", fullmatch=True), st.text(max_size=10))
JOB_IDS = st.one_of(st.none(), STR_JOB_IDS, VALUES)


@st.composite
def envelopes(draw: st.DrawFn) -> list[bytes]:
    """Well-formed envelopes of any type with random content (job ids where requests look for them)."""
    requests = st.sampled_from(sorted(REQUEST_TYPES))
    msg_type = draw(st.one_of(requests, requests, st.sampled_from(sorted(REPLY_TYPES)), st.text(max_size=10)))
    content = draw(MAPS)
    if draw(st.booleans()):
        content["job_id"] = draw(JOB_IDS)
    job_id = draw(st.one_of(st.none(), STR_JOB_IDS))
    buffers = [raw_buffer(a) for a in draw(st.lists(SMALL_ARRAYS, max_size=2))]
    return wire(msg_type, content, buffers, job_id)


@fuzz_settings(150, shrink=SHRINK_SERVER)
@given(envelopes())
def test_server_answers_any_request_type_and_content(harness, frames):
    harness.exchange(frames)
    event(harness.outcome)


# -- submit: jobs that are nearly valid ----------------------------------------------------------------

OPS = st.one_of(st.sampled_from(["colormatch", "harmonize", "sharpen", "", "COLORMATCH", "colormatch "]),
                st.text(max_size=10), VALUES)
FRAME_NUMBERS = st.one_of(st.integers(0, 3), INTS, st.floats(), st.text(max_size=4), st.none(), st.booleans())
FRAME_RANGES = st.one_of(
    st.tuples(st.integers(0, 3), st.integers(0, 3)).map(list),  # in the shot, outside it, reversed
    st.tuples(INTS, INTS).map(list),
    st.lists(FRAME_NUMBERS, max_size=3),
    VALUES,
)
PARAM_NAMES = st.one_of(
    st.sampled_from(["strength", "temporal", "radius", "contrast", "prompt", "negative_prompt", "model", "steps",
                     "guidance", "tau_b", "tau", "feather", "replace_background", "blur"]),
    KEYS,
)
PARAM_VALUES = st.one_of(st.floats(0, 1), st.sampled_from([0, 1, 2, -1, 0.0, 1e308, 2**64 - 1, "", "tiny", True]),
                         VALUES)
COLORSPACES = st.one_of(st.sampled_from(["Linear Rec.709 (sRGB)", "ACEScg", "lin_rec709_srgb", "ACEScct", "sRGB-ish",
                                         "", "Raw", "raw"]), st.text(max_size=12), VALUES)
SEEDS = st.one_of(INTS, st.booleans(), st.floats(), st.text(max_size=4), st.none())
NAMES = st.one_of(st.text(max_size=12), st.sampled_from(["a/b", "..", "x\\y", "nul\x00", "shot"]), VALUES)
ROLES = st.one_of(st.sampled_from(["plate", "fg", "matte"]), st.text(max_size=6), st.binary(max_size=4))
INLINE_FIELDS = ("channels", "origin", "display", "pixel_aspect", "attributes", "buffer")
COORDINATES = st.one_of(st.integers(-4, 10), INTS, st.floats(),
                        st.sampled_from([float("inf"), float("nan"), 2**31, -2**31 - 1, 2**40, "1", 1.5]),
                        st.integers(2**30 - 12, 2**30 + 2), st.integers(-(2**30) - 2, -(2**30) + 12),
                        st.integers(2**31 - 12, 2**31 - 1), st.sampled_from([2**20, 2**20 + 1, 8192]))
#: Header fields, OpenImageIO instructions and standard EXR attributes, as attribute names.
HEADER_NAMES = st.sampled_from([
    "dataWindow", "DataWindow", "displayWindow", "channels", "tiles", "compression", "Compression", "lineOrder",
    "chunkCount", "version", "type", "name", "maxSamplesPerPixel", "pixelAspectRatio", "PixelAspectRatio",
    "openexr:lineOrder", "openexr:levelmode", "oiio:ioproxy", "oiio:ColorSpace", "oiio:UnassociatedAlpha",
    "textureformat", "envmap", "preview", "thumbnail_width", "dataWindow\x00x", "smpte:TimeCode", "timeCode",
    "smpte:KeyCode", "FramesPerSecond", "chromaticities", "screenWindowWidth", "screenWindowCenter", "worldToCamera",
    "multiView", "DateTime", "XResolution", "YResolution", "ResolutionUnit", "tiff:Compression", "camera"])
WINDOW_LIKE = st.lists(st.one_of(st.integers(-4, 2048), st.integers(-(2**31), 2**31 - 1)), min_size=1, max_size=8)
ATTRIBUTE_VALUES = st.one_of(VALUES, WINDOW_LIKE, st.just([0, 0, 1023, 3]), st.just([0, 0, 10**6, 3]),
                             st.lists(st.floats(width=32), min_size=1, max_size=17), st.text(max_size=20),
                             st.lists(st.text(max_size=4), min_size=1, max_size=3))
ATTRIBUTE_MAPS = st.dictionaries(st.one_of(HEADER_NAMES, KEYS), ATTRIBUTE_VALUES, max_size=4)
IMAGE_FIELD_VALUES = {
    "channels": st.one_of(st.lists(st.sampled_from(["R", "G", "B", "A", "Y", "Z", ""]), max_size=6), VALUES),
    "origin": st.one_of(st.lists(COORDINATES, min_size=2, max_size=2), st.lists(COORDINATES, max_size=3), VALUES),
    "display": st.one_of(st.lists(COORDINATES, min_size=4, max_size=4), st.lists(COORDINATES, max_size=5), VALUES),
    "pixel_aspect": st.one_of(st.floats(), st.sampled_from([0, -1, 1, 2**64 - 1, "1.0", "inf", 1e-300, 1e-3, 1e3,
                                                             1000.0001, 0.00099999, 1.1]), VALUES),
    "attributes": st.one_of(MAPS, VALUES, ATTRIBUTE_MAPS, ATTRIBUTE_MAPS),
    "buffer": st.one_of(st.integers(-1, 4), INTS, VALUES),
}


@st.composite
def paths(draw: st.DrawFn, root: Path, shot: dict[str, str]) -> Any:
    folder = root / "shot"
    chosen = st.sampled_from([
        shot["plate"], shot["fg"], str(folder / "plate.%04d.exr"), str(folder / "fg.#.exr"),
        str(folder / "plate.####.exr.missing"), str(folder / ".." / "shot" / "plate.####.exr"),
        str(root / ".." / "plate.####.exr"), str(folder / "plate.%099999999999999999999d.exr"),
        str(folder) + "\x00/plate.####.exr", str(folder / "plate\x00.####.exr"), str(folder), str(folder / "####"),
        str(root / "jobs"), "plate.####.exr", "../../etc/passwd.####", "/etc/passwd.####", "/", "", "~/x.####.exr",
        "/dev/zero.####"])
    return draw(st.one_of(chosen, chosen, chosen, st.text(max_size=16).map(lambda s: f"{folder}/{s}"),
                          st.text(max_size=16), VALUES))


@st.composite
def submits(draw: st.DrawFn, root: Path, shot: dict[str, str]) -> list[bytes]:
    """A valid submit (colormatch or harmonize, frames from the shot's files or inline) after 0-4
    mutations of its job fields, inline entries, buffers and delivery."""
    op = draw(st.sampled_from(["colormatch", "colormatch", "harmonize"]))
    first = draw(st.integers(1, 2))
    frames = [first, draw(st.integers(first, 2))]
    job: dict[Any, Any] = {"op": op, "frames": frames}
    if op == "harmonize":
        job["params"] = {"steps": 2, "strength": 0.5}
    elif draw(st.booleans()):
        job["params"] = {"strength": draw(st.floats(0, 1)), "temporal": draw(st.floats(0, 4))}
    content: dict[Any, Any] = {"job": job, "deliver": draw(st.sampled_from(["path", "inline"]))}
    arrays: list[np.ndarray] = []
    if draw(st.booleans()):
        job["inputs"] = {"plate": shot["plate"], "fg": shot["fg"]}
    else:
        inline: dict[Any, Any] = {}
        for role in ("plate", "fg"):
            entries = []
            for frame in range(frames[0], frames[1] + 1):
                array = draw(pixel_arrays(st.sampled_from(["float16", "float32"]),
                                          st.tuples(st.integers(1, 4), st.integers(1, 4), st.just(4))))
                entries.append({"frame": frame, "image": {"channels": ["R", "G", "B", "A"], "buffer": len(arrays)}})
                arrays.append(array)
            inline[role] = entries
        content["inline"] = inline
    buffers = [raw_buffer(a) for a in arrays]
    header_job_id: str | None = None
    outputs = st.sampled_from([str(root / "out"), str(root / "out" / ".." / ".."), str(root / "shot"),
                               "/tmp/cvgen-fuzz-elsewhere", "relative/out", "", str(root / "o\x00")])
    fields = {
        "op": OPS, "frames": FRAME_RANGES, "inputs": st.one_of(st.dictionaries(ROLES, paths(root, shot), max_size=3),
                                                               VALUES),
        "params": st.one_of(st.dictionaries(PARAM_NAMES, PARAM_VALUES, max_size=3), VALUES),
        "colorspace": COLORSPACES, "seed": SEEDS, "name": NAMES, "job_id": JOB_IDS,
        "output": st.one_of(st.none(), outputs, outputs, st.text(max_size=8).map(lambda s: str(root / "out" / s)),
                            VALUES),
    }
    for _ in range(draw(st.integers(0, 4))):
        target = draw(st.sampled_from(["job_field", "job_field", "job_field", "param", "input", "drop_field",
                                       "extra_field", "job", "deliver", "inline", "inline_entry", "image_field",
                                       "buffer", "buffer_desc", "header_job_id"]))
        if target == "job_field":
            name = draw(st.sampled_from(sorted(fields)))
            job[name] = draw(fields[name])
        elif target == "param":
            params = job.setdefault("params", {})
            if isinstance(params, dict):
                params[draw(PARAM_NAMES)] = draw(PARAM_VALUES)
        elif target == "input":
            inputs = job.setdefault("inputs", {})
            if isinstance(inputs, dict):
                inputs[draw(ROLES)] = draw(paths(root, shot))
        elif target == "drop_field" and job:
            del job[draw(st.sampled_from(sorted(job, key=repr)))]
        elif target == "extra_field":
            job[draw(KEYS)] = draw(VALUES)
        elif target == "job":
            content["job"] = draw(VALUES)
        elif target == "deliver":
            content["deliver"] = draw(st.one_of(st.sampled_from(["path", "inline", "", "INLINE"]), VALUES))
        elif target == "inline":
            content["inline"] = draw(st.one_of(VALUES,
                                               st.dictionaries(ROLES, st.lists(VALUES, max_size=2), max_size=2)))
        elif target in ("inline_entry", "image_field") and isinstance(content.get("inline"), dict) \
                and content["inline"]:
            role = draw(st.sampled_from(sorted(content["inline"], key=repr)))
            entries = content["inline"][role]
            if not isinstance(entries, list) or not entries:
                continue
            i = draw(st.integers(0, len(entries) - 1))
            entry = entries[i]
            if target == "inline_entry":
                key = draw(st.sampled_from(["frame", "image", "other"]))
                if key == "frame":
                    value = draw(st.one_of(FRAME_NUMBERS, VALUES))
                else:
                    value = draw(VALUES)
                if isinstance(entry, dict):
                    entry[key] = value
                else:
                    entries[i] = value
            elif isinstance(entry, dict) and isinstance(entry.get("image"), dict):
                name = draw(st.sampled_from(INLINE_FIELDS))
                entry["image"][name] = draw(IMAGE_FIELD_VALUES[name])
        elif target == "buffer" and buffers:
            # other pixels: any pixel type, any shape (empty ones included), NaN and Inf values
            array = draw(pixel_arrays(st.sampled_from(PIXEL_DTYPES),
                                      hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4)))
            buffers[draw(st.integers(0, len(buffers) - 1))] = raw_buffer(array)
        elif target == "buffer_desc" and buffers:
            i = draw(st.integers(0, len(buffers) - 1))
            buffers[i] = (draw(BUFFER_DESCS), buffers[i][1])
        elif target == "header_job_id":
            header_job_id = draw(STR_JOB_IDS)
    return wire("submit", content, buffers, header_job_id)


@pytest.fixture(scope="module")
def submit_strategy(harness: ServerHarness) -> st.SearchStrategy[list[bytes]]:
    return submits(harness.root, harness.shot)


@fuzz_settings(200, shrink=SHRINK_SERVER)
@given(data=st.data(), cancel=st.booleans())
def test_server_handles_fuzzed_submits_without_internal_errors(harness, submit_strategy, data, cancel):
    frames = data.draw(submit_strategy, label="request")
    harness.exchange(frames, cancel=cancel)
    job = msgpack.unpackb(frames[3], raw=False, strict_map_key=False).get("job")
    op = job.get("op") if isinstance(job, dict) else None
    event(f"{op if op in ('colormatch', 'harmonize') else 'other op'}: {harness.outcome}")


#: Origins that are valid, near OpenEXR's coordinate limits (2**30 - 1), or beyond them.
ORIGINS = st.one_of(st.just([0, 0]), st.lists(st.integers(-8, 8), min_size=2, max_size=2),
                    st.lists(st.one_of(st.integers(2**30 - 12, 2**30 + 2), st.integers(-(2**30) - 2, -(2**30) + 12),
                                       st.integers(2**31 - 8, 2**31 - 1)), min_size=2, max_size=2))


@st.composite
def inline_image_submits(draw: st.DrawFn) -> list[bytes]:
    """colormatch on one frame, plate and fg sent inline and the result delivered inline, with
    fuzzed image fields: attributes named like header fields above all, windows near the
    limits, odd pixel aspects. Most are refused at submit; the rest must run and give back
    only the plate's bytes."""
    height, width = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    origin = draw(ORIGINS)
    inline: dict[str, Any] = {}
    arrays: list[np.ndarray] = []
    for role in ("plate", "fg"):
        array = draw(pixel_arrays(st.sampled_from(["float16", "float32"]), st.just((height, width, 4)))).copy()
        if role == "fg" and draw(st.booleans()):
            array[:, : (width + 1) // 2, 3] = 0  # some plate must show through
        image: dict[str, Any] = {"channels": ["R", "G", "B", "A"], "buffer": len(arrays), "origin": origin}
        for name in draw(st.sets(st.sampled_from(["origin", "display", "pixel_aspect"]), max_size=2)):
            image[name] = draw(IMAGE_FIELD_VALUES[name])
        if draw(st.integers(0, 3)):
            image["attributes"] = draw(ATTRIBUTE_MAPS)
        arrays.append(array)
        inline[role] = [{"frame": 1, "image": image}]
    content = {"job": {"op": "colormatch", "frames": [1, 1]}, "inline": inline, "deliver": "inline"}
    return wire("submit", content, [raw_buffer(a) for a in arrays])


@fuzz_settings(150, shrink=SHRINK_SERVER)
@given(inline_image_submits())
def test_server_gives_back_only_the_bytes_an_inline_plate_sent(harness, frames):
    harness.exchange(frames)
    event(harness.outcome)


def test_server_still_serves_after_the_fuzzing(harness):
    reply = harness.exchange(wire("hello", {}))
    assert reply.msg_type == "hello_reply" and reply.content["protocol_version"]
    assert harness.thread.is_alive()
