"""Paths that change after they were checked: swapped folders, restarts under narrower roots, races.

The server tests run a real server with --input-root and --output-root (on loopback: roots apply
whenever they are given) and a single worker, so a job can be held in the queue behind a long one
while the test swaps a folder for a symlink; swaps in the middle of a job go through `run_job`,
whose `on_frame` runs between two frames.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from pathlib import Path
from typing import Callable

import pytest

from cvgen.protocol import CvgenError, JobSpec, ProtocolError, ServerError
from cvgen.protocol.client import Accepted, Client, Done, FrameReady, JobStream, Progress
from cvgen.protocol.errors import JobCancelled, ServerUnavailable
from cvgen.server.io.exr import read_exr
from cvgen.server.jobs.runner import run_job
from cvgen.server.paths import PathPolicy

from support import ServerProcess, make_shot

#: Frames of the job that keeps the single worker busy; it is cancelled long before it ends.
LONG = 400
EXR_MAGIC = b"\x76\x2f\x31\x01"


@pytest.fixture
def base(tmp_path: Path) -> Path:
    """in/ and out/ are the roots; outside/ is where nothing may ever be read or written."""
    for folder in ("in", "out", "outside"):
        (tmp_path / folder).mkdir()
    return tmp_path


def rooted(base: Path, inputs: Path | None = None, outputs: Path | None = None) -> ServerProcess:
    return ServerProcess(base / "jobs", "--device", "cpu", "--input-root", str(inputs or base / "in"),
                         "--output-root", str(outputs or base / "out"))


def long_shot(base: Path) -> dict[str, str]:
    """LONG frames inside the input root, every one a symlink to the same two files (symlinks that
    stay inside the roots are legitimate)."""
    shot = make_shot(base / "in" / "long", range(1, 2))
    for role, template in shot.items():
        first = Path(template.replace("####", "0001"))
        for f in range(2, LONG + 1):
            Path(template.replace("####", f"{f:04d}")).symlink_to(first.name)
    return shot


def start_blocker(client: Client, base: Path) -> JobStream:
    """A long job, running once this returns: the next job waits in the queue behind it."""
    stream = client.submit(JobSpec("colormatch", (1, LONG), long_shot(base)))
    for event in stream:
        if isinstance(event, (Progress, FrameReady)):
            return stream
    raise AssertionError("the long job ended before it started")


def cancel(client: Client, blocker: JobStream) -> None:
    client.cancel(blocker.job_id)
    with pytest.raises(JobCancelled):
        blocker.wait()


def swap_for_symlink(folder: Path, target: Path) -> None:
    folder.rename(folder.with_name(folder.name + "-checked"))
    folder.symlink_to(target, target_is_directory=target.is_dir())


def exrs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*.exr"))


def test_an_output_folder_swapped_for_a_symlink_after_submit_gets_no_frames(base):
    shot = make_shot(base / "in" / "shot", range(1, 3))
    output = base / "out" / "a"
    output.mkdir()
    server = rooted(base).start()
    try:
        with Client(server.endpoint, 30) as client:
            blocker = start_blocker(client, base)
            job = client.submit(JobSpec("colormatch", (1, 2), shot, output=str(output)))
            assert isinstance(next(job), Accepted)
            swap_for_symlink(output, base / "outside")
            cancel(client, blocker)
            with pytest.raises(ServerError, match=f"output folder {output} is outside the folders this server "
                                                  "writes") as err:
                job.wait()
            assert err.value.code == "bad_request"
            assert client.hello()  # the worker lives on
    finally:
        assert server.stop() == 0
    assert exrs(base / "outside") == [] and exrs(base / "out") == []


@pytest.mark.parametrize("narrowed", ["output", "input"])
def test_a_job_resumed_under_narrower_roots_fails_and_writes_nothing(base, narrowed):
    shot = make_shot(base / "in" / "shot", range(1, 3))
    output = base / "out" / "wide" / "b"
    server = rooted(base).start()
    with Client(server.endpoint, 30) as client:
        blocker = start_blocker(client, base)
        job = client.submit(JobSpec("colormatch", (1, 2), shot, output=str(output)))
        accepted = next(job)
        assert isinstance(accepted, Accepted)
    server.stop(signal.SIGKILL)

    (base / "out" / "narrow").mkdir()
    narrower = {"output": {"outputs": base / "out" / "narrow"}, "input": {"inputs": base / "in" / "long"}}[narrowed]
    server = rooted(base, **narrower).start()
    try:
        with Client(server.endpoint, 30) as client:
            status = client.status(accepted.job_id)
            client.cancel(blocker.job_id)
            while client.status(blocker.job_id)["state"] not in ("cancelled", "failed", "done"):
                time.sleep(0.02)
    finally:
        assert server.stop() == 0
    words = {"output": f"output folder {output} is outside the folders this server writes",
             "input": f"{base / 'in' / 'shot'}/"}[narrowed]
    assert status["state"] == "failed" and status["code"] == "bad_request", status
    assert status["message"].startswith("could not resume after a restart:") and words in status["message"]
    assert "is outside the folders this server" in status["message"]
    assert not output.exists() and exrs(base / "out") == []


def test_the_worker_checks_a_stored_job_again_when_it_starts(base):
    """A finished job submitted again with its id runs with its stored output: under roots narrowed
    since, the worker refuses it rather than write to the old folder."""
    shot = make_shot(base / "in" / "shot", range(1, 3))
    old = base / "out" / "old"
    server = rooted(base).start()
    with Client(server.endpoint, 30) as client:
        done = client.submit(JobSpec("colormatch", (1, 2), shot, output=str(old), job_id="again")).wait()
    assert server.stop() == 0
    for path in done.frames.values():
        os.unlink(path)

    (base / "out" / "new").mkdir()
    server = rooted(base, outputs=base / "out" / "new").start()
    try:
        with Client(server.endpoint, 30) as client:
            spec = JobSpec("colormatch", (1, 2), shot, output=str(base / "out" / "new"), job_id="again")
            with pytest.raises(ServerError, match=f"output folder {old} is outside the folders this server writes"):
                client.submit(spec).wait()
    finally:
        assert server.stop() == 0
    assert exrs(base / "out") == []


def wait_for_reader(fifo: Path, finished: Callable[[], bool], seconds: float = 20) -> int | None:
    """Once a process has `fifo` open for reading, a write end of it (opening one no longer blocks);
    None if the job finishes first."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise
        if finished():
            return None
        time.sleep(0.005)
    raise AssertionError(f"the server neither opened nor refused {fifo}")


def test_an_input_frame_swapped_for_a_symlink_between_check_and_read_is_never_opened(base):
    """The frame is a FIFO inside the root, so a server that checks the path and then opens it by
    name waits in `open` between the two, while the test swaps the frame for a symlink to a FIFO
    outside the roots. Whether anything ever opens the outside one shows whether the swap got through."""
    shot = make_shot(base / "in" / "race", range(1, 2))
    plate = Path(shot["plate"].replace("####", "0001"))
    plate.unlink()
    os.mkfifo(plate)
    secret = base / "outside" / "secret.exr"
    os.mkfifo(secret)
    server = rooted(base).start()
    opened_outside = None
    try:
        with Client(server.endpoint, 2) as client:
            job = client.submit(JobSpec("colormatch", (1, 1), shot))
            accepted = next(job)

            def finished() -> bool:
                try:
                    return client.status(accepted.job_id)["state"] in ("failed", "done", "cancelled")
                except ServerUnavailable:  # a server stuck opening a FIFO answers nothing
                    return False

            held = wait_for_reader(plate, finished)
            if held is not None:
                swap_for_symlink(plate, secret)
                try:
                    os.write(held, EXR_MAGIC)
                except BrokenPipeError:
                    pass
                os.close(held)
                opened_outside = wait_for_reader(secret, finished)
            assert opened_outside is None, "the server opened a file outside its input roots"
            with pytest.raises(ServerError, match=f"plate frame {plate} is not a plain file") as err:
                job.wait()
            assert err.value.code == "bad_request"
    finally:
        server.stop(signal.SIGKILL)
        if opened_outside is not None:
            os.close(opened_outside)


def test_an_output_folder_swapped_between_frames_stops_the_job(base):
    """The folder is opened again, without following symlinks, for every frame written."""
    shot = make_shot(base / "in" / "shot", range(1, 3))
    output = base / "out" / "d"
    paths = PathPolicy.roots([base / "in"], [base / "out"])

    def swap_after_first(frame: int, path: Path, image: object) -> None:
        if frame == 1:
            swap_for_symlink(output, base / "outside")

    with pytest.raises(CvgenError, match=f"output folder {output} changed after it was checked: {output} is now "
                                         "a symlink") as err:
        run_job(JobSpec("colormatch", (1, 2), shot, output=str(output)), output, on_frame=swap_after_first,
                paths=paths)
    assert err.value.code == "bad_request"
    assert exrs(base / "outside") == [] and exrs(base / "out") == ["colormatch.0001.exr"]


def test_symlinks_that_stay_inside_the_roots_keep_working(base):
    make_shot(base / "in" / "real", range(1, 3))
    (base / "in" / "linked").symlink_to(base / "in" / "real", target_is_directory=True)
    (base / "out" / "real").mkdir()
    (base / "out" / "linked").symlink_to(base / "out" / "real", target_is_directory=True)
    linked = {role: str(base / "in" / "linked" / f"{role}.####.exr") for role in ("plate", "fg")}
    server = rooted(base).start()
    try:
        with Client(server.endpoint, 30) as client:
            into_link = client.submit(JobSpec("colormatch", (1, 2), linked, output=str(base / "out" / "linked"))).wait()
            nested = client.submit(JobSpec("colormatch", (1, 2), linked, name="deep",
                                           output=str(base / "out" / "new" / "deeper"))).wait()
    finally:
        assert server.stop() == 0
    assert isinstance(into_link, Done) and exrs(base / "out" / "real") == ["colormatch.0001.exr", "colormatch.0002.exr"]
    assert exrs(base / "out" / "new" / "deeper") == ["deep.0001.exr", "deep.0002.exr"]
    assert [Path(p).parent for p in nested.frames.values()] == [base / "out" / "new" / "deeper"] * 2


def test_a_checked_frame_is_read_from_the_file_opened_not_from_its_name_now(base):
    inside = make_shot(base / "in" / "shot", range(1, 2), seed=1)
    outside = make_shot(base / "outside" / "shot", range(1, 2), seed=2)
    plate = Path(inside["plate"].replace("####", "0001"))
    paths = PathPolicy.roots([base / "in"], [base / "out"])
    fd = paths.open_input_file("plate", str(plate))
    assert fd is not None
    try:
        expected = read_exr(plate).pixels
        swap_for_symlink(plate, Path(outside["plate"].replace("####", "0001")))
        assert (read_exr(plate, fd).pixels == expected).all()
    finally:
        os.close(fd)
    with pytest.raises(ProtocolError, match=f"plate frame {plate} leads outside the folders this server reads"):
        paths.open_input_file("plate", str(plate))
