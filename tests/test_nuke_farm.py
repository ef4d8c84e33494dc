"""Submit to farm without Nuke: the node's job as a job file, handed to the real `cvgen farm`.

Each test does what the adapter does: the Farm tab's knob values checked (`farm.settings`), the
job planned as Render plans it, the inputs written where the node's Write nodes write them, and
`farm.submit` running the main environment's `cvgen` executable in a subprocess.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support import make_shot

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
