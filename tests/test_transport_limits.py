"""Work on the transport thread is bounded: a request that is costly to decode is refused at decode,
cheaply, with `bad_request` naming the limit, and the server goes on answering. Real servers, raw
frames (a hostile client does not use our client)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import msgpack
import numpy as np
import pytest
import zmq

from cvgen.protocol import JobSpec, ProtocolError
from cvgen.protocol.client import Client
from cvgen.protocol.limits import Limits
from cvgen.protocol.messages import DELIMITER, Message, decode, encode, make_header

from support import ServerProcess

MAP_BYTES = Limits().max_map_bytes


@pytest.fixture(scope="module")
def transport_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for the module: each test also checks that it still answers."""
    srv = ServerProcess(tmp_path_factory.mktemp("jobs")).start()
    yield srv
    assert srv.stop() == 0


def envelope(msg_type: str, content: bytes) -> list[bytes]:
    """The frames of a request whose content map is `content`, already packed."""
    return [DELIMITER, msgpack.packb({**make_header(msg_type), "buffers": []}), msgpack.packb({}), content]


def ask(endpoint: str, frames: list[bytes], timeout: float = 5.0) -> tuple[Message | None, float]:
    """Send one request on its own socket; its first reply (None if none came within `timeout`)
    and the seconds from the end of sending to that reply."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        sock.send_multipart(frames, copy=False)
        sent = time.monotonic()
        if not sock.poll(int(timeout * 1000)):
            return None, timeout
        return decode(sock.recv_multipart()), time.monotonic() - sent
    finally:
        sock.close(0)
        ctx.term()


def assert_refused(answer: Message | None, limit: str) -> None:
    assert answer is not None, "no reply"
    assert answer.msg_type == "error", answer.content
    assert answer.content["code"] == "bad_request" and limit in answer.content["message"], answer.content


def assert_still_serving(endpoint: str) -> None:
    with Client(endpoint) as client:
        assert client.hello()["limits"]


def bin_keyed_map(entries: int, value: bytes) -> bytes:
    """A packed map of `entries` distinct 4-byte bin keys, each to `value` (packed); built with numpy,
    as packing millions of entries in Python would take longer than the test."""
    row = np.dtype([("tag", "u1"), ("size", "u1"), ("key", ">u4"), ("value", f"V{len(value)}")])
    table = np.zeros(entries, row)
    table["tag"], table["size"], table["key"] = 0xC4, 4, np.arange(entries)
    table["value"] = np.frombuffer(value, f"V{len(value)}")[0]
    return b"\xdf" + entries.to_bytes(4, "big") + table.tobytes()


def test_a_16_mib_map_of_empty_arrays_is_refused_at_once(transport_server):
    """Once 1.3 GiB and 7-9 s on the transport thread for each such message."""
    content = bin_keyed_map((MAP_BYTES - 5) // 7, b"\x90")
    assert len(content) <= MAP_BYTES
    answer, seconds = ask(transport_server.endpoint, envelope("status", content))
    assert_refused(answer, "max_map_entries")
    assert seconds < 2
    assert_still_serving(transport_server.endpoint)


def test_a_map_of_maps_of_empty_arrays_is_refused_by_its_item_count(transport_server):
    """Each map is short, but together they hold a million empty arrays."""
    entries = Limits().max_map_entries
    content = bin_keyed_map(entries, bin_keyed_map(entries, b"\x90"))
    assert len(content) <= MAP_BYTES
    answer, seconds = ask(transport_server.endpoint, envelope("status", content))
    assert_refused(answer, "max_map_items")
    assert seconds < 2
    assert_still_serving(transport_server.endpoint)


def deep_submit(levels: int) -> list[bytes]:
    """A submit whose parameter is an array nested `levels` deep (packed by hand: msgpack's own
    packer stops at 512 levels)."""
    job = {"op": "colormatch", "frames": [1, 1], "inputs": {"plate": "/p.####.exr", "fg": "/f.####.exr"},
           "params": {"strength": "DEEP"}}
    content = msgpack.packb({"job": job}).replace(msgpack.packb("DEEP"), b"\x91" * levels + b"\x90")
    return envelope("submit", content)


def test_a_request_nested_1010_deep_is_refused_at_decode(transport_server):
    """Was accepted, then answered `internal` (RecursionError)."""
    answer, _ = ask(transport_server.endpoint, deep_submit(1010))
    assert_refused(answer, "max_map_depth")
    assert_still_serving(transport_server.endpoint)


def test_msgpack_extension_types_are_refused(transport_server):
    content = msgpack.packb({"job_id": msgpack.ExtType(5, b"x" * 8)})
    answer, _ = ask(transport_server.endpoint, envelope("status", content))
    assert_refused(answer, "extension type")
    assert_still_serving(transport_server.endpoint)


def memory_kib(pid: int) -> dict[str, int]:
    """The process's resident memory now (VmRSS) and at its peak (VmHWM), in KiB."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in lines) if k in ("VmRSS", "VmHWM")}


def test_a_message_of_a_million_empty_frames_is_refused_without_keeping_them(transport_server):
    """Once 20 s for 2,000,000 frames, each kept as a zmq.Frame (over 200 bytes) before the count
    was checked. The server now keeps the frames a message may have and only counts the rest:
    its peak memory grows by about what ZeroMQ itself holds for the message (64 bytes a frame)."""
    assert transport_server.proc is not None
    before = memory_kib(transport_server.proc.pid)["VmRSS"]
    frames = [*encode(Message("status")), *([b""] * 1_000_000)]
    answer, _ = ask(transport_server.endpoint, frames, timeout=30)
    assert_refused(answer, "the message has 1000000 pixel buffers, over the server's limit max_buffers_per_message")
    assert memory_kib(transport_server.proc.pid)["VmHWM"] - before < 150 * 1024
    assert_still_serving(transport_server.endpoint)


def test_the_client_refuses_what_the_server_would(transport_server):
    """The client checks the advertised decode limits before sending, with the server's sentence."""
    nested: object = []
    for _ in range(Limits().max_map_depth + 8):
        nested = [nested]
    job = JobSpec("colormatch", (1, 1), {"plate": "/p.####.exr", "fg": "/f.####.exr"}, params={"deep": nested})
    with Client(transport_server.endpoint) as client:
        client.hello()
        with pytest.raises(ProtocolError, match="max_map_depth"):
            client.submit(job)
        assert client.status()["devices"]


def test_a_refused_request_gets_its_answer_by_its_id(transport_server):
    """The `error` for a request refused at decode names that request, so a client waiting for
    its answer hears why at once instead of waiting out its timeout."""
    frames = envelope("status", msgpack.packb({"padding": list(range(5000))}))
    msg_id = msgpack.unpackb(frames[1])["msg_id"]
    answer, _ = ask(transport_server.endpoint, frames)
    assert_refused(answer, "max_map_entries")
    assert answer is not None and answer.parent_id == msg_id
