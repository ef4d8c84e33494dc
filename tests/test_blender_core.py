"""The Blender add-on's logic that does not need Blender (blender_addon/core), in the main
environment: parameters from op schemas, strip planning, paths, the network rule, jobs against a
real `cvgen serve`, the local server, and the extension build's wheel requests."""

from __future__ import annotations

import importlib
import importlib.util
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from cvgen.protocol.client import Accepted, Done, FrameReady, Progress
from cvgen.protocol.schema import parse_ops
from support import ServerProcess, make_shot

REPO = Path(__file__).resolve().parents[1]


def _load(name: str, folder: Path) -> ModuleType:
    """`folder` as the package `name`: blender_addon/__init__.py imports bpy, core/ does not."""
    spec = importlib.util.spec_from_file_location(name, folder / "__init__.py", submodule_search_locations=[str(folder)])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


core = _load("cvgen_blender_core", REPO / "blender_addon" / "core")
SetupError = core.SetupError
connection, farm, jobs, local_server, params, shots, strips = (
    importlib.import_module(f"cvgen_blender_core.{name}")
    for name in ("connection", "farm", "jobs", "local_server", "params", "shots", "strips")
)

_spec = importlib.util.spec_from_file_location("cvgen_blender_build", REPO / "blender_addon" / "build.py")
assert _spec is not None and _spec.loader is not None
build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build)

SCHEMA = parse_ops({"ops": [{
    "name": "grade", "summary": "s", "inputs": ["plate", "fg"], "optional_inputs": ["matte"],
    "params": [
        {"name": "strength", "type": "float", "default": 1.0, "help": "h", "min": 0, "max": 1},
        {"name": "steps", "type": "int", "default": 20, "help": ""},
        {"name": "look", "type": "choice", "default": "warm", "help": "", "choices": ["warm", "cool"]},
        {"name": "prompt", "type": "str", "default": "", "help": ""},
        {"name": "future", "type": "tensor", "default": None, "help": "a kind this add-on does not know"},
    ],
}]})[0]


# -- parameters ----------------------------------------------------------------------------

def test_params_follow_the_schema_and_keep_the_artists_values_that_still_fit() -> None:
    values = params.from_schema(SCHEMA, {"strength": 0.25, "steps": "many", "look": "sepia", "gone": 1})
    assert [(p.name, p.kind, p.value) for p in values] == [
        ("strength", "float", 0.25), ("steps", "int", 20), ("look", "choice", "warm"), ("prompt", "str", ""),
    ]
    assert values[2].choices == ("warm", "cool") and values[0].help == "h"


def test_a_whole_float_left_from_a_float_parameter_is_kept_as_an_int_and_bools_are_not_numbers() -> None:
    values = params.from_schema(SCHEMA, {"strength": True, "steps": 12.0, "prompt": 3})
    assert [(p.name, p.value) for p in values] == [("strength", 1.0), ("steps", 12), ("look", "warm"), ("prompt", "")]
    assert type(values[1].value) is int


def test_job_params_drop_stale_ones_and_send_floats_as_the_artist_saw_them() -> None:
    sent, warnings = params.job_params(SCHEMA, {"strength": 0.009999999776482582, "steps": 7, "old": 1})
    assert sent == {"strength": 0.01, "steps": 7}
    assert warnings == ["grade has no parameter 'old' any more; it was not sent"]


def test_an_unknown_op_names_what_the_server_offers() -> None:
    with pytest.raises(SetupError, match="the server has no op 'blur'; it offers grade"):
        params.find_op({"grade": SCHEMA}, "blur")


# -- strips --------------------------------------------------------------------------------

def exr_strip(files: dict[int, str], kind: str = "IMAGE", span: tuple[int, int] = (1001, 1005)) -> strips.StripInfo:
    return strips.StripInfo("plate", kind, 1, span, files)


def test_an_exr_sequence_numbered_like_the_timeline_goes_by_path() -> None:
    files = {f: f"/shots/sh010/plate.{f}.exr" for f in range(1001, 1005)}
    assert strips.path_template(exr_strip(files), range(1001, 1005)) == ("/shots/sh010/plate.####.exr", "")


@pytest.mark.parametrize(("files", "kind", "why"), [
    ({f: f"/p/plate.{f + 1}.exr" for f in range(1001, 1005)}, "IMAGE", "frame 1001 shows plate.1002.exr, whose number is not 1001"),
    ({f: f"/p/plate.{f}.png" for f in range(1001, 1005)}, "IMAGE", "frame 1001 shows plate.1001.png, not an EXR"),
    ({f: "/p/still.exr" for f in range(1001, 1005)}, "IMAGE", "frame 1001 shows still.exr, whose number is not 1001"),
    ({f: f"/p/{'a' if f % 2 else 'b'}.{f}.exr" for f in range(1001, 1005)}, "IMAGE", "its files do not follow one naming pattern"),
    ({}, "MOVIE", "it is a movie strip"),
])
def test_other_strips_are_converted_and_the_reason_says_why(files: dict[int, str], kind: str, why: str) -> None:
    assert strips.path_template(exr_strip(files, kind), range(1001, 1005)) == (None, why)


def test_a_strip_that_does_not_cover_the_frames_is_an_error() -> None:
    with pytest.raises(SetupError, match="strip 'plate' covers frames 1001-1004, not all of 1001-1010"):
        strips.path_template(exr_strip({}), range(1001, 1011))


def test_the_result_goes_on_the_first_free_channel_above_the_inputs() -> None:
    inputs = [strips.StripInfo("plate", "IMAGE", 1, (1001, 1049)), strips.StripInfo("fg", "IMAGE", 2, (1001, 1049))]
    others = [strips.StripInfo("title", "TEXT", 3, (1040, 1060)), strips.StripInfo("late", "COLOR", 4, (1049, 1100))]
    assert strips.result_channel(inputs, others, range(1001, 1049)) == 4, "'late' starts after the range"
    assert strips.result_channel(inputs, others[:1], range(1001, 1030)) == 3


def test_result_files_must_be_one_gapless_sequence() -> None:
    assert strips.result_files({2: "/o/s.0002.exr", 1: "/o/s.0001.exr"}) == ("/o", ["s.0001.exr", "s.0002.exr"], 1)
    with pytest.raises(SetupError, match="with gaps"):
        strips.result_files({1: "/o/s.0001.exr", 3: "/o/s.0003.exr"})
    with pytest.raises(SetupError, match="2 folders"):
        strips.result_files({1: "/o/s.0001.exr", 2: "/p/s.0002.exr"})


# -- paths ---------------------------------------------------------------------------------

def test_shot_names_and_job_ids_are_safe_for_files_and_the_protocol(tmp_path: Path) -> None:
    from cvgen.protocol.jobs import check_job_id

    assert shots.shot_name("sh 010/comp: v2") == "sh_010_comp_v2"
    assert shots.shot_name("///") == "shot"
    job_id = shots.new_job_id("sh 010/comp", now=0)
    assert job_id.startswith("sh_010_comp-19700101-") and check_job_id(job_id) == job_id
    assert shots.job_dir(str(tmp_path / "a.blend"), "sh010", job_id) == tmp_path / "cvgen" / "sh010" / job_id
    with pytest.raises(SetupError, match="save the .blend file first"):
        shots.shot_dir("", "sh010")


# -- connection ----------------------------------------------------------------------------

@pytest.mark.parametrize(("address", "local"), [
    ("tcp://127.0.0.1:5555", True), ("tcp://localhost:5555", True), ("tcp://[::1]:5555", True),
    ("tcp://127.2.0.1:5555", True), ("ipc:///tmp/cvgen", True), ("tcp://gpu-box:5555", False),
    ("tcp://192.0.2.7:5555", False),
])
def test_local_addresses(address: str, local: bool) -> None:
    assert connection.is_local(address) is local


def test_network_servers_need_online_access() -> None:
    connection.check_allowed("tcp://127.0.0.1:5555", online_access=False)
    connection.check_allowed("tcp://gpu-box:5555", online_access=True)
    with pytest.raises(SetupError, match="online access is off"):
        connection.check_allowed("tcp://gpu-box:5555", online_access=False)
    with pytest.raises(SetupError, match="must look like tcp://HOST:PORT"):
        connection.host_of("gpu-box:5555")


def test_key_files_go_to_the_client_both_or_neither() -> None:
    plain = connection.ServerSettings("tcp://127.0.0.1:5555", timeout=3.0)
    assert connection.client_options(plain) == {"timeout": 3.0}
    both = connection.ServerSettings(timeout=3.0, server_key="/keys/server.key", client_key="/keys/me.key_secret")
    assert connection.client_options(both) == {"timeout": 3.0, "server_key": "/keys/server.key",
                                               "client_key": "/keys/me.key_secret"}
    with pytest.raises(SetupError, match="set a Server Public Key but no Client Key Pair"):
        connection.client_options(connection.ServerSettings(server_key="/keys/server.key"))
    with pytest.raises(SetupError, match="set a Client Key Pair but no Server Public Key"):
        connection.client_options(connection.ServerSettings(client_key="/keys/me.key_secret"))


def test_a_missing_or_wrong_key_file_is_a_sentence_naming_the_file(tmp_path: Path) -> None:
    """Checked when the client is made, before anything is sent; the report says where keys are set."""
    from cvgen.server.auth import generate_keys

    generate_keys(tmp_path / "keys", ["alice"])
    server_key = str(tmp_path / "keys" / "server.key")
    missing = connection.ServerSettings(server_key=server_key, client_key=str(tmp_path / "nope.key_secret"))
    with pytest.raises(jobs.errors.KeyFileError) as caught:
        jobs.hello(missing, False)
    assert jobs.describe(caught.value) == (
        f"client key {tmp_path / 'nope.key_secret'} does not exist; `cvgen keys generate` makes key files "
        "(the key files are set in the cvgen add-on's preferences)")
    public_half = connection.ServerSettings(server_key=server_key,
                                            client_key=str(tmp_path / "keys" / "clients" / "alice.key"))
    finished = wait_finished(jobs.Worker(lambda emit: jobs.hello(public_half, False)).start(), timeout=10)
    assert "is a public key; use the matching .key_secret file" in finished.error


# -- jobs against a real server ------------------------------------------------------------

def request(server: ServerProcess, shot: dict[str, str], tmp_path: Path, **changes: Any) -> jobs.RenderRequest:
    fields: dict[str, Any] = {
        "server": connection.ServerSettings(server.endpoint, timeout=5.0), "online_access": False,
        "op": "colormatch", "frames": (1001, 1003), "inputs": shot, "params": {"strength": 0.5}, "name": "sh010",
        "output": str(tmp_path / "out"), "job_id": shots.new_job_id("sh010"),
    }
    fields.update(changes)
    return jobs.RenderRequest(**fields)


def test_run_job_drops_inputs_the_op_does_not_take_and_returns_done(server: ServerProcess, tmp_path: Path) -> None:
    shot = make_shot(tmp_path / "shot", range(1001, 1004))
    events: list[Any] = []
    done = jobs.run_job(request(server, {**shot, "depth": shot["plate"]}, tmp_path), events.append)

    assert isinstance(done, Done) and sorted(done.frames) == [1001, 1002, 1003]
    assert events[0] == jobs.Notice("colormatch does not take a Depth input; it was not sent"), "the panel's label"
    assert isinstance(events[1], Accepted) and events[-1] is done
    assert sum(isinstance(e, FrameReady) for e in events) == 3


def test_a_missing_required_input_stops_before_submitting(server: ServerProcess, tmp_path: Path) -> None:
    shot = make_shot(tmp_path / "shot", range(1001, 1004))
    with pytest.raises(SetupError, match="colormatch needs a Foreground strip"):  # the panel's label
        jobs.run_job(request(server, {"plate": shot["plate"]}, tmp_path), lambda e: None)


def test_server_errors_reach_the_artist_as_a_sentence(server: ServerProcess, tmp_path: Path) -> None:
    shot = make_shot(tmp_path / "shot", range(1001, 1004))
    missing = str(tmp_path / "nowhere" / "fg.####.exr")  # the add-on checks parameters itself; inputs are the server's
    worker = jobs.JobWorker(request(server, {**shot, "fg": missing}, tmp_path)).start()
    finished = wait_finished(worker)
    assert finished.error.startswith("cvgen server: ") and "nowhere" in finished.error, finished.error
    assert not finished.cancelled


def wait_finished(worker: jobs.Worker, timeout: float = 120) -> jobs.Finished:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in worker.poll():
            if isinstance(event, jobs.Finished):
                return event
        time.sleep(0.05)
    raise AssertionError("the worker never finished")


def test_a_worker_cancels_the_running_job_on_the_server(server: ServerProcess, tmp_path: Path) -> None:
    """What the panel's Cancel button and Esc do: the UI thread polls, the server stops the job."""
    shot = make_shot(tmp_path / "shot", range(1001, 1025))
    req = request(server, shot, tmp_path, op="harmonize", frames=(1001, 1024), params={"steps": 50})
    worker = jobs.JobWorker(req).start()
    deadline = time.monotonic() + 120
    while not any(isinstance(e, Progress) for e in worker.poll()):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    worker.cancel()
    finished = wait_finished(worker)
    assert finished.cancelled and "cancelled" in finished.error
    assert jobs.hello(req.server, False)["ops"]  # the server lives on
    from cvgen.protocol.client import Client

    with Client(server.endpoint) as client:
        assert client.status(req.job_id)["state"] == "cancelled"


def test_a_cancel_before_the_job_is_sent_never_starts_it(server: ServerProcess, tmp_path: Path) -> None:
    shot = make_shot(tmp_path / "shot", range(1001, 1004))
    req = request(server, shot, tmp_path)
    with pytest.raises(jobs.protocol.JobCancelled):
        jobs.run_job(req, lambda e: None, cancelled=lambda: True)
    assert not (tmp_path / "jobs" / req.job_id).exists()


def test_a_dead_server_is_reported_after_the_timeout(tmp_path: Path) -> None:
    srv = ServerProcess(tmp_path / "jobs").start()
    srv.stop(signal.SIGKILL)
    req = jobs.RenderRequest(connection.ServerSettings(srv.endpoint, timeout=1.0), False, "colormatch", (1, 1), {},
                             {}, "s", str(tmp_path), "s-1")
    finished = wait_finished(jobs.JobWorker(req).start(), timeout=30)
    assert finished.error == f"no answer from the cvgen server at {srv.endpoint} within 1 s; is `cvgen serve` running there?"


# -- local server --------------------------------------------------------------------------

def test_local_server_checks_its_settings(tmp_path: Path) -> None:
    server = local_server.LocalServer()
    assert server.status() == "not started"
    with pytest.raises(SetupError, match="not an executable file"):
        server.start(str(tmp_path), "tcp://127.0.0.1:5555", tmp_path)
    with pytest.raises(SetupError, match="needs a loopback address with a port"):
        server.start(sys.executable, "tcp://gpu-box:5555", tmp_path)


def test_local_server_refuses_a_port_another_program_holds(tmp_path: Path) -> None:
    """Starting anyway would report "running" while the child dies, and Connect would reach the other program."""
    probe = ServerProcess(tmp_path / "probe").start()
    try:
        server = local_server.LocalServer()
        port = probe.endpoint.rpartition(":")[2]
        with pytest.raises(SetupError, match=f"^port {port} on 127.0.0.1 is already in use by another program"):
            server.start(sys.executable, probe.endpoint, tmp_path / "local")
        assert server.proc is None and server.status() == "not started"
    finally:
        probe.stop()


# -- farm submissions ------------------------------------------------------------------------

COLORMATCH = {"name": "colormatch", "summary": "", "inputs": ["plate", "fg"], "optional_inputs": ["matte"],
              "params": [{"name": "strength", "type": "float", "default": 1.0, "help": ""}]}


def test_a_farm_submission_writes_the_job_file_and_an_openjd_bundle_that_passes_check(tmp_path: Path) -> None:
    shot = make_shot(tmp_path / "shot", range(1001, 1004))
    req = request(ServerProcess(tmp_path / "unused"), {**shot, "depth": shot["plate"]}, tmp_path,
                  params={"strength": 0.009999999776482582})
    spec, notices = farm.farm_spec(req, [COLORMATCH])
    assert notices == ["colormatch does not take a Depth input; it was not sent"]
    assert spec.params == {"strength": 0.01} and spec.job_id == req.job_id and spec.output == req.output
    sub = farm.submission(spec, farm.FarmOptions("openjd", chunk=2, show="ignored", shot="for OpenCue"))
    assert (sub.engine, sub.chunk, sub.show, sub.shot) == ("openjd", 2, "", "")
    blend = tmp_path / "project" / "sh010.blend"
    job_file = farm.job_file_path(str(blend), "sh 010", req.job_id)
    assert job_file == tmp_path / "project" / "cvgen" / "sh_010" / "farm" / f"{req.job_id}.json"
    cvgen = farm.find_cvgen("", sys.executable)  # beside the Python, as for a local server
    assert cvgen == str(Path(sys.executable).parent / "cvgen")

    result = farm.submit(cvgen, sub, job_file)

    bundle = job_file.with_suffix(".openjd")
    assert result.output == bundle and result.launched == ()
    assert (bundle / "template.yaml").is_file() and (bundle / "parameter_values.yaml").is_file()
    assert result.message == f"cvgen: wrote the job bundle {bundle}; submit it with: deadline bundle submit {bundle}"
    assert "in 2 task(s) of up to 2 frame(s)" in result.log
    written = farm.farm.read_job_file(job_file)
    assert written.chunk == 2 and written.job.inputs == shot and written.job.job_id == req.job_id
    checked = subprocess.run([str(Path(sys.executable).parent / "openjd"), "check", str(bundle / "template.yaml")],
                             capture_output=True, text=True, timeout=120, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_farm_errors_and_a_missing_cvgen_command_are_sentences(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shot = make_shot(tmp_path / "shot", range(1001, 1002))
    req = request(ServerProcess(tmp_path / "unused"), shot, tmp_path, op="nosuchop", frames=(1001, 1001))
    spec, notices = farm.farm_spec(req, [COLORMATCH])  # an op the panel has no schema for: the farm command checks
    assert spec.op == "nosuchop" and notices == []
    cvgen = str(Path(sys.executable).parent / "cvgen")
    with pytest.raises(SetupError, match=r"^cvgen farm: .*nosuchop"):
        farm.submit(cvgen, farm.submission(spec, farm.FarmOptions()), tmp_path / "farm" / "j.json")
    with pytest.raises(SetupError, match="chunk size must be a whole number of frames, 1 or more"):
        farm.submission(spec, farm.FarmOptions(chunk=0))

    with pytest.raises(SetupError, match=r"the cvgen command in the cvgen preferences \(/no/cvgen\) is not an executable"):
        farm.find_cvgen("/no/cvgen")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(SetupError, match="the cvgen command was not found: set \"cvgen Command\""):
        farm.find_cvgen("", str(tmp_path / "python"))
    with pytest.raises(SetupError, match="the cvgen command /gone/cvgen was not found"):
        farm.submit("/gone/cvgen", farm.submission(spec, farm.FarmOptions()), tmp_path / "farm" / "k.json")


def test_opencue_submits_or_writes_the_spec_beside_the_job_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shot = make_shot(tmp_path / "shot", range(1001, 1002))
    spec, _ = farm.farm_spec(request(ServerProcess(tmp_path / "unused"), shot, tmp_path, frames=(1001, 1001)), [])
    sub = farm.submission(spec, farm.FarmOptions("opencue", show=" demo ", shot="sh010", spec_only=True))
    assert (sub.show, sub.shot) == ("demo", "sh010")
    cvgen = str(Path(sys.executable).parent / "cvgen")
    job = tmp_path / "farm" / "j.json"
    result = farm.submit(cvgen, sub, job, spec_only=True)
    assert result.output == job.with_suffix(".xml") and "<show>demo</show>" in result.output.read_text()
    assert result.message == f"cvgen: wrote the OpenCue job spec {result.output}"
    monkeypatch.delenv("CUEBOT_HOSTS", raising=False)
    with pytest.raises(SetupError, match=r"^cvgen farm: CUEBOT_HOSTS is not set"):
        farm.submit(cvgen, sub, job)

    assert farm.farm_command("cvgen", "opencue", job) == (["cvgen", "farm", "opencue", str(job), "--submit"], None)
    assert farm.farm_command("cvgen", "opencue", job, spec_only=True) == (
        ["cvgen", "farm", "opencue", str(job), "--output", str(tmp_path / "farm" / "j.xml")], tmp_path / "farm" / "j.xml")
    assert farm.child_env({"PYTHONHOME": "/blender", "PYTHONPATH": "x", "HOME": "/h"}) == {"HOME": "/h"}
    assert farm.error_of("Traceback...\ncvgen: error: no Cuebot at $CUEBOT_HOSTS\n", 1) == \
        "cvgen farm: no Cuebot at $CUEBOT_HOSTS"
    assert farm.error_of("", 2) == "cvgen farm failed (exit code 2)"


# -- the extension build ---------------------------------------------------------------------

def test_wheel_requests_come_from_the_manifests_file_names() -> None:
    assert build.wheel_request("pyzmq-27.3.0-cp311-cp311-manylinux_2_26_x86_64.manylinux_2_28_x86_64.whl") == (
        "pyzmq==27.3.0", ["manylinux_2_26_x86_64", "manylinux_2_28_x86_64"])
    assert build.wheel_request("msgpack-1.2.4-cp311-cp311-win_amd64.whl") == ("msgpack==1.2.4", ["win_amd64"])


def test_the_add_on_files_leave_out_tools_and_caches() -> None:
    shipped = {p.relative_to(REPO / "blender_addon").as_posix() for p in build.addon_files()}
    assert {"__init__.py", "blender_manifest.toml", "core/jobs.py", "blender/operators.py"} <= shipped
    assert not any(p.endswith((".pyc", "build.py", "README.md")) or "__pycache__" in p for p in shipped)


def test_conversions_refuse_a_job_in_another_colour_space() -> None:
    strips.check_convertible("clip", "it is a movie strip", "Linear Rec.709 (sRGB)")
    with pytest.raises(SetupError, match="Blender writes those in Linear Rec.709 \\(sRGB\\), not the job's ACEScg"):
        strips.check_convertible("clip", "it is a movie strip", "ACEScg")
    assert strips.blender_colorspace("Linear Rec.709 (sRGB)") == "Linear Rec.709"
    assert strips.blender_colorspace("ACEScg") == "ACEScg"


def test_build_offline_says_which_wheels_it_needs_and_how_to_supply_them(tmp_path: Path) -> None:
    """No index to download from (an offline build machine): one message, no traceback, a failing exit."""
    import os

    env = {**os.environ, "PIP_NO_INDEX": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "blender_addon" / "build.py"), "--out", str(tmp_path / "x.zip"),
                           "--wheels", str(tmp_path / "wheels")], env=env, capture_output=True, text=True, check=False)

    assert proc.returncode != 0 and not (tmp_path / "x.zip").exists()
    assert "Traceback" not in proc.stderr, proc.stderr
    (message,) = proc.stderr.strip().splitlines()
    assert "pyzmq-27.3.0-cp311-cp311-win_amd64.whl" in message and "msgpack-1.2.4-cp311-cp311-macosx_11_0_arm64.whl" in message
    assert f"--wheels {tmp_path / 'wheels'}" in message and "pypi.org" in message


def test_an_op_summary_is_wrapped_to_the_sidebar_not_cut_off(server: ServerProcess) -> None:
    """Harmonize's summary is longer than a default sidebar (about 300 px) is wide: every word shows."""
    from cvgen.protocol.client import Client

    text = importlib.import_module("cvgen_blender_core.text")
    with Client(server.endpoint) as client:
        summary = next(op["summary"] for op in client.hello()["ops"] if op["name"] == "harmonize")
    for width, scale in ((300, 1.0), (600, 2.0)):
        lines = text.sidebar_lines(summary, width, scale)
        assert len(lines) > 1 and " ".join(lines) == summary
        assert all(len(line) * text.CHAR_PX * scale <= width - text.MARGIN_PX * scale for line in lines)


def test_an_image_role_is_named_as_an_image_and_a_range_is_checked_before_sending(tmp_path: Path) -> None:
    """The test op `still` of tests/extra_op_server.py: its image role and its int range, from `hello`."""
    srv = ServerProcess(tmp_path / "jobs", extra_op=True).start()
    try:
        shot = make_shot(tmp_path / "shot", range(1001, 1004))
        with pytest.raises(SetupError, match="^still needs a Reference image$"):
            jobs.run_job(request(srv, {"plate": shot["plate"]}, tmp_path, op="still", params={}), lambda e: None)
        with pytest.raises(SetupError, match="^Count must be between 1 and 8; it is 0$"):
            jobs.check_job(request(srv, {"plate": shot["plate"], "ref": shot["fg"].replace("####", "1001")},
                                   tmp_path, op="still", params={"count": 0}))
    finally:
        srv.stop()
    assert not (tmp_path / "jobs").exists() or not any((tmp_path / "jobs").iterdir()), "nothing was sent"
