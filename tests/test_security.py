"""Who gets in, how much they may send, and which files they may name: real servers, real sockets."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from cvgen.protocol import JobSpec, ProtocolError, ServerError
from cvgen.protocol.client import Client, Done
from cvgen.protocol.errors import AuthenticationFailed, KeyFileError
from cvgen.protocol.images import Image
from cvgen.protocol.messages import Message, encode
from cvgen.protocol.addresses import is_loopback
from cvgen.server.auth import generate_keys

from support import ServerProcess, make_shot


def serve_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cvgen.server.cli", *args], capture_output=True, text=True,
                          timeout=60)


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("keys") / "keys"
    result = serve_cli("keys", "generate", str(folder), "--client", "alice")
    assert result.returncode == 0, result.stderr
    return folder


@pytest.fixture(scope="module")
def lan_server(keys, tmp_path_factory):
    """A server bound to every interface, as on a GPU box the floor can reach."""
    server = ServerProcess(tmp_path_factory.mktemp("jobs"), "--keys", str(keys), bind="tcp://0.0.0.0:*").start()
    yield server
    assert server.stop() == 0


def test_keys_generate_writes_private_secrets_and_never_overwrites(keys):
    assert stat.S_IMODE((keys / "server.key_secret").stat().st_mode) == 0o600
    assert stat.S_IMODE((keys / "clients" / "alice.key_secret").stat().st_mode) == 0o600
    assert (keys / "authorized" / "alice.key").read_bytes() == (keys / "clients" / "alice.key").read_bytes()
    before = (keys / "server.key_secret").read_bytes()
    again = serve_cli("keys", "generate", str(keys), "--client", "bob")
    assert again.returncode == 0 and (keys / "authorized" / "bob.key").exists()
    assert (keys / "server.key_secret").read_bytes() == before
    twice = serve_cli("keys", "generate", str(keys), "--client", "bob")
    assert twice.returncode == 1 and "already has keys" in twice.stderr


def test_network_bind_without_keys_refuses_and_says_how_to_make_them(tmp_path):
    result = serve_cli("serve", "--bind", "tcp://0.0.0.0:*", "--jobs-dir", str(tmp_path / "jobs"))
    assert result.returncode == 1
    assert "refusing to serve on tcp://0.0.0.0:*" in result.stderr and "cvgen keys generate" in result.stderr
    assert "Traceback" not in result.stderr


def test_keys_folder_without_any_client_refuses_to_start(tmp_path):
    generate_keys(tmp_path / "keys", [])
    result = serve_cli("serve", "--bind", "tcp://0.0.0.0:*", "--keys", str(tmp_path / "keys"),
                       "--jobs-dir", str(tmp_path / "jobs"))
    assert result.returncode == 1 and "holds no client public keys" in result.stderr


@pytest.mark.parametrize("endpoint, loopback", [
    ("tcp://127.0.0.1:5555", True), ("tcp://127.1.2.3:5555", True), ("tcp://localhost:5555", True),
    ("tcp://[::1]:5555", True), ("ipc:///tmp/cvgen", True), ("tcp://0.0.0.0:5555", False),
    ("tcp://*:5555", False), ("tcp://10.0.0.7:5555", False), ("tcp://eth0:5555", False),
    ("tcp://gpu-box:5555", False), ("inproc://cvgen", True),
])
def test_only_loopback_counts_as_loopback(endpoint, loopback):
    assert is_loopback(endpoint) is loopback


def test_allowed_client_renders_over_an_encrypted_connection(lan_server, keys, tmp_path):
    frames = {"plate": {}, "fg": {}}
    shot = make_shot(tmp_path / "shot", range(1, 3))
    from cvgen.server.io.exr import read_exr

    for role in frames:
        for f in (1, 2):
            frames[role][f] = read_exr(shot[role].replace("####", f"{f:04d}"))
    with Client(lan_server.endpoint, 30, server_key=keys / "server.key",
                client_key=keys / "clients" / "alice.key_secret") as client:
        assert client.hello()["limits"]["max_frames_per_job"] > 0
        events = list(client.submit(JobSpec("colormatch", (1, 2)), inline=frames, deliver="inline"))
    assert isinstance(events[-1], Done) and sorted(events[-1].frames) == [1, 2]


def test_unknown_client_is_refused_with_a_reason(lan_server, keys, tmp_path):
    generate_keys(tmp_path / "other", ["mallory"])
    with Client(lan_server.endpoint, 2, server_key=keys / "server.key",
                client_key=tmp_path / "other" / "clients" / "mallory.key_secret") as client:
        with pytest.raises(AuthenticationFailed, match="refused this workstation's key.*authorized/"):
            client.hello()


def test_sighup_rereads_the_allow_list_without_stopping_the_server(tmp_path):
    keys = tmp_path / "keys"
    generate_keys(keys, ["alice", "bob"])
    (keys / "authorized" / "bob.key").unlink()
    server = ServerProcess(tmp_path / "jobs", "--keys", str(keys), bind="tcp://0.0.0.0:*").start()
    server_key = keys / "server.key"
    try:
        with Client(server.endpoint, 2, server_key=server_key, client_key=keys / "clients" / "bob.key_secret") as bob:
            with pytest.raises(AuthenticationFailed):
                bob.hello()
        (keys / "clients" / "bob.key").rename(keys / "authorized" / "bob.key")
        (keys / "authorized" / "alice.key").unlink()
        server.proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        with Client(server.endpoint, 5, server_key=server_key, client_key=keys / "clients" / "bob.key_secret") as bob:
            assert bob.hello()["limits"]
        with Client(server.endpoint, 2, server_key=server_key,
                    client_key=keys / "clients" / "alice.key_secret") as alice:
            with pytest.raises(AuthenticationFailed, match="refused this workstation's key"):
                alice.hello()
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize("which", ["no keys", "another server's key"])
def test_client_without_the_right_server_key_cannot_talk(lan_server, keys, tmp_path, which):
    options = {}
    if which != "no keys":
        generate_keys(tmp_path / "other", [])
        options = {"server_key": tmp_path / "other" / "server.key",
                   "client_key": keys / "clients" / "alice.key_secret"}
    expected = "this workstation has none" if which == "no keys" else "does not belong to that server"
    with Client(lan_server.endpoint, 10, **options) as client:
        started = time.monotonic()
        with pytest.raises(AuthenticationFailed, match=expected):
            client.hello()
    assert time.monotonic() - started < 3, "a refused handshake was only reported at the timeout"


def test_key_file_mistakes_are_named_before_connecting(keys, tmp_path):
    cases = [
        ({"server_key": keys / "server.key"}, "needs both key files"),
        ({"server_key": keys / "server.key", "client_key": keys / "clients" / "alice.key"}, "is a public key"),
        ({"server_key": tmp_path / "nope.key", "client_key": keys / "clients" / "alice.key_secret"},
         "does not exist"),
    ]
    (tmp_path / "junk.key").write_text("not a key\n")
    cases.append(({"server_key": tmp_path / "junk.key", "client_key": keys / "clients" / "alice.key_secret"},
                  "not a CurveZMQ key file"))
    for options, words in cases:
        with pytest.raises(KeyFileError, match=words):
            Client("tcp://127.0.0.1:1", 1, **options)


# -- limits ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_server(tmp_path_factory):
    server = ServerProcess(tmp_path_factory.mktemp("jobs"), "--max-frames-per-job", "3", "--max-resolution", "64",
                           "--max-buffers-per-message", "4", "--max-buffer-bytes", "100000",
                           "--max-message-bytes", "200000", "--max-map-bytes", "20000").start()
    yield server
    assert server.stop() == 0


def inline_shot(frames: int, size: int) -> dict[str, dict[int, Image]]:
    pixels = np.ones((size, size, 4), np.float16)
    return {role: {f: Image(pixels, ("R", "G", "B", "A")) for f in range(1, frames + 1)} for role in ("plate", "fg")}


def raw_request(endpoint: str, frames: list) -> bytes | None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.connect(endpoint)
    try:
        sock.send_multipart(frames)
        return sock.recv_multipart()[3] if sock.poll(5000) else None
    finally:
        sock.close(0)
        ctx.term()


def submit_frames(frames: int, size: int) -> list:
    buffers: list = []
    inline = {role: [{"frame": f, "image": {**img.describe(), "buffer": buffers.append(img.pixels) or len(buffers) - 1}}
                     for f, img in shot.items()] for role, shot in inline_shot(frames, size).items()}
    job = JobSpec("colormatch", (1, frames)).to_dict()
    return encode(Message("submit", {"job": job, "inline": inline}, buffers=buffers))


@pytest.mark.parametrize("frames, size, limit", [
    (3, 32, "max_buffers_per_message = 4"),
    (1, 100, "max_resolution = 64"),
    (2, 100, "max_message_bytes = 200000"),
])
def test_requests_over_a_limit_get_bad_request_naming_it(small_server, frames, size, limit):
    answer = raw_request(small_server.endpoint, submit_frames(frames, size))
    assert answer is not None and b"bad_request" in answer and limit.encode() in answer
    with Client(small_server.endpoint) as client:
        with pytest.raises(ServerError, match="max_frames_per_job = 3"):
            list(client.submit(JobSpec("colormatch", (1, 4), {"plate": "/p.####.exr", "fg": "/f.####.exr"})))
        assert client.status()["devices"]


def test_input_files_over_the_resolution_limit_fail_the_job_naming_it(small_server, tmp_path):
    with Client(small_server.endpoint, 30) as client:
        done = list(client.submit(JobSpec("colormatch", (1, 2), make_shot(tmp_path / "ok", range(1, 3)))))[-1]
        assert isinstance(done, Done)
        big = make_shot(tmp_path / "big", range(1, 3), size=(48, 100))
        with pytest.raises(ServerError, match="plate frame 1 is 100x48, over the server's limit max_resolution = 64"):
            list(client.submit(JobSpec("colormatch", (1, 2), big)))


def test_oversized_content_map_is_refused(small_server):
    frames = encode(Message("status", {"padding": "x" * 30000}))
    answer = raw_request(small_server.endpoint, frames)
    assert answer is not None and b"max_map_bytes = 20000" in answer


def test_client_checks_the_advertised_limits_before_sending(small_server):
    with Client(small_server.endpoint) as client:
        assert client.hello()["limits"]["max_buffer_bytes"] == 100000
        with pytest.raises(ProtocolError, match="max_buffer_bytes = 100000"):
            client.submit(JobSpec("colormatch", (1, 1)), inline=inline_shot(1, 160))


def test_a_frame_over_the_transport_limit_is_dropped_and_the_client_is_told(small_server):
    """ZeroMQ closes the connection on a frame over ZMQ_MAXMSGSIZE; a client that did not check
    first gets an error rather than waiting forever, and the server keeps serving."""
    with Client(small_server.endpoint, timeout=1) as client:
        with pytest.raises(ProtocolError, match="never acknowledged"):
            list(client.submit(JobSpec("colormatch", (1, 1)), inline=inline_shot(1, 160)))
    with Client(small_server.endpoint) as client:
        assert client.status()["devices"]


# -- paths -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rooted(tmp_path_factory):
    base = tmp_path_factory.mktemp("roots")
    (base / "in").mkdir()
    (base / "out").mkdir()
    outside = make_shot(base / "elsewhere", range(1, 3))
    inside = make_shot(base / "in" / "shot", range(1, 3))
    server = ServerProcess(base / "jobs", "--input-root", str(base / "in"), "--output-root", str(base / "out")).start()
    yield server, base, inside, outside
    assert server.stop() == 0


def test_inputs_and_outputs_under_the_roots_work(rooted):
    server, base, inside, _ = rooted
    with Client(server.endpoint, 30) as client:
        done = list(client.submit(JobSpec("colormatch", (1, 2), inside, output=str(base / "out" / "a"))))[-1]
    assert isinstance(done, Done) and all(Path(p).parent == base / "out" / "a" for p in done.frames.values())


def escapes(base: Path, inside: dict[str, str], outside: dict[str, str]) -> dict[str, tuple[dict, str]]:
    (base / "in" / "link").symlink_to(base / "elsewhere", target_is_directory=True)
    return {
        "outside": ({"inputs": outside}, "outside the folders this server reads"),
        "dotdot": ({"inputs": {**inside, "plate": str(base / "in" / ".." / "elsewhere" / "plate.####.exr")}},
                   "outside the folders this server reads"),
        "symlinked folder": ({"inputs": {**inside, "plate": str(base / "in" / "link" / "plate.####.exr")}},
                             "outside the folders this server reads"),
        "relative": ({"inputs": {**inside, "plate": "shot/plate.####.exr"}}, "must be absolute"),
        "output outside": ({"inputs": inside, "output": str(base / "in")}, "outside the folders this server writes"),
        "output dotdot": ({"inputs": inside, "output": str(base / "out" / ".." / "elsewhere")},
                          "outside the folders this server writes"),
    }


def test_paths_that_leave_the_roots_are_refused(rooted):
    server, base, inside, outside = rooted
    with Client(server.endpoint) as client:
        for case, (fields, words) in escapes(base, inside, outside).items():
            with pytest.raises(ServerError, match=words) as err:
                list(client.submit(JobSpec("colormatch", (1, 2), **fields)))
            assert err.value.code == "bad_request", case
    assert not any((base / "elsewhere").glob("colormatch*")) and not any((base / "in").glob("*.exr"))


def test_a_symlinked_frame_pointing_outside_fails_the_job_before_it_is_read(rooted):
    server, base, inside, outside = rooted
    sneaky = base / "in" / "sneaky"
    sneaky.mkdir()
    for f in (1, 2):
        os.symlink(outside["plate"].replace("####", f"{f:04d}"), sneaky / f"plate.{f:04d}.exr")
    with Client(server.endpoint) as client:
        with pytest.raises(ServerError, match="leads outside the folders") as err:
            list(client.submit(JobSpec("colormatch", (1, 2), {**inside, "plate": str(sneaky / "plate.####.exr")})))
    assert err.value.code == "bad_request"


def test_a_network_server_without_roots_reads_only_inline_frames(lan_server, keys, tmp_path):
    shot = make_shot(tmp_path / "shot", range(1, 2))
    with Client(lan_server.endpoint, 10, server_key=keys / "server.key",
                client_key=keys / "clients" / "alice.key_secret") as client:
        with pytest.raises(ServerError, match="none: send frames inline"):
            list(client.submit(JobSpec("colormatch", (1, 1), shot)))
