"""Submit to farm without Nuke: the node's job as a job file, handed to the real `cvgen farm`.

Each test does what the adapter does: the Farm tab's knob values checked (`farm.settings`), the
job planned as Render plans it, the inputs written where the node's Write nodes write them, and
`farm.submit` running the main environment's `cvgen` executable in a subprocess.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from opencue_proto import cue_pb2_grpc, job_pb2_grpc
from support import make_shot
from test_farm_opencue import StandInCuebot

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "nuke_plugin"))

from cvgen_nuke import farm, jobbuild, knobs, paths  # noqa: E402
from cvgen_nuke.errors import RenderFailed, SetupError  # noqa: E402
from cvgen_nuke.jobbuild import RenderPlan  # noqa: E402
from cvgen_nuke.schema import from_hello  # noqa: E402

from cvgen.protocol import CvgenError, frame_path  # noqa: E402
from cvgen.protocol.farm import read_job_file  # noqa: E402
from cvgen.server.ops import all_ops  # noqa: E402

INFO = from_hello({"ops": [op.schema() for op in all_ops().values()]})
FRAMES = (1001, 1005)
_VENV_CVGEN = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "cvgen"
CVGEN = str(_VENV_CVGEN) if _VENV_CVGEN.exists() else (shutil.which("cvgen") or "cvgen")
needs_cvgen = pytest.mark.skipif(shutil.which(CVGEN) is None, reason="no cvgen executable in this environment")


def node_values(out: Path, **changes: object) -> dict[str, object]:
    """Knob values of a fresh node, as the adapter reads them, with a compositor's changes."""
    values = {s.name: s.default for s in knobs.panel(INFO) if s.kind in knobs.VALUE_KINDS}
    values.update({knobs.OUTPUT: str(out), knobs.FARM_CVGEN: CVGEN, **changes})
    return values


def plan_for(values: dict[str, object]) -> RenderPlan:
    version = paths.next_version(paths.output_folder(str(values[knobs.OUTPUT]), "", "cvgen1"))
    return jobbuild.plan_render(values, INFO, ["plate", "fg"], FRAMES, version, "cvgen1")


def write_inputs_like_nuke(plan: RenderPlan, shot: dict[str, str]) -> None:
    """The node's Write nodes render each input into the version folder (the bytes do not matter here)."""
    paths.make_folders(plan.job.inputs.values())
    for role, sequence in plan.job.inputs.items():
        for f in plan.job.frame_numbers:
            shutil.copyfile(frame_path(shot[role], f), frame_path(sequence, f))


@pytest.fixture
def shot(tmp_path: Path) -> dict[str, str]:
    return make_shot(tmp_path / "shot", range(FRAMES[0], FRAMES[1] + 1))


@needs_cvgen
def test_openjd_writes_the_job_file_and_a_bundle_beside_it(tmp_path, shot):
    values = node_values(tmp_path / "comp", **{knobs.FARM_CHUNK: 2})
    plan = plan_for(values)
    write_inputs_like_nuke(plan, shot)

    result = farm.submit(plan, farm.settings(values))

    comp = (tmp_path / "comp").as_posix()
    assert result.job_file == f"{comp}/farm/cvgen1_v001.json" and Path(result.job_file).is_file()
    assert result.output == f"{comp}/farm/cvgen1_v001_openjd"
    assert (Path(result.output) / "template.yaml").is_file()
    written = read_job_file(result.job_file)
    assert written.engine == "openjd" and written.chunk == 2
    assert written.job == plan.job  # exactly what Render would send, inputs as paths
    assert written.job.inputs == {r: f"{comp}/v001/inputs/{r}.####.exr" for r in ("plate", "fg")}
    assert written.job.output == f"{comp}/v001"
    assert "3 task(s)" in result.report  # 5 frames in chunks of 2
    assert f"deadline bundle submit {result.output}" in result.message
    assert result.status == f"farm: wrote the OpenJD bundle {result.output}"

    # A second submission gets its own version folder and job file; the first is left alone.
    again = plan_for(values)
    write_inputs_like_nuke(again, shot)
    assert farm.submit(again, farm.settings(values)).job_file == f"{comp}/farm/cvgen1_v002.json"
    assert read_job_file(result.job_file).job.output == f"{comp}/v001"


@needs_cvgen
def test_opencue_spec_only_writes_the_xml_with_show_and_shot(tmp_path, shot):
    values = node_values(tmp_path / "comp", **{knobs.FARM_ENGINE: "OpenCue", knobs.FARM_SPEC_ONLY: True,
                                                knobs.FARM_SHOW: "testshow", knobs.FARM_SHOT: "sh010"})
    plan = plan_for(values)
    write_inputs_like_nuke(plan, shot)
    settings = farm.settings(values)
    assert farm.command(settings, "/j/cvgen1_v001.json")[1:] == ["farm", "opencue", "/j/cvgen1_v001.json",
                                                                 "-o", "/j/cvgen1_v001.xml"]

    result = farm.submit(plan, settings)

    assert result.output is not None and result.output.endswith("/farm/cvgen1_v001.xml")
    spec = Path(result.output).read_text()
    assert "testshow" in spec and "sh010" in spec
    written = read_job_file(result.job_file)
    assert (written.engine, written.show, written.shot) == ("opencue", "testshow", "sh010")
    assert result.status.startswith("farm: wrote the OpenCue job spec")


@needs_cvgen
def test_opencue_submit_reports_cvgen_farms_own_reason(tmp_path, shot):
    values = node_values(tmp_path / "comp", **{knobs.FARM_ENGINE: "OpenCue"})
    plan = plan_for(values)
    write_inputs_like_nuke(plan, shot)
    settings = farm.settings(values)
    assert farm.command(settings, "/j/a.json")[1:] == ["farm", "opencue", "/j/a.json", "--submit"]
    environ = {k: v for k, v in os.environ.items() if k != "CUEBOT_HOSTS"}
    with pytest.raises(RenderFailed, match=r"^`cvgen farm` refused the job: CUEBOT_HOSTS is not set"):
        farm.submit(plan, settings, environ)


@needs_cvgen
def test_a_job_cvgen_farm_refuses_fails_with_its_message(tmp_path, shot):
    # A colour space this plugin passes through as it stands; `cvgen farm` checks it before the farm sees it.
    values = node_values(tmp_path / "comp", **{knobs.COLORSPACE: "no-such-space"})
    plan = plan_for(values)
    write_inputs_like_nuke(plan, shot)
    with pytest.raises(RenderFailed) as caught:
        farm.submit(plan, farm.settings(values))
    message = str(caught.value)
    assert message.startswith("`cvgen farm` refused the job: ") and "cvgen: error:" not in message
    assert "no-such-space" in message
    assert "Traceback" not in message


@pytest.mark.parametrize("chunk", [0, -3, 2.5, "ten", True])
def test_a_bad_chunk_size_is_named_before_anything_is_written(chunk):
    with pytest.raises(SetupError, match="the chunk size must be a whole number of frames"):
        farm.settings({knobs.FARM_CHUNK: chunk})


def test_settings_from_the_knobs():
    assert farm.settings({}) == farm.FarmSettings("openjd")
    got = farm.settings({knobs.FARM_ENGINE: "OpenCue", knobs.FARM_CHUNK: 4.0, knobs.FARM_SHOW: " show ",
                         knobs.FARM_SPEC_ONLY: 1, knobs.FARM_CVGEN: "  "})
    assert got == farm.FarmSettings("opencue", 4, "show", "", True, "cvgen")
    with pytest.raises(SetupError, match="OpenJD or OpenCue, not 'Tractor'"):
        farm.settings({knobs.FARM_ENGINE: "Tractor"})
    assert tuple(farm.ENGINES) == knobs.FARM_ENGINES


def test_a_missing_executable_says_which_knob_to_set(tmp_path):
    values = node_values(tmp_path / "comp", **{knobs.FARM_CVGEN: str(tmp_path / "no" / "cvgen")})
    plan = plan_for(values)
    with pytest.raises(SetupError, match=r"cvgen executable .*no/cvgen' was not found.*\"cvgen executable\" on the Farm tab"):
        farm.submit(plan, farm.settings(values))
    assert Path(farm.job_file(plan)).is_file()  # the job file is there for a TD to run by hand
    not_executable = tmp_path / "cvgen.txt"
    not_executable.write_text("")
    with pytest.raises(SetupError, match="cannot be run"):
        farm.run([str(not_executable), "farm"])


def test_errors_are_cvgen_errors_so_the_adapter_shows_them():
    assert issubclass(SetupError, CvgenError) and issubclass(RenderFailed, CvgenError)


def test_cvgen_farms_stderr_becomes_the_reason():
    stderr = "some warning\ncvgen: error: chunk size must be a whole number of frames\n"
    assert farm.error_message(stderr, 1) == "chunk size must be a whole number of frames"
    assert farm.error_message("Traceback ...\nKeyError: 'x'\n", 1) == "KeyError: 'x'"
    assert farm.error_message("", 3) == "it exited with status 3 and said nothing"


def test_a_hung_cvgen_farm_fails_instead_of_freezing_nuke():
    def hang(cmd, **kwargs):
        raise subprocess.TimeoutExpired(cmd, kwargs["timeout"])

    with pytest.raises(RenderFailed, match="did not finish within 5 seconds"):
        farm.run(["cvgen", "farm"], timeout=5, runner=hang)


def test_nukes_python_variables_do_not_reach_cvgen():
    env = farm.child_environment({"PYTHONHOME": "/nuke", "PYTHONPATH": "/nuke/lib", "CUEBOT_HOSTS": "cue", "PATH": "/bin"})
    assert env == {"CUEBOT_HOSTS": "cue", "PATH": "/bin"}


# -- Submit to farm in the background (what the node's button runs in the GUI) -------------------

class HeldCuebot(StandInCuebot):
    """A Cuebot that holds each launch until the test lets it go, or refuses it with `refusal`."""

    def __init__(self, refusal: str = "") -> None:
        super().__init__()
        self.refusal = refusal
        self.launching = threading.Event()
        self.go_on = threading.Event()

    def LaunchSpecAndWait(self, request, context):
        self.launching.set()
        self.go_on.wait(60)
        if self.refusal:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, self.refusal)
        return super().LaunchSpecAndWait(request, context)


@contextmanager
def cuebot_at(servicer: HeldCuebot) -> Iterator[str]:
    """The servicer on loopback over OpenCue's real gRPC API; yields its CUEBOT_HOSTS value."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    cue_pb2_grpc.add_CueInterfaceServicer_to_server(servicer, server)
    job_pb2_grpc.add_JobInterfaceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        servicer.go_on.set()
        server.stop(grace=None)


def farm_updates(updates: queue.Queue, timeout: float = 60) -> list[farm.FarmUpdate]:
    """The updates a node's status line gets, up to and including the last one (result or error)."""
    seen: list[farm.FarmUpdate] = []
    while not (seen and seen[-1].finished):
        seen.append(updates.get(timeout=timeout))
    return seen


def start_opencue(tmp_path: Path, shot: dict[str, str], hosts: str, submissions: farm.Submissions
                  ) -> tuple[queue.Queue, float]:
    """Press Submit to farm (OpenCue) on cvgen1 as the adapter does; returns its updates and how long the press took."""
    values = node_values(tmp_path / "comp", **{knobs.FARM_ENGINE: "OpenCue"})
    plan = plan_for(values)
    write_inputs_like_nuke(plan, shot)
    updates: queue.Queue = queue.Queue()
    began = time.monotonic()
    submissions.claim("cvgen1")
    submissions.start("cvgen1", plan, farm.settings(values), updates.put, {**os.environ, "CUEBOT_HOSTS": hosts})
    return updates, time.monotonic() - began


@needs_cvgen
def test_a_slow_cuebot_leaves_nuke_free_and_the_node_says_how_it_goes(tmp_path, shot):
    submissions = farm.Submissions(tick_s=0.2)
    cuebot = HeldCuebot()
    with cuebot_at(cuebot) as hosts:
        updates, pressed_s = start_opencue(tmp_path, shot, hosts, submissions)
        assert pressed_s < 0.5  # the button returns at once: Nuke's UI is not held while the Cuebot thinks
        assert cuebot.launching.wait(60)
        assert updates.get(timeout=5).status == "farm: submitting to OpenCue"
        ticking = updates.get(timeout=5).status
        assert re.fullmatch(r"farm: submitting to OpenCue, \d+ s so far \(gives up after 120 s\)", ticking)
        with pytest.raises(SetupError, match=r"^cvgen1 is still handing its last job to the farm \(for \d+ s\): "
                                             r"wait until its status line says how that went$"):
            submissions.claim("cvgen1")
        submissions.claim("cvgen2")  # another node is not held up by this one
        cuebot.go_on.set()
        last = farm_updates(updates)[-1]
    assert last.error is None and last.result is not None
    assert last.status == "farm: submitted to OpenCue (cvgen1_v001.json)"
    assert "launched OpenCue job" in last.result.report and len(cuebot.specs) == 1
    submissions.claim("cvgen1")  # done: the node takes a new submission


@needs_cvgen
@pytest.mark.parametrize("refusal", ["", "show 'nosuchshow' does not exist"], ids=["unreachable", "refused"])
def test_a_cuebot_that_fails_the_submission_reaches_the_node_as_one_sentence(tmp_path, shot, refusal):
    submissions = farm.Submissions()
    cuebot = HeldCuebot(refusal)
    cuebot.go_on.set()
    with cuebot_at(cuebot) as hosts:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            closed = f"127.0.0.1:{s.getsockname()[1]}"
        updates, _ = start_opencue(tmp_path, shot, hosts if refusal else closed, submissions)
        last = farm_updates(updates)[-1]
    assert isinstance(last.error, RenderFailed) and last.result is None
    where = hosts if refusal else closed
    expected = (f"the Cuebot at {where} did not take the job: .*{refusal}" if refusal else
                f"cannot reach the Cuebot at {where} \\(CUEBOT_HOSTS\\): check the host, the port")
    assert re.match(f"^farm submission failed: `cvgen farm` refused the job: {expected}", last.status)
    assert "\n" not in last.status and "Traceback" not in last.status, last.status
    assert str(last.error) == last.status.removeprefix("farm submission failed: ")
    submissions.claim("cvgen1")  # a failed submission frees the node too
