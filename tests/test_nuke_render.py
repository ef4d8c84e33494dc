"""The cvgen node's job path end to end, without Nuke, against a real `cvgen serve`.

Each test does what the node does: knob values into a job (the plain modules), inputs written
as EXR the way its Write nodes write them (half, zip, Nuke's channel sets), the job sent and
followed by a render session with a progress view standing in for Nuke's, and the results read
back as its Read node loads them.
"""

from __future__ import annotations

import dataclasses
import json
import re
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np
import pytest
from support import ServerProcess, make_shot

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "nuke_plugin"))

from cvgen_nuke import inputs, jobbuild, knobs, paths, session  # noqa: E402
from cvgen_nuke.jobbuild import RenderPlan  # noqa: E402
from cvgen_nuke.progress import CANCELLED, DONE, FAILED, JobProgress  # noqa: E402
from cvgen_nuke.schema import from_hello  # noqa: E402

from cvgen.protocol import Image, ServerUnavailable, frame_path  # noqa: E402
from cvgen.protocol.client import Client  # noqa: E402
from cvgen.protocol.errors import AuthenticationFailed, KeyFileError  # noqa: E402
from cvgen.server.auth import generate_keys  # noqa: E402
from cvgen.server.io.exr import read_exr, write_exr  # noqa: E402
from cvgen.server.ops import all_ops  # noqa: E402

#: Nuke channel sets as a Write node names them in the EXR file.
EXR_CHANNELS = {"rgb": ("R", "G", "B"), "rgba": ("R", "G", "B", "A"), "alpha": ("A",)}
#: The ops of the server under test, whose roles say which channels each Write node writes.
SERVER_OPS = from_hello({"ops": [op.schema() for op in all_ops().values()]})


class RecordingView:
    """A stand-in for the adapter's view: records what Nuke would show, cancels when told to."""

    def __init__(self, cancel_when=lambda progress: False) -> None:
        self.cancel_when = cancel_when
        self.latest: JobProgress | None = None
        self.percents: list[int] = []
        self.messages: list[str] = []
        self.reloads: list[tuple[int, str]] = []

    def cancel_requested(self) -> bool:
        return self.latest is not None and self.cancel_when(self.latest) or self.cancel_when is ALWAYS

    def show(self, progress: JobProgress) -> None:
        self.latest = progress
        self.percents.append(progress.percent)
        self.messages.append(progress.message)

    def frame_ready(self, frame: int, path: str) -> None:
        self.reloads.append((frame, path))


def ALWAYS(progress: JobProgress) -> bool:
    return True


def node_plan(server_endpoint: str, out: Path, frames: tuple[int, int], environ: Mapping[str, str] = {},
              **changes: object) -> tuple[RenderPlan, dict]:
    """What pressing Render computes from a fresh node's knobs plus a compositor's changes, on a
    workstation with the environment `environ` (where the key files may be named)."""
    hello = session.hello(server_endpoint, session.TIMEOUT_S, jobbuild.key_files({}, environ))
    info = from_hello(hello)
    values = {s.name: s.default for s in knobs.panel(info) if s.kind in knobs.VALUE_KINDS}
    values.update({knobs.SERVER: server_endpoint, knobs.OUTPUT: str(out), **changes})
    version = paths.next_version(paths.output_folder(str(values[knobs.OUTPUT]), "", "cvgen1"))
    plan = jobbuild.plan_render(values, info, ["plate", "fg"], frames, version, "cvgen1", environ)
    return plan, hello


def write_inputs_like_nuke(plan: RenderPlan, shot: dict[str, str]) -> dict[str, dict[int, Image]]:
    """The node's Write nodes: each input for the frame range, EXR half zip, its channel set."""
    paths.make_folders(plan.job.inputs.values())
    written: dict[str, dict[int, Image]] = {}
    for role, sequence in plan.job.inputs.items():
        names = EXR_CHANNELS[inputs.write_channels(SERVER_OPS.op(plan.job.op), role)]
        for f in plan.job.frame_numbers:
            source = read_exr(frame_path(shot[role], f))
            image = Image(source.stack(names, "float16"), names)
            write_exr(frame_path(sequence, f), image, compression="zip", dtype="half")
            written.setdefault(role, {})[f] = image
    return written


def check_results_like_the_read_node(plan: RenderPlan, inputs: dict[str, dict[int, Image]],
                                     provenance: bool = True) -> None:
    """Every frame loads; outside the matte it is the plate bit for bit; inside, the op worked.

    Frames that came back inline carry no provenance: the server's `frame` message does not
    include it in the image's attributes (it only adds it when writing its own file)."""
    changed = 0
    for f in plan.job.frame_numbers:
        result = read_exr(frame_path(plan.results, f))
        plate, fg = inputs["plate"][f], inputs["fg"][f]
        assert result.pixels.dtype == np.float16 and result.data_window == plate.data_window
        assert not provenance or result.attributes["cvgen:op"] == plan.job.op
        rgb = result.stack(("R", "G", "B"), "float16")
        outside = fg.channel("A") == 0
        assert outside.any() and (~outside).any()
        assert np.array_equal(rgb[outside].view(np.uint16), plate.pixels[outside].view(np.uint16))
        alpha = fg.channel("A").astype(np.float32)[..., None]
        over = fg.stack(("R", "G", "B")) + plate.stack(("R", "G", "B")) * (1 - alpha)
        changed += int(np.count_nonzero(np.abs(rgb[~outside].astype(np.float32) - over[~outside]) > 1e-2))
    assert changed > 0, "the op left the foreground as a plain over"


@pytest.fixture
def shot(tmp_path: Path) -> dict[str, str]:
    return make_shot(tmp_path / "shot", range(1001, 1004))


def test_render_by_paths_on_a_shared_file_system(server, tmp_path, shot):
    plan, hello = node_plan(server.endpoint, tmp_path / "comp", (1001, 1003),
                            **{knobs.OP: "colormatch", "colormatch__strength": 0.8})
    inputs = write_inputs_like_nuke(plan, shot)
    submission = jobbuild.submission(plan, hello)
    assert submission.inline_inputs == {} and submission.deliver_to is None  # loopback: paths

    view = RecordingView()
    progress = session.drive(session.RenderSession(submission), view, plan.job.frames)

    assert progress.outcome is not None and progress.outcome.state == DONE, progress.outcome
    assert plan.job.output == f"{tmp_path}/comp/v001"
    assert view.reloads == [(f, frame_path(plan.results, f)) for f in range(1001, 1004)]
    assert view.percents[-1] == 100 and view.percents == sorted(view.percents)
    assert progress.status(plan.job.output) == f"done: 3 frames in {tmp_path}/comp/v001"
    check_results_like_the_read_node(plan, inputs)
    spec = json.loads((tmp_path / "jobs" / progress.job_id / "spec.json").read_text())
    assert spec["inputs"] == plan.job.inputs and spec["params"]["strength"] == 0.8

    again, _ = node_plan(server.endpoint, tmp_path / "comp", (1001, 1003))
    assert again.job.output == f"{tmp_path}/comp/v002", "a second render must not reuse the first's folder"


def test_render_inline_when_the_server_does_not_share_files(server, tmp_path, shot):
    plan, hello = node_plan(server.endpoint, tmp_path / "comp", (1001, 1003), **{knobs.TRANSFER: "inline"})
    inputs = write_inputs_like_nuke(plan, shot)
    submission = jobbuild.submission(plan, hello)
    assert submission.job.inputs == {} and submission.job.output is None
    assert submission.deliver_to == plan.results

    view = RecordingView()
    progress = session.drive(session.RenderSession(submission), view, plan.job.frames)

    assert progress.outcome is not None and progress.outcome.state == DONE, progress.outcome
    assert [path for _, path in view.reloads] == [frame_path(plan.results, f) for f in range(1001, 1004)]
    check_results_like_the_read_node(plan, inputs, provenance=False)
    job_dir = tmp_path / "jobs" / progress.job_id
    spec = json.loads((job_dir / "spec.json").read_text())
    assert all(p.startswith(str(job_dir)) for p in spec["inputs"].values()), "the server read our files"
    for f in range(1001, 1004):
        local = read_exr(frame_path(plan.results, f))
        remote = read_exr(job_dir / "frames" / f"cvgen1.{f:04d}.exr")
        assert np.array_equal(local.pixels.view(np.uint16), remote.pixels.view(np.uint16))


@pytest.fixture(scope="module")
def long_shot(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return make_shot(tmp_path_factory.mktemp("long"), range(1, 41), size=(512, 512))


@pytest.mark.parametrize("when", ["after the first progress", "before the server accepted it"])
def test_cancel_in_the_progress_window_cancels_on_the_server(server, tmp_path, long_shot, when):
    plan, hello = node_plan(server.endpoint, tmp_path / "comp", (1, 40))
    write_inputs_like_nuke(plan, long_shot)
    cancel_when = (lambda p: p.fraction > 0) if when == "after the first progress" else ALWAYS
    view = RecordingView(cancel_when)

    progress = session.drive(session.RenderSession(jobbuild.submission(plan, hello)), view, plan.job.frames)

    assert progress.outcome is not None and progress.outcome.state == CANCELLED, progress.outcome
    assert progress.job_id
    with Client(server.endpoint) as client:
        assert client.status(progress.job_id)["state"] == "cancelled"
    written = sorted(Path(plan.job.output).glob("cvgen1.*.exr"))
    assert len(written) == len(progress.finished) < 40
    assert progress.status(plan.job.output).startswith(f"cancelled: {len(written)} of 40 frames finished")


def test_a_refused_job_fails_with_the_servers_reason(server, tmp_path, shot):
    plan, hello = node_plan(server.endpoint, tmp_path / "comp", (1001, 1003))
    write_inputs_like_nuke(plan, shot)
    Path(frame_path(plan.job.inputs["fg"], 1002)).unlink()

    progress = session.drive(session.RenderSession(jobbuild.submission(plan, hello)), RecordingView(),
                             plan.job.frames)

    assert progress.outcome is not None and progress.outcome.state == FAILED
    assert progress.outcome.message.startswith("the cvgen server refused the job: ")
    assert "fg" in progress.outcome.message and "1002" in progress.outcome.message


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_no_server_is_a_clear_failure_not_a_hang(tmp_path, shot):
    address = f"tcp://127.0.0.1:{free_port()}"
    with pytest.raises(ServerUnavailable, match="is `cvgen serve` running there"):
        session.wait(session.in_worker(session.hello, address, 0.5), lambda: False)
    plan = jobbuild.plan_render(
        {**{s.name: s.default for s in knobs.panel(from_hello({}))}, knobs.OP: "colormatch", knobs.SERVER: address},
        from_hello({"ops": [{"name": "colormatch", "inputs": ["plate", "fg"]}]}),
        ["plate", "fg"], (1001, 1003), str(tmp_path / "v001"), "cvgen1")
    submission = jobbuild.submission(plan, {})
    progress = session.drive(session.RenderSession(submission, timeout=0.5), RecordingView(), plan.job.frames)
    assert progress.outcome is not None and progress.outcome.state == FAILED
    assert address in progress.outcome.message


# -- a server that requires CurveZMQ keys ------------------------------------------------------

@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Key folders as `cvgen keys generate` writes them: the studio server's, with this
    workstation ("comp") allowed, and another server's, whose client the studio never allowed."""
    folder = tmp_path_factory.mktemp("keys")
    generate_keys(folder / "studio", ["comp"])
    generate_keys(folder / "elsewhere", ["stranger"])
    return folder


@pytest.fixture
def keyed_server(tmp_path: Path, keys: Path) -> Iterator[ServerProcess]:
    """`cvgen serve --keys` on a free loopback port."""
    srv = ServerProcess(tmp_path / "jobs", "--keys", str(keys / "studio")).start()
    yield srv
    if srv.proc.poll() is None:
        srv.stop(signal.SIGKILL)


def workstation(keys: Path, client_key: Path | None = None) -> dict[str, str]:
    """The environment a studio sets on the comp workstation: the server's public key, its own secret key."""
    return {"CVGEN_SERVER_KEY": str(keys / "studio" / "server.key"),
            "CVGEN_CLIENT_KEY": str(client_key or keys / "studio" / "clients" / "comp.key_secret")}


def test_render_through_a_key_protected_server_with_the_workstations_keys(keyed_server, keys, tmp_path, shot):
    """A server elsewhere: keys from the workstation's environment, frames sent and returned as pixels."""
    plan, hello = node_plan(keyed_server.endpoint, tmp_path / "comp", (1001, 1003), workstation(keys),
                            **{knobs.TRANSFER: "inline"})
    assert plan.keys == jobbuild.KeyFiles(str(keys / "studio" / "server.key"),
                                          str(keys / "studio" / "clients" / "comp.key_secret"))
    inputs = write_inputs_like_nuke(plan, shot)
    submission = jobbuild.submission(plan, hello)

    progress = session.drive(session.RenderSession(submission), RecordingView(), plan.job.frames)

    assert progress.outcome is not None and progress.outcome.state == DONE, progress.outcome
    check_results_like_the_read_node(plan, inputs, provenance=False)
    with Client(keyed_server.endpoint, server_key=plan.keys.server_key, client_key=plan.keys.client_key) as client:
        assert client.status(progress.job_id)["state"] == "done"


def test_a_missing_key_file_or_a_key_the_server_never_allowed_is_a_clear_failure(keyed_server, keys, tmp_path):
    missing = tmp_path / "comp.key_secret"
    plan, _ = node_plan(keyed_server.endpoint, tmp_path / "comp", (1001, 1003), workstation(keys))
    no_file = f"client key {missing} does not exist; `cvgen keys generate` makes key files"
    # Refresh ops / a new node: the message box says which file.
    with pytest.raises(KeyFileError, match=re.escape(no_file)):
        session.wait(session.in_worker(session.hello, keyed_server.endpoint, 2.0,
                                       jobbuild.key_files({knobs.CLIENT_KEY: str(missing)}, workstation(keys))),
                     lambda: False)
    # Render: the node's status line says the same, and nothing was sent.
    lost = dataclasses.replace(jobbuild.submission(plan, {}), keys=jobbuild.key_files({}, workstation(keys, missing)))
    progress = session.drive(session.RenderSession(lost, timeout=2.0), RecordingView(), plan.job.frames)
    assert progress.outcome is not None and progress.outcome.state == FAILED
    assert progress.outcome.message == no_file

    stranger = workstation(keys, keys / "elsewhere" / "clients" / "stranger.key_secret")
    refused = (f"the cvgen server at {keyed_server.endpoint} refused this workstation's key: ask whoever runs it "
               "to put this workstation's public key (NAME.key) in the server's authorized/ folder")
    start = time.monotonic()
    with pytest.raises(AuthenticationFailed, match=re.escape(refused)):
        session.wait(session.in_worker(session.hello, keyed_server.endpoint, 1.0, jobbuild.key_files({}, stranger)),
                     lambda: False)
    unknown = dataclasses.replace(jobbuild.submission(plan, {}), keys=jobbuild.key_files({}, stranger))
    progress = session.drive(session.RenderSession(unknown, timeout=1.0), RecordingView(), plan.job.frames)
    assert time.monotonic() - start < 15, "refused, not hung"
    assert progress.outcome is not None and progress.outcome.state == FAILED
    assert progress.outcome.message == refused
    assert not list((tmp_path / "jobs").glob("*/spec.json")), "no job reached the server"
