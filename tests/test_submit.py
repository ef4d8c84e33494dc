"""Submitting jobs to a real server: one final reply per request, nothing accepted is lost,
inline frames stored once, other jobs' frames never taken or overwritten."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import zmq

from cvgen.protocol import JobSpec, ServerError
from cvgen.protocol.client import Accepted, Client
from cvgen.protocol.images import Image
from cvgen.protocol.limits import Limits
from cvgen.protocol.messages import Message, decode, encode, image_to_wire
from cvgen.server.io.exr import read_exr, write_exr

from support import ServerProcess, make_shot


def exchange(endpoint: str, msg: Message, timeout_ms: int = 20_000) -> list[Message]:
    """Send `msg` on a fresh socket; every reply to it up to its final one, after checking that
    a `status` sent next is answered next (so no second final reply was on its way)."""
    context = zmq.Context.instance()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        sock.send_multipart(encode(msg))
        replies: list[Message] = []
        while not (replies and replies[-1].final):
            assert sock.poll(timeout_ms), f"no final reply to {msg.msg_type} within {timeout_ms} ms"
            replies.append(decode(sock.recv_multipart()))
        sentinel = Message("status")
        sock.send_multipart(encode(sentinel))
        assert sock.poll(timeout_ms)
        after = decode(sock.recv_multipart())
        assert after.parent_id == sentinel.msg_id, f"a second reply to the request: {after.msg_type} {after.content}"
        return replies
    finally:
        sock.close()


def inline_frames(shot: dict[str, str], frames: range) -> dict[str, dict[int, Image]]:
    return {role: {f: read_exr(template.replace("####", f"{f:04d}")) for f in frames} for role, template in shot.items()}


def test_names_too_long_for_the_file_system_are_refused_at_submit_with_one_reply(server, tmp_path):
    shot = make_shot(tmp_path / "shot", range(1, 2), size=(8, 8))
    for field_name, value, says in [
        ("name", "n" * 250, "at most 200"),
        ("output", str(tmp_path / ("d" * 300)), "file systems allow 255"),
    ]:
        job = JobSpec("colormatch", (1, 1), shot).to_dict()
        job[field_name] = value  # as a client that does not check sends it
        replies = exchange(server.endpoint, Message("submit", {"job": job}))
        assert [m.msg_type for m in replies] == ["error"]
        assert replies[0].content["code"] == "bad_request" and says in replies[0].content["message"]
    with Client(server.endpoint, 20) as client:
        assert client.jobs() == []
        longest = JobSpec("colormatch", (1, 1), shot, name="n" * 200, output=str(tmp_path / ("d" * 255)))
        done = client.submit(longest).wait()
        assert Path(done.frames[1]).name == "n" * 200 + ".0001.exr"
        assert [j["state"] for j in client.jobs()] == ["done"]


def test_an_inline_job_still_queued_when_the_server_dies_runs_after_the_restart(tmp_path):
    """Inline frames are stored before `accepted`: a kill -9 while the job waits loses nothing."""
    long_shot = make_shot(tmp_path / "long", range(1, 301), size=(32, 32))
    small = make_shot(tmp_path / "small", range(1, 3), size=(16, 16))
    server = ServerProcess(tmp_path / "jobs").start()
    try:
        with Client(server.endpoint, 20) as client:
            ahead = client.submit(JobSpec("colormatch", (1, 300), long_shot, name="long"))
            assert isinstance(next(ahead), Accepted)
            stream = client.submit(JobSpec("colormatch", (1, 2), job_id="waiting"), inline=inline_frames(small, range(1, 3)))
            accepted = next(stream)
            assert isinstance(accepted, Accepted) and accepted.job_id == "waiting"
            assert client.status("waiting")["state"] == "queued"
        server.stop(signal.SIGKILL)
        server = ServerProcess(tmp_path / "jobs").start()
        with Client(server.endpoint, 20) as client:
            again = client.submit(JobSpec("colormatch", (1, 2), job_id="waiting"),
                                  inline=inline_frames(small, range(1, 3))).wait()
            assert sorted(again.frames) == [1, 2]
            status = client.status("waiting")
            assert status["state"] == "done", status
    finally:
        server.stop(signal.SIGKILL)


def test_frames_sharing_a_buffer_are_stored_once(server, tmp_path):
    """100 frames that all point at the same two buffers: two files' worth of disk, not 200."""
    plate = Image(np.random.default_rng(1).uniform(0, 1, (64, 64, 4)).astype(np.float32), ("R", "G", "B", "A"))
    fg = Image(np.full((64, 64, 4), 0.5, np.float32), ("R", "G", "B", "A"))
    buffers: list[np.ndarray] = []
    plate_wire, fg_wire = image_to_wire(plate, buffers), image_to_wire(fg, buffers)
    frames = range(1, 101)
    content = {"job": JobSpec("colormatch", (1, 100), job_id="held").to_dict(),
               "inline": {"plate": [{"frame": f, "image": plate_wire} for f in frames],
                          "fg": [{"frame": f, "image": fg_wire} for f in frames]}}
    sent = sum(len(f) for f in encode(Message("submit", content, buffers=list(buffers))))
    with Client(server.endpoint, 20) as client:
        accepted = client._receive(client._send("submit", content, buffers), 20)
        assert accepted is not None and accepted.msg_type == "accepted", accepted
        inputs = server.jobs_dir / "held" / "inputs"
        files = sorted(inputs.iterdir())
        assert len(files) == 200
        stored = {(p.stat().st_ino) for p in files}
        disk = sum(os.stat(inputs / p.name).st_blocks * 512 for p in {p.stat().st_ino: p for p in files}.values())
        assert len(stored) == 2 and disk < 2 * sent, f"{len(stored)} distinct files, {disk} bytes for {sent} sent"
        assert read_exr(inputs / "plate.0050.exr").pixels.tobytes() == plate.pixels.tobytes()
        client.cancel("held")


def test_inline_pixels_over_the_staging_limit_are_refused_at_submit(tmp_path):
    server = ServerProcess(tmp_path / "jobs", "--max-staged-bytes-per-job", "20000").start()
    try:
        shot = make_shot(tmp_path / "shot", range(1, 3), size=(32, 32))
        with Client(server.endpoint, 20) as client:
            assert client.hello()["limits"]["max_staged_bytes_per_job"] == 20000
            with pytest.raises(ServerError, match="max_staged_bytes_per_job = 20000") as err:
                client.submit(JobSpec("colormatch", (1, 2), job_id="big"), inline=inline_frames(shot, range(1, 3))).wait()
            assert err.value.code == "bad_request"
            assert not (tmp_path / "jobs" / "big").exists()
            small = inline_frames(shot, range(1, 2))
            assert sorted(client.submit(JobSpec("colormatch", (1, 1)), inline=small).wait().frames) == [1]
    finally:
        server.stop()


def test_frames_another_job_left_in_the_output_folder_are_neither_taken_nor_overwritten(server, tmp_path):
    shot = make_shot(tmp_path / "shot", range(1, 3), size=(16, 16))
    out = tmp_path / "out"
    out.mkdir()
    theirs = Image(np.full((4, 4, 3), 0.25, np.float16), ("R", "G", "B"))
    write_exr(out / "colormatch.0002.exr", theirs)
    before = (out / "colormatch.0002.exr").read_bytes()
    with Client(server.endpoint, 20) as client:
        with pytest.raises(ServerError, match=r"already holds 1 frame\(s\) this job would overwrite \(colormatch.0002.exr\)"):
            client.submit(JobSpec("colormatch", (1, 2), shot, output=str(out))).wait()
        assert (out / "colormatch.0002.exr").read_bytes() == before and not (out / "colormatch.0001.exr").exists()

        first = client.submit(JobSpec("colormatch", (1, 2), shot, output=str(out), name="mine", job_id="mine")).wait()
        mtimes = {f: os.stat(p).st_mtime_ns for f, p in first.frames.items()}
        again = client.submit(JobSpec("colormatch", (1, 2), shot, output=str(out), name="mine", job_id="mine")).wait()
        assert {f: os.stat(p).st_mtime_ns for f, p in again.frames.items()} == mtimes, "its own frames are kept"
        with pytest.raises(ServerError, match="would overwrite"):
            client.submit(JobSpec("colormatch", (1, 2), shot, output=str(out), name="mine")).wait()


def test_queued_behind_counts_the_jobs_ahead(server, tmp_path):
    shot = make_shot(tmp_path / "shot", range(1, 201), size=(32, 32))
    with Client(server.endpoint, 20) as client:
        behind = []
        for n in range(3):
            stream = client.submit(JobSpec("colormatch", (1, 200), shot, name=f"j{n}", job_id=f"j{n}"))
            reply = client._receive(stream.msg_id, 20)
            assert reply is not None and reply.msg_type == "accepted"
            behind.append(reply.content["queued_behind"])
        for n in range(3):
            client.cancel(f"j{n}")
    assert behind[0] == 0 and behind == sorted(behind) and 1 <= behind[2] <= 2, behind


def test_serve_on_a_port_in_use_says_so_in_one_line(server):
    port = server.endpoint.rsplit(":", 1)[1]
    result = subprocess.run([sys.executable, "-m", "cvgen.server.cli", "serve", "--bind", f"tcp://127.0.0.1:{port}"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if "error" in line]
    assert lines == [f"cvgen: error: cannot listen on tcp://127.0.0.1:{port}: Address already in use; "
                     "is another cvgen serve running there?"], result.stderr


def test_serve_help_says_what_each_limit_limits():
    result = subprocess.run([sys.executable, "-m", "cvgen.server.cli", "serve", "--help"], capture_output=True,
                            text=True, timeout=60)
    text = " ".join(result.stdout.split())
    for f in fields(Limits):
        assert f"--{f.name.replace('_', '-')} N the most {f.metadata['help']}" in text, f.name


def test_jobs_come_in_pages_and_a_broken_job_does_not_break_the_list(server, tmp_path):
    shot = make_shot(tmp_path / "shot", range(1, 2), size=(8, 8))
    with Client(server.endpoint, 20) as client:
        for n in range(5):
            client.submit(JobSpec("colormatch", (1, 1), shot, name=f"s{n}", job_id=f"job{n}")).wait()
        (server.jobs_dir / "job2" / "spec.json").write_text("{not json")
        (server.jobs_dir / "job3" / "state.json").unlink()
        newest = client.jobs(limit=2)
        assert [j["job_id"] for j in newest] == ["job3", "job4"]
        assert newest[0]["state"] == "failed" and "missing or unreadable" in newest[0]["message"]
        older = client.jobs(limit=2, before="job3")
        assert [j["job_id"] for j in older] == ["job1", "job2"]
        assert older[1]["state"] == "unreadable" and "unreadable spec" in older[1]["message"]
        listed = client.jobs()
        assert [j["job_id"] for j in listed] == [f"job{n}" for n in range(5)]
        assert [j.get("done") for j in listed] == [1, 1, None, 1, 1]
        with pytest.raises(ServerError, match="no job 'nope' to list the jobs before"):
            client.jobs(before="nope")
        with pytest.raises(ServerError, match="jobs limit must be a whole number from 1 to 200"):
            client.jobs(limit=0)
