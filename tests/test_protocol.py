"""Wire format and client behaviour over real ZeroMQ sockets."""

from __future__ import annotations

import time

import msgpack
import numpy as np
import pytest
import zmq

from cvgen.protocol import Image, JobSpec, ProtocolError, ServerUnavailable, frame_path
from cvgen.protocol.client import Client
from cvgen.protocol.limits import Limits
from cvgen.protocol.messages import (DELIMITER, PROTOCOL_VERSION, Message, decode, encode, image_from_wire,
                                     image_to_wire)


@pytest.fixture
def pair():
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect(f"tcp://127.0.0.1:{port}")
    yield dealer, router
    dealer.close(0)
    router.close(0)
    ctx.term()


def hd_frame(seed: int = 0) -> Image:
    rng = np.random.default_rng(seed)
    pixels = rng.standard_normal((1080, 1920, 4)).astype(np.float16)
    pixels[0, 0] = [np.inf, -np.inf, np.nan, 65504]
    return Image(pixels, ("R", "G", "B", "A"), origin=(10, -4), display=(0, 0, 1920, 1080),
                 pixel_aspect=2.0, attributes={"camera": "A001", "fps": 24.0})


def test_hd_half_frames_round_trip_over_a_socket(pair):
    dealer, router = pair
    frames = [hd_frame(i) for i in range(3)]
    buffers: list = []
    content = {"frames": [image_to_wire(f, buffers) for f in frames]}
    dealer.send_multipart(encode(Message("submit", content, buffers=buffers)), copy=False)
    received = router.recv_multipart(copy=False)
    msg = decode(received[1:])
    assert msg.msg_type == "submit"
    for sent, desc in zip(frames, msg.content["frames"]):
        got = image_from_wire(desc, msg.buffers)
        assert got.pixels.dtype == np.float16 and got.pixels.shape == (1080, 1920, 4)
        assert np.array_equal(got.pixels.view(np.uint16), sent.pixels.view(np.uint16))
        assert got.channels == sent.channels and got.origin == (10, -4)
        assert got.display == (0, 0, 1920, 1080) and got.pixel_aspect == 2.0
        assert got.attributes == {"camera": "A001", "fps": 24.0}


def test_pixels_are_not_copied_on_receive(pair):
    dealer, router = pair
    frame = hd_frame()
    dealer.send_multipart(encode(Message("frame", {}, buffers=[frame.pixels])), copy=False)
    raw = router.recv_multipart(copy=False)
    msg = decode(raw[1:])
    assert np.shares_memory(msg.buffers[0], np.frombuffer(raw[-1].buffer, np.uint8))


def test_replies_carry_the_request_header_as_parent():
    request = decode(encode(Message("hello")))
    from cvgen.protocol.messages import reply

    answer = decode(encode(reply(request, "hello_reply", {"x": 1})))
    assert answer.parent_id == request.msg_id and answer.final
    assert answer.header["version"] == PROTOCOL_VERSION and answer.header["msg_id"] != request.msg_id


@pytest.mark.parametrize("frames, complaint", [
    ([b"hello"], "at least 4 frames"),
    ([b"nope", b"", b"", b""], "delimiter"),
    ([DELIMITER, b"\xc1", msgpack.packb({}), msgpack.packb({})], "not valid msgpack"),
    ([DELIMITER, msgpack.packb([1]), msgpack.packb({}), msgpack.packb({})], "must be a map"),
    ([DELIMITER, msgpack.packb({"version": "2.0", "msg_type": "hello"}), msgpack.packb({}), msgpack.packb({})],
     "version 2.0 is not supported"),
    ([DELIMITER, msgpack.packb({"version": "1.0", "msg_type": "x", "buffers": [{"dtype": "float16", "shape": [2, 2]}]}),
      msgpack.packb({}), msgpack.packb({}), b"123"], "holds 3 bytes"),
    ([DELIMITER, msgpack.packb({"version": "1.0", "msg_type": "x", "buffers": [{"dtype": "object", "shape": [1]}]}),
      msgpack.packb({}), msgpack.packb({}), b"1"], "pixel type"),
    ([DELIMITER, msgpack.packb({"version": "1.0", "msg_type": "x", "buffers": []}),
      msgpack.packb({}), msgpack.packb({}), b"1"], "describes 0 buffers but 1 arrived"),
])
def test_malformed_messages_are_refused_with_a_reason(frames, complaint):
    with pytest.raises(ProtocolError, match=complaint):
        decode(frames)


def test_unknown_fields_are_ignored():
    msg = Message("hello", {"future_field": [1, 2]})
    frames = encode(msg)
    header = msgpack.unpackb(frames[1])
    header["added_in_v1_9"] = "x"
    frames[1] = msgpack.packb(header)
    assert decode(frames).content == {"future_field": [1, 2]}


def nested(levels: int) -> list:
    value: list = []
    for _ in range(levels - 1):
        value = [value]
    return value


def with_content(content: bytes, buffers: int = 0) -> list:
    """A message whose content map is `content` (packed), with `buffers` one-byte uint8 buffers."""
    frames = encode(Message("status", buffers=[np.zeros(1, np.uint8)] * buffers))
    return [*frames[:3], content, *frames[4:]]


LIMITS = Limits()


@pytest.mark.parametrize("content, complaint", [
    ({"m": {str(i): 0 for i in range(LIMITS.max_map_entries + 1)}}, "max_map_entries = 1024"),
    ({"a": [0] * (LIMITS.max_map_entries + 1)}, "max_map_entries = 1024"),
    ({str(i): [0] * 1000 for i in range(5)}, "max_map_items = 4096"),
    ({"deep": nested(LIMITS.max_map_depth)}, "max_map_depth = 32"),
    ({"x": msgpack.ExtType(1, b"")}, "extension type 1"),
])
def test_decoding_within_limits_refuses_costly_maps_naming_the_limit(content, complaint):
    frames = with_content(msgpack.packb(content))
    decode(frames)  # a message from our own side is decoded as it comes
    with pytest.raises(ProtocolError, match=complaint):
        decode(frames, LIMITS)


def test_nesting_past_msgpacks_own_stack_is_refused_naming_the_depth_limit():
    with pytest.raises(ProtocolError, match="max_map_depth"):
        decode(with_content(b"\x81\xa1x" + b"\x91" * 1100 + b"\x90"), LIMITS)


def test_the_limits_at_their_edge_are_accepted():
    edge = {"deep": nested(LIMITS.max_map_depth - 1), "a": [0] * LIMITS.max_map_entries,
            **{str(i): [0] * 1000 for i in range(3)}}
    assert decode(with_content(msgpack.packb(edge)), LIMITS).content == edge
    stamp = msgpack.packb({"t": msgpack.Timestamp(5, 0)}, datetime=False)
    assert decode(with_content(stamp), LIMITS).content == {"t": 5.0}


def test_a_message_with_many_buffers_may_describe_each_of_them():
    """An inline frame list has an entry per buffer, and each entry describes its image."""
    count = LIMITS.max_map_entries * 2
    described = hd_frame().describe()
    entries = [{"frame": i, "image": {**described, "buffer": i}} for i in range(count)]
    frames = with_content(msgpack.packb({"inline": {"plate": entries}}), buffers=count)
    assert len(decode(frames, LIMITS).content["inline"]["plate"]) == count
    with pytest.raises(ProtocolError, match="max_map_items_per_buffer = 128 for each of its 1 pixel buffers"):
        decode(with_content(msgpack.packb({"inline": {"plate": entries[:1000]}}), buffers=1), LIMITS)


def test_job_spec_checks_and_paths():
    spec = JobSpec.from_dict({"op": "colormatch", "frames": [1001, 1010], "inputs": {"plate": "p.####.exr"},
                              "someday": True})
    assert spec.frame_numbers == range(1001, 1011)
    assert JobSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ProtocolError, match="empty"):
        JobSpec("colormatch", (10, 1))
    with pytest.raises(ProtocolError, match="job id"):
        JobSpec("colormatch", (1, 1), job_id="../etc")
    with pytest.raises(ProtocolError, match="missing op"):
        JobSpec.from_dict({"frames": [1, 2]})
    assert frame_path("/s/plate.####.exr", 1001) == "/s/plate.1001.exr"
    assert frame_path("/s/plate.%04d.exr", 7) == "/s/plate.0007.exr"
    assert frame_path("/s/plate.#.exr", 1001) == "/s/plate.1001.exr"
    with pytest.raises(ProtocolError, match="placeholder"):
        frame_path("/s/plate.exr", 1)


def test_image_checks_its_shape_and_names():
    with pytest.raises(ProtocolError, match="2 names"):
        Image(np.zeros((2, 2, 3), np.float32), ("R", "G"))
    with pytest.raises(ProtocolError, match="pixel type"):
        Image(np.zeros((2, 2, 1), np.float64), ("Y",))
    img = Image(np.zeros((2, 2, 1), np.float32), ("Y",))
    with pytest.raises(ProtocolError, match="channel 'A' not found; the image has Y"):
        img.channel("A")


def test_image_in_window_crops_and_pads():
    img = Image(np.arange(12, dtype=np.float32).reshape(3, 4, 1), ("Y",), origin=(2, 1))
    moved = img.in_window((0, 0, 5, 3))
    assert moved.origin == (0, 0) and moved.pixels.shape == (3, 5, 1)
    assert moved.pixels[1, 2, 0] == 0 and moved.pixels[2, 4, 0] == 6 and moved.pixels[0, 0, 0] == 0


def test_dead_server_gives_a_clear_error_quickly():
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    sock.close(0)
    started = time.monotonic()
    with Client(f"tcp://127.0.0.1:{port}", timeout=0.5, context=ctx) as client:
        with pytest.raises(ServerUnavailable, match="is `cvgen serve` running"):
            client.hello()
    assert time.monotonic() - started < 3
    ctx.term()
