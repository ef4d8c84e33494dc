"""Inline images against a real server: a request shapes pixels and metadata, never file layout.

An inline image's fields and attributes end up in OpenImageIO's EXR writer (inline inputs are
staged as EXR files and read back), native code that trusts what it is given. A `dataWindow`
attribute larger than the pixels once made it read past the buffer: a SIGSEGV for a huge
window, and for a modest one the memory after the buffer written into the staged plate and
sent back with `deliver: inline`. Such requests are now refused at submit, with a sentence
naming the field or attribute; what is accepted runs, and the frame that comes back equals the
plate outside the matte, byte for byte.

Requests are built as raw frames (not through `Image`), so they can carry what a well-behaved
client would refuse to build.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import zmq
from support import ServerProcess

from cvgen.protocol.errors import ProtocolError
from cvgen.protocol.images import MAX_ATTRIBUTES, Image, attribute_problem, check_attributes
from cvgen.protocol.jobs import JobSpec
from cvgen.protocol.messages import Message, decode, encode, image_from_wire, make_header

REPLY_TIMEOUT_S = 60.0


@dataclass
class Outcome:
    """How the server answered one submit: every reply to it, in order."""

    replies: list[Message] = field(default_factory=list)

    @property
    def accepted(self) -> bool:
        return any(r.msg_type == "accepted" for r in self.replies)

    @property
    def last(self) -> Message:
        return self.replies[-1]

    def frame(self) -> Image:
        frames = [r for r in self.replies if r.msg_type == "frame"]
        assert len(frames) == 1, [r.msg_type for r in self.replies]
        return image_from_wire(frames[0].content["image"], frames[0].buffers)


class LiveServer:
    """One `cvgen serve` for the module, started again if a request killed it (so one crash
    fails its own test, not every test after it)."""

    def __init__(self, jobs_dir: Path) -> None:
        self.jobs_dir = jobs_dir
        self.context = zmq.Context()
        self.process = ServerProcess(jobs_dir).start()

    def alive(self) -> bool:
        return self.process.proc is not None and self.process.proc.poll() is None

    def revive(self) -> None:
        if not self.alive():
            self.process = ServerProcess(self.jobs_dir).start()

    def submit(self, images: dict[str, tuple[dict[str, Any], np.ndarray]], frames: tuple[int, int] = (1, 1)) -> Outcome:
        """Submit colormatch with each role's (description, pixels) inline, for one frame, and
        collect every reply up to the final one."""
        self.revive()
        buffers = [pixels for _, pixels in images.values()]
        inline = {role: [{"frame": frames[0], "image": {**desc, "buffer": i}}]
                  for i, (role, (desc, _)) in enumerate(images.items())}
        header = make_header("submit")
        content = {"job": JobSpec("colormatch", frames).to_dict(), "inline": inline, "deliver": "inline"}
        outcome = Outcome()
        sock = self.context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.process.endpoint)
        try:
            sock.send_multipart(encode(Message("submit", content, buffers=buffers, header=header)))
            deadline = time.monotonic() + REPLY_TIMEOUT_S
            while not (outcome.replies and outcome.last.final):
                while not sock.poll(50):
                    assert self.alive(), f"the server died (exit status {self.process.proc.poll()})"
                    assert time.monotonic() < deadline, f"no final reply within {REPLY_TIMEOUT_S:.0f} s"
                reply = decode(sock.recv_multipart())
                # a request refused before its header could be read is answered without a parent
                assert reply.parent_id == header["msg_id"] or (reply.msg_type == "error" and not reply.parent_id)
                outcome.replies.append(reply)
        finally:
            sock.close()
        return outcome

    def hello(self) -> Message:
        sock = self.context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.process.endpoint)
        try:
            sock.send_multipart(encode(Message("hello")))
            assert sock.poll(10_000), "no answer to hello"
            return decode(sock.recv_multipart())
        finally:
            sock.close()

    def close(self) -> None:
        if self.alive():
            self.process.stop()
        self.context.term()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = LiveServer(tmp_path_factory.mktemp("image-safety") / "jobs")
    yield server
    server.close()


def layers(height: int = 8, width: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """A plate of random half values and a foreground whose alpha covers a box in the middle
    (zero elsewhere), so most of the result must be the plate, bit for bit."""
    rng = np.random.default_rng(height * 100_003 + width)
    plate = rng.uniform(0.05, 0.9, (height, width, 3)).astype(np.float16)
    alpha = np.zeros((height, width, 1), np.float16)
    alpha[height // 4 : max(3 * height // 4, height // 4 + 1), width // 4 : max(3 * width // 4, width // 4 + 1)] = 1
    fg = np.concatenate([rng.uniform(0.5, 2.0, (height, width, 3)).astype(np.float16) * alpha, alpha], axis=2)
    return plate, fg


def rgb(**fields: Any) -> dict[str, Any]:
    return {"channels": ["R", "G", "B"], **fields}


def rgba(**fields: Any) -> dict[str, Any]:
    return {"channels": ["R", "G", "B", "A"], **fields}


def assert_plate_kept_outside_the_matte(out: Image, plate: np.ndarray, fg: np.ndarray,
                                        origin: tuple[int, int] = (0, 0)) -> None:
    """The returned frame has the plate's window and channels, and outside the matte its bytes
    are the plate's: no byte the client did not send."""
    returned = out.pixels.nbytes
    assert out.data_window == (*origin, plate.shape[1], plate.shape[0]), (
        f"a plate of {plate.nbytes:,} bytes came back as {out.data_window}: {returned:,} bytes, "
        f"{np.count_nonzero(out.pixels.view(np.uint8)):,} of them non-zero")
    outside = fg[..., 3] == 0
    assert outside.any()
    for index, name in enumerate("RGB"):
        sent = plate[..., index][outside].view(np.uint16)
        got = out.channel(name).astype(np.float16)[outside].view(np.uint16)
        changed = int(np.count_nonzero(sent != got))
        assert changed == 0, f"{changed} of {sent.size} {name} values outside the matte are not the plate's"


def assert_refused_at_submit(live: LiveServer, outcome: Outcome, *words: str) -> None:
    first = outcome.replies[0]
    assert first.msg_type == "error" and not outcome.accepted, (
        f"accepted; then {[r.msg_type for r in outcome.replies]} {outcome.last.content}")
    assert first.content["code"] == "bad_request", first.content
    for word in words:
        assert word in first.content["message"], first.content["message"]
    assert live.hello().msg_type == "hello_reply"


# -- header fields among the attributes ----------------------------------------------------------

STRUCTURAL = [
    ("dataWindow", [0, 0, 1023, 7]),  # wider than the pixels: the memory after them, sent back
    ("dataWindow", [0, 0, 1_000_000, 7]),  # far wider: a SIGSEGV that ended the server
    ("DataWindow", [0, 0, 1023, 7]),
    ("displayWindow", [0, 0, 3, 3]),
    ("channels", "R,G"),
    ("tiles", [16, 16]),
    ("compression", "b44"),
    ("Compression", "none"),
    ("lineOrder", 2),
    ("chunkCount", 5),
    ("version", 99),
    ("type", "deepscanline"),
    ("name", "left"),
    ("maxSamplesPerPixel", 4),
    ("pixelAspectRatio", 2.0),
    ("PixelAspectRatio", 2.0),
    ("openexr:lineOrder", "decreasingY"),
    ("openexr:roundingmode", 1),
    ("oiio:ioproxy", 1),
    ("OIIO:ColorSpace", "sRGB"),
    ("oiio:UnassociatedAlpha", 1),
    ("textureformat", "Plain Texture"),
    ("envmap", 1),
    ("preview", [1, 1]),
    ("thumbnail_width", 4),
    ("dataWindow\x00x", [0, 0, 1023, 7]),  # a NUL would cut the name down to dataWindow
]


@pytest.mark.parametrize("name, value", STRUCTURAL, ids=[repr(n) for n, _ in STRUCTURAL])
def test_header_fields_among_the_attributes_are_refused_at_submit(live, name, value):
    plate, fg = layers()
    outcome = live.submit({"plate": (rgb(attributes={name: value}), plate), "fg": (rgba(), fg)})
    if outcome.accepted and outcome.last.msg_type == "done":
        assert_plate_kept_outside_the_matte(outcome.frame(), plate, fg)
    assert_refused_at_submit(live, outcome, repr(name)[:40])


# -- accepted at submit, then `internal` -----------------------------------------------------------

OVER_31 = 2**31 - 4
REFUSED = [
    ("version=99", rgb(attributes={"version": 99}), ["'version'"]),
    ("map with text and bytes keys", rgb(attributes={"grade": {"lift": 0.1, b"gamma": 1.0}}), ["'grade'", "map"]),
    ("map", rgb(attributes={"grade": {"lift": 0.1}}), ["'grade'", "JSON"]),
    ("origin near 2**31", rgb(origin=[OVER_31, 0]), ["data window"]),
    ("origin + width past 2**30", rgb(origin=[2**30 - 4, 0]), ["data window"]),
    ("negative origin near -2**31", rgb(origin=[0, -(2**31)]), ["data window"]),
    ("display near 2**31", rgb(display=[OVER_31, 0, 8, 8]), ["display window"]),
    ("display wider than OpenImageIO reads", rgb(display=[0, 0, 2**20 + 1, 8]), ["display window"]),
    ("empty display", rgb(display=[0, 0, 0, 8]), ["display window"]),
    ("fractional origin", rgb(origin=[1.5, 0]), ["origin"]),
    ("pixel aspect 1e-300", rgb(pixel_aspect=1e-300), ["pixel aspect"]),
    ("pixel aspect 1e300", rgb(pixel_aspect=1e300), ["pixel aspect"]),
    ("pixel aspect NaN", rgb(pixel_aspect=float("nan")), ["pixel aspect"]),
    ("pixel aspect as text", rgb(pixel_aspect="2"), ["pixel aspect"]),
    ("attribute beyond 32 bits", rgb(attributes={"frame": 2**40}), ["'frame'", "32 bits"]),
    ("FramesPerSecond beyond 32 bits", rgb(attributes={"FramesPerSecond": [2**40, 1]}), ["'FramesPerSecond'"]),
    ("timecode of text", rgb(attributes={"smpte:TimeCode": ["a", "b"]}), ["'smpte:TimeCode'"]),
    ("chromaticities of 3", rgb(attributes={"chromaticities": [1.0, 2.0, 3.0]}), ["'chromaticities'"]),
    ("negative screen window", rgb(attributes={"screenWindowWidth": -1.0}), ["'screenWindowWidth'"]),
    ("NUL in text", rgb(attributes={"note": "a\x00b"}), ["'note'", "NUL"]),
    ("empty name", rgb(attributes={"": 1}), ["''"]),
    ("long name", rgb(attributes={"n" * 300: 1}), ["300 bytes"]),
    ("long text", rgb(attributes={"note": "x" * 70_000}), ["'note'", "70,000 bytes"]),
    ("long list", rgb(attributes={"curve": [0.5] * 300}), ["'curve'", "300 items"]),
    ("too many", rgb(attributes={f"a{i}": i for i in range(MAX_ATTRIBUTES + 1)}), [f"{MAX_ATTRIBUTES + 1} attributes"]),
    ("too many bytes", rgb(attributes={f"a{i}": "x" * 60_000 for i in range(20)}), ["bytes"]),
    ("nested list", rgb(attributes={"lut": [[1, 2], [3, 4]]}), ["'lut'"]),
    ("mixed list", rgb(attributes={"mix": [1, "a"]}), ["'mix'"]),
    ("empty list", rgb(attributes={"none": []}), ["'none'"]),
    ("null", rgb(attributes={"none": None}), ["'none'"]),
    ("bytes", rgb(attributes={"blob": b"\x00\x01"}), ["'blob'"]),
    ("attributes not a map", rgb(attributes=[["a", 1]]), ["attributes"]),
    ("channel name with NUL", {"channels": ["R", "G\x00x", "B"]}, ["channel name"]),
    ("empty channel name", {"channels": ["R", "", "B"]}, ["channel name"]),
    ("channel names not text", {"channels": ["R", 1, "B"]}, ["channels"]),
]


@pytest.mark.parametrize("desc, words", [(d, w) for _, d, w in REFUSED], ids=[i for i, _, _ in REFUSED])
def test_fields_the_writer_cannot_honour_are_refused_at_submit(live, desc, words):
    plate, fg = layers()
    outcome = live.submit({"plate": (desc, plate), "fg": (rgba(), fg)})
    assert_refused_at_submit(live, outcome, *words)


# -- what is accepted runs, and gives back only the plate's bytes ------------------------------------

@pytest.mark.parametrize("height, width", [(8, 8192), (8192, 8), (1, 300), (3, 2)])
def test_strips_and_tiny_frames_run(live, height, width):
    """An 8x8192 strip was accepted and then failed with `internal`: colormatch samples its
    statistics from the middle of each step x step block, which lay beyond a strip's short side
    and left no sample at all."""
    plate, fg = layers(height, width)
    outcome = live.submit({"plate": (rgb(), plate), "fg": (rgba(), fg)})
    assert outcome.last.msg_type == "done", outcome.last.content
    assert_plate_kept_outside_the_matte(outcome.frame(), plate, fg)


def test_windows_pixel_aspect_and_metadata_come_back(live):
    plate, fg = layers()
    attributes = {"camera": "A001", "lens": 35.0, "take": 3, "notes": ["a", "b"], "smpte:TimeCode": [16909060, 0],
                  "chromaticities": [0.64, 0.33, 0.3, 0.6, 0.15, 0.06, 0.3127, 0.329], "worldToCamera": [1.0] * 16,
                  "screenWindowCenter": [0.5, -0.5], "FramesPerSecond": [24000, 1001], "cvgen:note": "kept"}
    desc = rgb(origin=[-(2**30) + 2, 2**30 - 20], display=[0, 0, 2**20, 2**20], pixel_aspect=2.0,
               attributes=attributes)
    outcome = live.submit({"plate": (desc, plate), "fg": (rgba(origin=desc["origin"]), fg)})
    assert outcome.last.msg_type == "done", outcome.last.content
    out = outcome.frame()
    assert_plate_kept_outside_the_matte(out, plate, fg, tuple(desc["origin"]))
    assert (out.display, out.pixel_aspect) == ((0, 0, 2**20, 2**20), 2.0)
    for name, value in attributes.items():
        assert out.attributes[name] == pytest.approx(value), name
    assert out.attributes["cvgen:op"] == "colormatch"


def test_pixel_aspect_is_kept_as_a_32_bit_float(live):
    plate, fg = layers()
    outcome = live.submit({"plate": (rgb(pixel_aspect=1.1), plate), "fg": (rgba(pixel_aspect=1.1), fg)})
    assert outcome.last.msg_type == "done", outcome.last.content
    assert outcome.frame().pixel_aspect == float(np.float32(1.1))


# -- the rules, without a server ----------------------------------------------------------------------

def test_attribute_rules_name_the_problem():
    assert attribute_problem("camera", "A001") is None
    assert attribute_problem("lens", 35.0) is None
    assert attribute_problem("flag", True) is None
    assert attribute_problem("smpte:TimeCode", [2**32 - 1, 0]) is None  # unsigned in EXR
    assert "header" in attribute_problem("DISPLAYWINDOW", [0, 0, 1, 1])
    assert "header" in attribute_problem("Openexr:LineOrder", "decreasingY")
    assert "32 bits" in attribute_problem("big", -(2**31) - 1)
    with pytest.raises(ProtocolError, match="image attribute 'dataWindow' names a field of the EXR header"):
        check_attributes({"camera": "A001", "dataWindow": [0, 0, 1023, 7]})


def test_images_hold_only_what_an_exr_can_hold():
    pixels = np.zeros((2, 2, 3), np.float16)
    with pytest.raises(ProtocolError, match="outside 0.001..1000"):
        Image(pixels, ("R", "G", "B"), pixel_aspect=1e-300)
    with pytest.raises(ProtocolError, match="data window"):
        Image(pixels, ("R", "G", "B"), origin=(2**31 - 1, 0))
    with pytest.raises(ProtocolError, match="hold no pixels"):
        Image(np.zeros((0, 2, 3), np.float16), ("R", "G", "B"))
    with pytest.raises(ProtocolError, match="1025 channels"):  # a request that large stops at decoding
        Image(np.zeros((1, 1, 1025), np.float16), tuple(f"c{i}" for i in range(1025)))
    edge = Image(pixels, ("R", "G", "B"), origin=(2**30 - 4, -(2**30) + 2), pixel_aspect=1.1)
    assert edge.pixel_aspect == float(np.float32(1.1))
