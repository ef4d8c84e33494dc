"""Faults: what goes wrong in production happens here for real, and the server lives through it.

An op that raises (a CUDA out-of-memory among them), a host that vanishes mid-job, a disk that
fills up while a frame is written, damaged EXRs sent as inputs. (A server killed with SIGKILL
mid-job is `test_server.py::test_killed_server_resumes_the_job_and_keeps_finished_frames`.)
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pytest
import torch
import zmq

from cvgen.protocol import JobSpec, ServerError
from cvgen.protocol.client import Accepted, Client, Done, FrameReady
from cvgen.protocol.images import Image
from cvgen.protocol.messages import PROTOCOL_VERSION
from cvgen.server.io.exr import read_exr, write_exr
from cvgen.server.ops import all_ops
from cvgen.server.ops.colormatch import OP as COLORMATCH
from cvgen.server.service import Server

from support import ServerProcess, make_shot


def hidden_files(folder: Path) -> list[Path]:
    """Leftovers of `atomic_output` (hidden `.NAME.<hex>.tmp.EXT` files) anywhere under `folder`."""
    return [p for p in folder.rglob("*") if p.name.startswith(".") or ".tmp" in p.name]


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


@contextlib.contextmanager
def watchdog(seconds: float, stop_server: Callable[[], Any]) -> Iterator[None]:
    """Stop the server if the block takes longer than `seconds`: a server whose worker died
    still answers every status request, and a client would wait for its job forever."""
    fired = threading.Event()

    def fire() -> None:
        fired.set()
        stop_server()

    timer = threading.Timer(seconds, fire)
    timer.start()
    try:
        yield
    except Exception:
        if fired.is_set():
            raise AssertionError(f"the job never ended: stopped the server after {seconds:g} s") from None
        raise
    finally:
        timer.cancel()
    assert not fired.is_set(), f"the job never ended: stopped the server after {seconds:g} s"


# --- an op that raises ----------------------------------------------------------------------

#: Which fault the patched colormatch raises, by the job's seed, after its first frame is written.
FAULTS: dict[int, Callable[[], BaseException]] = {
    1: lambda: torch.cuda.OutOfMemoryError(
        "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 23.65 GiB total capacity; 21.12 GiB already "
        "allocated; 1.06 GiB free; 21.50 GiB reserved in total by PyTorch)"),
    2: lambda: MemoryError(),
    3: lambda: RuntimeError("the op fell over"),
    4: lambda: ZeroDivisionError("division by zero"),
}


def faulty_colormatch(shot: Any, params: dict[str, Any], ctx: Any) -> Iterator[tuple[int, Image]]:
    fault = FAULTS.get(ctx.seed)
    for count, (frame, image) in enumerate(COLORMATCH.run(shot, params, ctx)):
        if fault is not None and count == 1:
            raise fault()
        yield frame, image


@pytest.fixture
def faulty_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    """A real server, in this process so its op can be made to fail: the registry entry the
    worker looks colormatch up in is replaced by one whose run raises on demand."""
    monkeypatch.setitem(all_ops(), "colormatch", dataclasses.replace(COLORMATCH, run=faulty_colormatch))
    server = Server(bind="tcp://127.0.0.1:*", jobs_dir=tmp_path / "jobs", devices=["cpu"])
    stop = threading.Event()
    thread = threading.Thread(target=server.serve, args=(stop,), name="faulty-server")
    thread.start()
    with watchdog(120, stop.set):
        yield server
    stop.set()
    thread.join(30)
    assert not thread.is_alive(), "the server did not shut down"


@pytest.mark.parametrize("seed, code, words", [
    (1, "out_of_memory", "the device cpu ran out of memory"),
    (2, "out_of_memory", "the job ran out of memory"),
    (3, "internal", "unexpected RuntimeError: the op fell over"),
    (4, "internal", "unexpected ZeroDivisionError: division by zero"),
], ids=["cuda-oom", "host-oom", "runtime-error", "bug"])
def test_an_op_that_raises_fails_its_job_and_the_next_job_runs(faulty_server, tmp_path, seed, code, words):
    shot = make_shot(tmp_path / "shot", range(1, 5))
    with Client(faulty_server.endpoint, timeout=30) as client:
        failing = client.submit(JobSpec("colormatch", (1, 4), shot, seed=seed, job_id="failing"))
        following = client.submit(JobSpec("colormatch", (1, 4), shot, name="following", job_id="following"))
        events = []
        with pytest.raises(ServerError) as err:
            for event in failing:
                events.append(event)
        assert err.value.code == code and words in str(err.value), str(err.value)
        assert err.value.job_id == "failing"
        assert [e.frame for e in events if isinstance(e, FrameReady)] == [1]

        done = list(following)[-1]
        assert isinstance(done, Done) and sorted(done.frames) == [1, 2, 3, 4]
        for path in done.frames.values():
            read_exr(path)

        status = client.status("failing")
        assert status["state"] == "failed" and status["code"] == code and words in status["message"]
        assert status["done"] == 1
        assert client.status("following")["state"] == "done"
        assert client.status()["running"] == []
    job_dir = faulty_server.store.root / "failing"
    assert [p.name for p in (job_dir / "frames").iterdir()] == ["colormatch.0001.exr"]
    read_exr(job_dir / "frames" / "colormatch.0001.exr")
    assert not hidden_files(faulty_server.store.root)


# --- a host that disappears mid-job ---------------------------------------------------------

VANISHING_CLIENT = """
import sys
from cvgen.protocol import JobSpec
from cvgen.protocol.client import Client, FrameReady
client = Client(sys.argv[1], timeout=30)
for event in client.submit(JobSpec("colormatch", (1, 30), {"plate": sys.argv[2], "fg": sys.argv[3]}, job_id="orphan")):
    if isinstance(event, FrameReady):
        print("frame", event.frame, flush=True)
        break
sys.stdin.read()  # hold the connection open until killed
"""


@pytest.mark.parametrize("how", ["socket-closed", "process-killed"])
def test_a_client_that_disappears_does_not_stop_the_job_or_the_server(server, tmp_path, how):
    shot = make_shot(tmp_path / "shot", range(1, 31), size=(512, 512))
    spec = JobSpec("colormatch", (1, 30), shot, job_id="orphan")
    if how == "socket-closed":
        # The host's whole ZeroMQ context goes away without a word, mid-stream.
        context = zmq.Context()
        client = Client(server.endpoint, timeout=30, context=context)
        for event in client.submit(spec):
            if isinstance(event, FrameReady):
                break
        context.destroy(linger=0)
    else:
        # The host process dies (a crash, a kill from the task manager): its sockets are torn down by the OS.
        host = subprocess.Popen([sys.executable, "-c", VANISHING_CLIENT, server.endpoint, shot["plate"], shot["fg"]],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert host.stdout is not None and host.stdout.readline().startswith("frame")
        finally:
            host.kill()
            host.wait(10)
    vanished = time.monotonic()

    with watchdog(120, server.proc.kill), Client(server.endpoint, timeout=30) as client:
        status = client.status("orphan")
        assert status["state"] == "running" and status["done"] < 30, "the job must still be running for this test"
        done = wait_for(lambda: client.status("orphan")["state"] == "done", 120, "the orphaned job to finish")
        assert done
        elapsed = time.monotonic() - vanished
        assert server.proc.poll() is None
        assert client.hello()["protocol_version"] == PROTOCOL_VERSION
        out = Path(client.status("orphan")["output"])
        written = {p.name: p.stat().st_mtime_ns for p in out.glob("*.exr")}
        assert len(written) == 30

        # Results are fetched later by job id: the same job again answers with every frame, rendering none.
        events = list(client.submit(spec))
        assert isinstance(events[0], Accepted) and events[0].done == 30
        assert isinstance(events[-1], Done) and sorted(events[-1].frames) == list(range(1, 31))
        assert not [e for e in events if isinstance(e, FrameReady)]
        for frame, path in events[-1].frames.items():
            assert Path(path) == out / f"colormatch.{frame:04d}.exr"
            assert Path(path).stat().st_mtime_ns == written[Path(path).name]
            read_exr(path)
    assert not hidden_files(server.jobs_dir)
    assert server.proc.poll() is None
    print(f"{how}: the job finished {elapsed:.1f} s after its client vanished")


# --- a full disk ----------------------------------------------------------------------------

def can_mount_a_tmpfs() -> bool:
    """Whether a user+mount namespace (unshare -rm) lets the server get a tiny disk of its own."""
    if shutil.which("unshare") is None:
        return False
    try:
        probe = "d=$(mktemp -d) && mount -t tmpfs -o size=64k tmpfs \"$d\" && umount \"$d\"; r=$?; rmdir \"$d\"; exit $r"
        return subprocess.run(["unshare", "-rm", "sh", "-c", probe], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


class SmallDiskServer(ServerProcess):
    """A `cvgen serve` whose jobs folder has room for a few frames only.

    "tmpfs": the jobs folder is a tmpfs mounted in a mount namespace of the server's own (this
    process reaches it through /proc/PID/root), filled with ballast up to `room` bytes short
    of full, so writes end in ENOSPC as on a full disk; "tmpfs-inodes" leaves `room` free
    inodes instead, so even a temp file for the job's state cannot be made. Deleting the
    ballast makes room again. "file-size", where namespaces are not allowed: RLIMIT_FSIZE caps
    every file the server writes at `room` bytes (writes past it end in EFBIG).
    """

    def __init__(self, jobs_dir: Path, how: str, room: int) -> None:
        super().__init__(jobs_dir)
        self.how = how
        self.room = room
        self.ballast: list[Path] = []

    def start(self, wrapper: Sequence[str] = (), preexec_fn: Callable[[], None] | None = None) -> "SmallDiskServer":
        self.jobs_dir.mkdir(parents=True)
        if self.how.startswith("tmpfs"):
            options = "size=16m,nr_inodes=4096"
            super().start(["unshare", "-rm", "sh", "-c", f'mount -t tmpfs -o {options} tmpfs "$0" && exec "$@"',
                           str(self.jobs_dir)])
        else:
            super().start(preexec_fn=self._limit_file_size)
        if self.how == "tmpfs":
            disk = os.statvfs(self.view(self.jobs_dir))
            self.add_ballast("ballast", disk.f_bavail * disk.f_frsize - self.room)
        elif self.how == "tmpfs-inodes":
            for n in range(os.statvfs(self.view(self.jobs_dir)).f_favail - self.room):
                self.add_ballast(f"ballast.{n}", 0)
        return self

    def _limit_file_size(self) -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (self.room, self.room))

    def view(self, path: str | Path) -> Path:
        """A path the server wrote, as this process can reach it."""
        if not self.how.startswith("tmpfs"):
            return Path(path)
        assert self.proc is not None and self.proc.poll() is None, "the tmpfs goes away with the server"
        return Path(f"/proc/{self.proc.pid}/root") / Path(path).relative_to("/")

    def add_ballast(self, name: str, size: int) -> None:
        path = self.view(self.jobs_dir / name)
        with open(path, "wb") as f:
            f.truncate(0)
            for _ in range(size // 65536):
                f.write(bytes(65536))
            f.write(bytes(size % 65536))
        self.ballast.append(path)

    def make_room(self) -> bool:
        for path in self.ballast:
            path.unlink()
        return bool(self.ballast)


def small_then_large_shot(folder: Path, flat: int, noisy: int) -> dict[str, str]:
    """`flat` frames whose results compress to ~13 KB, then `noisy` ones of ~316 KB (256x256)."""
    shot = make_shot(folder, range(1, flat + noisy + 1), size=(256, 256))
    h = w = 256
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    alpha = np.clip(1.2 - np.hypot(x - w / 2, y - h / 2) / (0.3 * min(h, w)), 0, 1)
    for f in range(1, flat + 1):
        plate = np.dstack([np.full((h, w, 3), 0.2), np.ones((h, w))]).astype(np.float16)
        fg = np.dstack([np.full((h, w, 3), 1.5) * alpha[..., None], alpha]).astype(np.float16)
        write_exr(folder / f"plate.{f:04d}.exr", Image(plate, ("R", "G", "B", "A")))
        write_exr(folder / f"fg.{f:04d}.exr", Image(fg, ("R", "G", "B", "A")))
    return shot


#: how -> (room, what the message says). 640 KiB hold the 3 small frames and one large one;
#: 8 inodes the job's folder, spec, state, frames folder and 4 frames; the file size limit
#: lets the small frames through and stops the first large one.
DISKS = {
    "tmpfs": (640 * 1024, "the disk is full (cannot write", "No space left on device"),
    "tmpfs-inodes": (8, "the disk is full (cannot write", "No space left on device"),
    "file-size": (128 * 1024, "the file would be larger than", "File too large"),
}


@pytest.fixture(scope="module")
def tmpfs_allowed() -> bool:
    return can_mount_a_tmpfs()


@pytest.mark.parametrize("how", list(DISKS))
def test_a_full_disk_fails_the_job_cleanly_and_keeps_finished_frames(tmp_path, how, tmpfs_allowed):
    if how.startswith("tmpfs") and not tmpfs_allowed:
        # No namespaces here (a locked-down container): the file size limit stands in, and says so.
        warnings.warn(f"unshare -rm cannot mount a tmpfs here: the {how} case runs with RLIMIT_FSIZE instead")
        how = "file-size"
    room, says, cause = DISKS[how]
    shot = small_then_large_shot(tmp_path / "shot", flat=3, noisy=7)
    spec = JobSpec("colormatch", (1, 10), shot, job_id="big")
    server = SmallDiskServer(tmp_path / "jobs", how, room).start()
    try:
        with watchdog(120, server.proc.kill), Client(server.endpoint, timeout=30) as client:
            ready = []
            started = time.monotonic()
            with pytest.raises(ServerError) as err:
                for event in client.submit(spec):
                    if isinstance(event, FrameReady):
                        ready.append(event)
            took = time.monotonic() - started
            message = str(err.value)
            assert err.value.code == "no_space" and says in message and cause in message, message
            assert f"{len(ready)} of 10 frames are finished and kept" in message and "unexpected" not in message

            status = client.status("big")
            assert status["state"] == "failed" and status["code"] == "no_space" and status["message"] in message
            frames = server.view(status["output"])
            finished = [f"colormatch.{e.frame:04d}.exr" for e in ready]
            assert 3 <= len(ready) < 10 and status["done"] == len(ready)
            assert sorted(p.name for p in frames.iterdir()) == finished, "a partial or temp frame was left behind"
            assert not hidden_files(server.view(server.jobs_dir))
            kept = {}
            for event in ready:
                path = server.view(event.path)
                image = read_exr(path)
                assert image.pixels.shape == (256, 256, 4) and image.attributes["cvgen:job"] == "big"
                kept[path.name] = (path.stat().st_mtime_ns, path.read_bytes())

            # The server and its worker live on: it answers; once there is room the job resumes where
            # it stopped, and the next job runs.
            assert client.hello()["protocol_version"] == PROTOCOL_VERSION
            assert client.status()["running"] == []
            if server.make_room():
                done = list(client.submit(spec))[-1]
                assert isinstance(done, Done) and sorted(done.frames) == list(range(1, 11))
                for path in done.frames.values():
                    read_exr(server.view(path))
                for name, (mtime, data) in kept.items():
                    assert (frames / name).stat().st_mtime_ns == mtime and (frames / name).read_bytes() == data
            done = list(client.submit(JobSpec("colormatch", (1, 3), shot, name="small", job_id="small")))[-1]
            assert isinstance(done, Done) and sorted(done.frames) == [1, 2, 3]
            for path in done.frames.values():
                read_exr(server.view(path))
            assert not hidden_files(server.view(server.jobs_dir))
        assert server.proc.poll() is None
    finally:
        rc = server.stop()
    assert rc == 0
    print(f"{how}: failed after {len(ready)} frames in {took:.1f} s: {message}")


@pytest.mark.parametrize("how", ["tmpfs", "file-size"])
def test_inline_frames_on_a_full_disk_are_refused_leaving_nothing_and_can_be_sent_again(tmp_path, how, tmpfs_allowed):
    """The frames of an inline job are stored before `accepted`: when they do not fit, the host
    hears `no_space`, no job folder is left behind, and the same job id works once there is room."""
    if how == "tmpfs" and not tmpfs_allowed:
        warnings.warn("unshare -rm cannot mount a tmpfs here: the tmpfs case runs with RLIMIT_FSIZE instead")
        how = "file-size"
    noisy = np.random.default_rng(3).uniform(0, 1, (256, 256, 4)).astype(np.float32)
    inline = {role: {f: Image(noisy * f, ("R", "G", "B", "A")) for f in (1, 2)} for role in ("plate", "fg")}
    spec = JobSpec("colormatch", (1, 2), job_id="inline")
    server = SmallDiskServer(tmp_path / "jobs", how, 640 * 1024 if how == "tmpfs" else 128 * 1024).start()
    try:
        with watchdog(120, server.proc.kill), Client(server.endpoint, timeout=30) as client:
            with pytest.raises(ServerError) as err:
                client.submit(spec, inline=inline).wait()
            assert err.value.code == "no_space" and "same job id" in str(err.value), err.value
            jobs = server.view(server.jobs_dir)
            assert [p.name for p in jobs.iterdir() if not p.name.startswith("ballast")] == []
            with pytest.raises(ServerError) as gone:
                client.status("inline")
            assert gone.value.code == "not_found"
            if server.make_room():
                done = client.submit(spec, inline=inline).wait()
                assert sorted(done.frames) == [1, 2]
                assert read_exr(server.view(jobs / "inline" / "inputs" / "plate.0002.exr")).pixels.tobytes() == \
                    (noisy * 2).tobytes()
        assert server.proc.poll() is None
    finally:
        server.stop()


# --- damaged EXRs as inputs -----------------------------------------------------------------

def test_damaged_exrs_as_inputs_get_bad_request_and_the_server_lives(server, tmp_path, shared_data):
    damaged = sorted(p for p in (shared_data / "exr" / "Damaged").iterdir() if p.name != "README.rst")
    assert len(damaged) >= 90, f"expected the OpenEXR project's damaged images in {shared_data / 'exr' / 'Damaged'}"
    good = make_shot(tmp_path / "good", range(1, 2))
    jobs = []
    for index, source in enumerate(damaged):
        for role in ("plate", "fg"):
            folder = tmp_path / "damaged" / f"{index:02d}-{role}"
            folder.mkdir(parents=True)
            inputs = {}
            for r in ("plate", "fg"):
                dest = folder / f"{r}.0001.exr"
                shutil.copyfile(source if r == role else good[r].replace("####", "0001"), dest)
                inputs[r] = str(folder / f"{r}.####.exr")
            jobs.append((source, role, folder / f"{role}.0001.exr", JobSpec("colormatch", (1, 1), inputs)))

    started = time.monotonic()
    outcomes = []
    with watchdog(120, server.proc.kill), Client(server.endpoint, timeout=60) as client:
        for start in range(0, len(jobs), 16):  # a few jobs in the queue at a time
            batch = [(source, role, path, client.submit(spec)) for source, role, path, spec in jobs[start:start + 16]]
            for source, role, path, stream in batch:
                t0 = time.monotonic()  # the wait for this job's answer, the jobs ahead in the batch aside
                try:
                    events = list(stream)
                    outcomes.append((source.name, role, "done", str(events[-1]), time.monotonic() - t0))
                except ServerError as exc:
                    outcomes.append((source.name, role, exc.code, str(exc), time.monotonic() - t0))
                    assert str(path) in str(exc), f"{source.name} as {role}: the error does not name the file: {exc}"
                assert server.proc.poll() is None, f"the server died on {source.name} as the {role}"
        wrong = [o for o in outcomes if o[2] != "bad_request"]
        assert not wrong, "\n".join(f"{name} as {role}: {code}: {message}" for name, role, code, message, _ in wrong)
        assert not [o for o in outcomes if "Traceback" in o[3]]
        assert client.hello()["protocol_version"] == PROTOCOL_VERSION
        done = list(client.submit(JobSpec("colormatch", (1, 1), good)))[-1]
        assert isinstance(done, Done)
    assert server.proc.poll() is None
    slowest = max(outcomes, key=lambda o: o[4])
    print(f"{len(outcomes)} damaged inputs in {time.monotonic() - started:.1f} s; slowest {slowest[0]} as "
          f"{slowest[1]} ({slowest[4]:.2f} s)")


def test_a_damaged_frame_fails_the_job_before_any_frame_is_rendered(tmp_path, shared_data):
    """Frame 5 of 10 with a damaged header fails the job before frame 1 is written, naming that
    frame's file: the worker checks every input frame's header (opened as it opens frames to
    read them, under the server's input roots) before it renders anything."""
    shot = make_shot(tmp_path / "in", range(1, 11))
    bad = Path(shot["plate"].replace("####", "0005"))
    shutil.copyfile(shared_data / "exr" / "Damaged" / "NULL_pointer", bad)
    server = ServerProcess(tmp_path / "jobs", "--input-root", str(tmp_path / "in")).start()
    try:
        events: list[Any] = []
        with watchdog(60, server.proc.kill), Client(server.endpoint, timeout=60) as client:
            with pytest.raises(ServerError) as caught:
                # temporal 0: frame 1 alone is needed to render frame 1
                for event in client.submit(JobSpec("colormatch", (1, 10), shot, {"temporal": 0.0})):
                    events.append(event)
            assert caught.value.code == "bad_request", caught.value
            assert str(bad) in str(caught.value), caught.value
            assert not [e for e in events if isinstance(e, FrameReady)], "frames were rendered before the damaged one"
            assert list((tmp_path / "jobs").rglob("*.exr")) == [], "frames were written before the damaged one"
            good = make_shot(tmp_path / "in" / "good", range(1, 2))
            assert isinstance(list(client.submit(JobSpec("colormatch", (1, 1), good)))[-1], Done)
    finally:
        server.stop()


def test_a_frame_missing_a_channel_fails_the_job_before_any_frame_is_rendered(server, tmp_path):
    """Channels are checked from every frame's header before the work, as damage is."""
    shot = make_shot(tmp_path / "in", range(1, 11))
    write_exr(shot["fg"].replace("####", "0005"), Image(np.ones((48, 64, 3), np.float16), ("R", "G", "B")))
    with watchdog(60, server.proc.kill), Client(server.endpoint, timeout=60) as client:
        events: list[Any] = []
        with pytest.raises(ServerError) as caught:
            for event in client.submit(JobSpec("colormatch", (1, 10), shot, {"temporal": 0.0})):
                events.append(event)
        assert caught.value.code == "bad_request" and "frame 5 (plate " in str(caught.value)
        assert shot["fg"].replace("####", "0005") + "): the fg has no alpha channel A" in str(caught.value)
        assert not [e for e in events if isinstance(e, FrameReady)], "frames were rendered before the bad one"
