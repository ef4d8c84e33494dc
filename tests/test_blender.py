"""The Blender add-on in real Blender: `bpy` 4.5 from PyPI, in its own virtualenv (.venv-blender,
because bpy pins numpy < 2), driven as a subprocess against real `cvgen serve` processes.

Each test runs one scenario of tests/blender/scenarios.py with Blender's user folders inside the
test's tmp_path, then checks what Blender made (strips, files) with cvgen's own EXR reader.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from cvgen.protocol.client import Client
from cvgen.protocol.images import Image
from cvgen.server.io.exr import read_exr, write_exr
from support import ServerProcess, make_shot

REPO = Path(__file__).resolve().parents[1]
BLENDER_PYTHON = REPO / ".venv-blender" / "bin" / "python"
SCENARIOS = Path(__file__).resolve().parent / "blender" / "scenarios.py"
SETUP = (
    "create the bpy virtualenv in the repository root with\n"
    "  python3.11 -m venv .venv-blender && .venv-blender/bin/python -m pip install 'bpy==4.5.*' pyzmq msgpack\n"
    "(CI's make test does this)"
)
FRAMES = (1001, 1004)


@pytest.fixture(scope="session")
def blender_python() -> Path:
    """The bpy virtualenv's Python; its absence fails the tests (CI creates it), never skips them."""
    if not BLENDER_PYTHON.exists():
        pytest.fail(f"{BLENDER_PYTHON} does not exist: " + SETUP, pytrace=False)
    check = subprocess.run([str(BLENDER_PYTHON), "-c", "import bpy, zmq, msgpack"], capture_output=True, text=True,
                           check=False)
    if check.returncode != 0:
        pytest.fail(f"{BLENDER_PYTHON} cannot import bpy, zmq and msgpack ({check.stderr.strip()[-300:]}): " + SETUP,
                    pytrace=False)
    return BLENDER_PYTHON


def blender_env(tmp_path: Path) -> dict[str, str]:
    """Blender's user folders (config, extensions) inside the test's own folder."""
    home = tmp_path / "home"
    return {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
            "BLENDER_USER_EXTENSIONS": str(tmp_path / "extensions")}


def scenario_files(tmp_path: Path, name: str, args: dict[str, Any]) -> tuple[list[str], Path]:
    args_path, result_path = tmp_path / f"{name}-args.json", tmp_path / f"{name}-result.json"
    args_path.write_text(json.dumps(args))
    return [str(BLENDER_PYTHON), str(SCENARIOS), name, str(args_path), str(result_path)], result_path


def run_scenario(tmp_path: Path, name: str, args: dict[str, Any], timeout: float = 240) -> dict[str, Any]:
    command, result_path = scenario_files(tmp_path, name, args)
    proc = subprocess.run(command, env=blender_env(tmp_path), capture_output=True, text=True, timeout=timeout,
                          check=False)
    assert proc.returncode == 0 and result_path.exists(), f"scenario {name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads(result_path.read_text())


def make_shot_args(tmp_path: Path, address: str) -> dict[str, Any]:
    (tmp_path / "project").mkdir()
    return {
        "shot": make_shot(tmp_path / "footage", range(FRAMES[0], FRAMES[1] + 2)),
        "frames": list(FRAMES),
        "blend": str(tmp_path / "project" / "sh010.blend"),
        "address": address,
    }


@pytest.fixture
def shot_args(tmp_path: Path, server: ServerProcess) -> dict[str, Any]:
    return make_shot_args(tmp_path, server.endpoint)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two key folders as `cvgen keys generate` writes them: the studio's server with its artist,
    and another server's, whose client the studio's server has never heard of."""
    from cvgen.server.auth import generate_keys

    folder = tmp_path_factory.mktemp("keys")
    generate_keys(folder / "studio", ["artist"])
    generate_keys(folder / "elsewhere", ["stranger"])
    return folder


@pytest.fixture
def keyed_server(tmp_path: Path, keys: Path) -> Iterator[ServerProcess]:
    """`cvgen serve --keys` on a free loopback port: only the clients in studio/authorized/ get in."""
    srv = ServerProcess(tmp_path / "jobs", "--keys", str(keys / "studio")).start()
    yield srv
    if srv.proc and srv.proc.poll() is None:
        srv.stop(signal.SIGKILL)


def artist_keys(keys: Path) -> dict[str, str]:
    return {"server_key": str(keys / "studio" / "server.key"),
            "client_key": str(keys / "studio" / "clients" / "artist.key_secret")}


def assert_result_strip(strip: dict[str, Any], job: str, project: Path, channel: int) -> None:
    """The strip shows the job's frames from the job's folder, on the timeline's frame numbers."""
    assert strip["channel"] == channel
    assert (strip["start"], strip["end"]) == (FRAMES[0], FRAMES[1] + 1)
    folder = project / "cvgen" / "sh010" / job
    assert strip["files"] == [str(folder / f"sh010.{f}.exr") for f in range(FRAMES[0], FRAMES[1] + 1)]


def test_render_adds_the_result_strip_and_a_rerender_replaces_it(
    blender_python: Path, tmp_path: Path, server: ServerProcess, shot_args: dict[str, Any]
) -> None:
    result = run_scenario(tmp_path, "render", {**shot_args, "renders": 2, "params": {"strength": 0.5}})

    assert result["connection"] == "CONNECTED"
    assert result["ops"] == ["colormatch", "harmonize", "restyle", "propagate", "smooth"]
    assert result["params"]["strength"] == ["float", 0.5], "the artist's value survives the schema refresh"
    assert result["params"]["temporal"] == ["float", 3.0], "the other parameters take the server's defaults"
    first, second = result["renders"]
    assert first["result"] == second["result"] == "FINISHED"
    assert first["job"] != second["job"]
    project = tmp_path / "project"
    assert_result_strip(second["strip"], second["job"], project, channel=3)
    assert result["result_strips"] == [second["strip"]["name"]], "the second result replaced the first strip"
    assert all(Path(f).exists() for f in first["strip"]["files"]), "earlier results stay on disk"
    with Client(server.endpoint) as client:
        status = client.status(second["job"])
        spec = json.loads((tmp_path / "jobs" / second["job"] / "spec.json").read_text())
    assert status["state"] == "done" and status["done"] == 4
    assert status["output"] == str(project / "cvgen" / "sh010" / second["job"])
    assert spec["inputs"] == {"plate": shot_args["shot"]["plate"], "fg": shot_args["shot"]["fg"]}, "EXR strips go by path"
    assert spec["params"]["strength"] == 0.5 and spec["params"]["radius"] == 0.01
    for frame, path in zip(range(FRAMES[0], FRAMES[1] + 1), second["strip"]["files"]):
        image = read_exr(path)
        plate = read_exr(shot_args["shot"]["plate"].replace("####", str(frame)))
        assert image.has("R", "G", "B", "A") and image.data_window == plate.data_window
        assert image.attributes["cvgen:op"] == "colormatch"
        assert json.loads(image.attributes["cvgen:params"])["strength"] == 0.5
        keep = read_exr(shot_args["shot"]["fg"].replace("####", str(frame))).channel("A") == 0
        assert np.array_equal(image.stack(("R", "G", "B"))[keep], plate.stack(("R", "G", "B"))[keep])


def test_strips_the_server_cannot_read_are_rendered_to_exr_first(
    blender_python: Path, tmp_path: Path, server: ServerProcess, shot_args: dict[str, Any], shared_data: Path
) -> None:
    """A plate slid one frame along the timeline and a movie as the matte."""
    result = run_scenario(tmp_path, "convert", {
        **shot_args, "plate_start": FRAMES[0] - 1, "plate_files": list(range(FRAMES[0], FRAMES[1] + 2)),
        "movie": str(shared_data / "video" / "woman-running.mp4"),
    })

    assert result["result"] == "FINISHED"
    job = result["job"]
    assert_result_strip(result["strip"], job, tmp_path / "project", channel=4)
    inputs = json.loads((tmp_path / "jobs" / job / "spec.json").read_text())["inputs"]
    converted = tmp_path / "project" / "cvgen" / "sh010" / "inputs"
    assert inputs["fg"] == shot_args["shot"]["fg"]
    plate_dir, matte_dir = Path(inputs["plate"]).parent, Path(inputs["matte"]).parent
    assert plate_dir.parent == matte_dir.parent == converted and plate_dir.name.startswith("plate-")
    assert Path(inputs["plate"]).name == Path(inputs["matte"]).name == "input.####.exr"
    for frame in range(FRAMES[0], FRAMES[1] + 1):
        plate = read_exr(plate_dir / f"input.{frame}.exr")
        shown = read_exr(shot_args["shot"]["plate"].replace("####", str(frame + 1)))
        assert np.array_equal(plate.stack(("R", "G", "B", "A")), shown.stack(("R", "G", "B", "A"))), \
            "the timeline's frame, converted bit for bit (the sequencer works in linear light)"
        matte = read_exr(matte_dir / f"input.{frame}.exr")
        assert matte.has("R", "G", "B", "A") and matte.width == 64 and matte.height == 48


def test_a_stopped_server_is_reported_without_hanging(
    blender_python: Path, tmp_path: Path, server: ServerProcess, shot_args: dict[str, Any]
) -> None:
    server.stop()
    start = time.monotonic()
    result = run_scenario(tmp_path, "unreachable", {**shot_args, "timeout": 2.0})

    assert time.monotonic() - start < 60
    assert result["result"] == "error"
    assert f"no answer from the cvgen server at {server.endpoint} within 2 s" in result["error"]


def test_a_network_server_is_refused_while_online_access_is_off(
    blender_python: Path, tmp_path: Path, server: ServerProcess, shot_args: dict[str, Any]
) -> None:
    # .invalid never resolves: even a regression would send nothing anywhere.
    result = run_scenario(tmp_path, "offline", {**shot_args, "address": "tcp://farm.invalid:5555"})

    assert result["online_access"] is False
    for error in (result["error"], result["connect_error"]):
        assert "is on the network, and Blender's online access is off" in error


def test_render_against_a_key_protected_server_with_the_workstations_keys(
    blender_python: Path, tmp_path: Path, keyed_server: ServerProcess, keys: Path
) -> None:
    result = run_scenario(tmp_path, "render", {**make_shot_args(tmp_path, keyed_server.endpoint), **artist_keys(keys)})

    assert result["connection"] == "CONNECTED"
    (render,) = result["renders"]
    assert render["result"] == "FINISHED", render
    assert_result_strip(render["strip"], render["job"], tmp_path / "project", channel=3)
    assert all(read_exr(f).attributes["cvgen:op"] == "colormatch" for f in render["strip"]["files"])
    with Client(keyed_server.endpoint, **artist_keys(keys)) as client:
        assert client.status(render["job"])["state"] == "done"


def test_a_key_the_server_does_not_know_is_refused_with_what_to_do_not_a_hang(
    blender_python: Path, tmp_path: Path, keyed_server: ServerProcess, keys: Path
) -> None:
    stranger = str(keys / "elsewhere" / "clients" / "stranger.key_secret")
    server_key = str(keys / "studio" / "server.key")
    missing = str(tmp_path / "artist.key_secret")
    start = time.monotonic()
    result = run_scenario(tmp_path, "keys_refused", {
        **make_shot_args(tmp_path, keyed_server.endpoint), "timeout": 2.0,
        "attempts": [[server_key, stranger], [server_key, missing], ["", missing]],
    })

    assert time.monotonic() - start < 60
    unknown, absent, one_alone = result["attempts"]
    refused = (f"the cvgen server at {keyed_server.endpoint} refused this workstation's key: ask whoever runs it to "
               "put this workstation's public key (NAME.key) in the server's authorized/ folder (the key files are "
               "set in the cvgen add-on's preferences)")
    for error in (unknown["error"], unknown["connect_error"]):
        assert refused in error
    assert unknown["connection"] == "FAILED"
    for error in (absent["error"], absent["connect_error"]):
        assert f"client key {missing} does not exist; `cvgen keys generate` makes key files" in error
    for error in (one_alone["error"], one_alone["connect_error"]):
        assert "set a Client Key Pair but no Server Public Key" in error
    assert not list((tmp_path / "jobs").glob("*/spec.json")), "no job reached the server"


def test_ctrl_c_in_a_headless_render_cancels_the_job_on_the_server(
    blender_python: Path, tmp_path: Path, server: ServerProcess, shot_args: dict[str, Any]
) -> None:
    frames = (1001, 1024)
    shot = make_shot(tmp_path / "long", range(frames[0], frames[1] + 1))
    command, result_path = scenario_files(tmp_path, "interrupt", {
        **shot_args, "shot": shot, "frames": list(frames), "op": "harmonize", "params": {"steps": 50},
        "ready": str(tmp_path / "ready"),
    })
    proc = subprocess.Popen(command, env=blender_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        with Client(server.endpoint) as client:
            deadline = time.monotonic() + 120
            while not client.status().get("running"):
                assert proc.poll() is None and time.monotonic() < deadline, "the job never started"
                time.sleep(0.1)
            job = client.status()["running"][0]
            proc.send_signal(signal.SIGINT)
            output = proc.communicate(timeout=60)[0]
            assert proc.returncode == 0, output[-3000:]
            deadline = time.monotonic() + 30
            while client.status(job)["state"] != "cancelled":
                assert time.monotonic() < deadline, f"job state stayed {client.status(job)['state']}"
                time.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.kill()
    result = json.loads(result_path.read_text())
    assert result["result"] == "error", "a headless script must not carry on (render(); save()) after Ctrl-C"
    assert result["error"].count("cancel") == 1, result["error"]
    assert result["job"] == job and f"job {job} interrupted by Ctrl-C, cancelling on the server" in result["error"]


def test_submit_to_farm_writes_the_job_file_and_an_openjd_bundle(
    blender_python: Path, tmp_path: Path, server: ServerProcess, shot_args: dict[str, Any]
) -> None:
    cvgen = Path(sys.executable).parent / "cvgen"
    result = run_scenario(tmp_path, "farm", {**shot_args, "cvgen": str(cvgen), "missing": str(tmp_path / "no-cvgen")})

    assert result["result"] == "FINISHED"
    farm = tmp_path / "project" / "cvgen" / "sh010" / "farm"
    job_file = farm / f"{result['job']}.json"
    bundle = farm / f"{result['job']}.openjd"
    data = json.loads(job_file.read_text())
    assert data["op"] == "colormatch" and data["frames"] == list(FRAMES)
    assert data["inputs"] == {"plate": shot_args["shot"]["plate"], "fg": shot_args["shot"]["fg"]}, "EXR strips go by path"
    assert data["output"] == str(tmp_path / "project" / "cvgen" / "sh010" / result["job"])
    assert data["farm"]["engine"] == "openjd" and data["farm"]["chunk"] == 2
    assert (bundle / "template.yaml").is_file() and result["last_farm"] == str(bundle)
    assert f"the cvgen command in the cvgen preferences ({tmp_path / 'no-cvgen'}) is not an executable file" in \
        result["missing_error"]


def test_render_passes_give_plate_depth_and_matte_the_server_reads(
    blender_python: Path, tmp_path: Path, server: ServerProcess
) -> None:
    (tmp_path / "project").mkdir()
    result = run_scenario(tmp_path, "passes", {
        "frames": [1, 2], "blend": str(tmp_path / "project" / "passes.blend"), "address": server.endpoint,
    })

    passes = tmp_path / "project" / "cvgen" / "sh010" / "passes" / "ViewLayer"
    inputs = result["inputs"]
    assert inputs["plate"]["files"] == [str(passes / "plate" / f"plate.000{f}.exr") for f in (1, 2)]
    assert inputs["fg"] == inputs["plate"], "with no foreground set, the rendered picture is the foreground"
    assert [inputs[r]["channel"] for r in ("plate", "depth", "matte")] == [1, 2, 3]
    assert [inputs[r]["mute"] for r in ("plate", "depth", "matte")] == [False, True, True]
    assert result["cube_pass_index"] == 3, "the objects' pass indices are put back"
    assert result["compositor_unchanged"] and result["scenes"] == ["sh010"], "the artist's scene is untouched"
    assert not result["f12_renders_strips"], "F12 still renders the 3D scene, not the new strips"
    for frame in (1, 2):
        plate = read_exr(passes / "plate" / f"plate.000{frame}.exr")
        depth = read_exr(passes / "depth" / f"depth.000{frame}.exr")
        matte = read_exr(passes / "matte" / f"matte.000{frame}.exr")
        assert plate.channels == ("R", "G", "B", "A") and plate.pixels.dtype == np.float16
        assert depth.channels == ("V",) and matte.channels == ("V",)
        cube = matte.pixels[..., 0] > 0.99
        assert 0.05 < cube.mean() < 0.6, "the cube is in the middle of the frame, the plane around it"
        assert matte.pixels.min() >= 0 and matte.pixels.max() <= 1
        z = depth.pixels[..., 0]
        assert np.all((z[cube] > 4) & (z[cube] < 7)), "the camera is about 6 units from the cube"
        assert np.median(z[~cube & (matte.pixels[..., 0] == 0)]) > np.median(z[cube]), "the plane is behind it"
    render = result["render"]
    assert render["result"] == "FINISHED" and render["strip"]["channel"] == 4
    assert render["strip"]["files"][0].endswith("sh010.0001.exr")


def test_start_and_stop_a_local_server_from_the_preferences(blender_python: Path, tmp_path: Path) -> None:
    probe = ServerProcess(tmp_path / "probe").start()  # a free loopback port: a server's own pick
    address = probe.endpoint
    probe.stop()
    result = run_scenario(tmp_path, "local_server", {
        "blend": str(tmp_path / "l.blend"), "address": address, "python": sys.executable,
    })

    assert result["started"].startswith(f"running on {address}")
    assert result["connection"] == "CONNECTED", result["message"]
    assert result["stopped"] == "stopped (exit code 0): cvgen server stopped"
    assert Path(result["log"]).is_relative_to(tmp_path / "extensions" / ".user"), "the add-on's user folder"


@pytest.fixture(scope="session")
def extension_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, str(REPO / "blender_addon" / "build.py"), "--out", str(folder / "cvgen.zip"),
                    "--wheels", str(folder / "wheels")], check=True, capture_output=True, text=True)
    return folder / "cvgen.zip"


def test_the_built_zip_is_a_valid_extension(blender_python: Path, extension_zip: Path) -> None:
    """Blender's own extension tool (what `blender --command extension validate` runs) accepts it."""
    tool = next(blender_python.parents[1].glob("lib/python3.*/site-packages/bpy/*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
    proc = subprocess.run([str(blender_python), str(tool), "validate", str(extension_zip)], capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Success" in proc.stdout


def test_the_built_zip_installs_and_talks_to_the_server(
    blender_python: Path, tmp_path: Path, server: ServerProcess, extension_zip: Path, keys: Path
) -> None:
    """Plainly to a local server, and with key files to one that requires them: the bundled pyzmq
    wheel has CurveZMQ, zmq.auth and the socket monitor, and the vendored protocol its key module."""
    keyed = ServerProcess(tmp_path / "keyed-jobs", "--keys", str(keys / "studio")).start()
    try:
        result = run_scenario(tmp_path, "install", {
            "zip": str(extension_zip), "blend": str(tmp_path / "i.blend"), "address": server.endpoint,
            "keyed": {"address": keyed.endpoint, **artist_keys(keys)},
        })
    finally:
        keyed.stop(signal.SIGKILL)

    assert result["enabled"] and result["connection"] == "CONNECTED"
    assert result["keyed_connection"] == "CONNECTED", result["keyed_message"]
    with zipfile.ZipFile(extension_zip) as zf:
        vendored = {Path(n).name for n in zf.namelist() if n.startswith("_vendor/cvgen_protocol/")}
        pyzmq = [n for n in zf.namelist() if n.startswith("wheels/pyzmq-")]
        for name in pyzmq:  # the client's key loading and handshake watching, on every platform
            with zipfile.ZipFile(io.BytesIO(zf.read(name))) as wheel:
                assert {"zmq/auth/certs.py", "zmq/utils/monitor.py"} <= set(wheel.namelist()), name
    assert vendored == {p.name for p in (REPO / "protocol").glob("*.py")}
    assert len(pyzmq) == 3
    assert result["protocol"] == "bl_ext.user_default.cvgen._vendor.cvgen_protocol", "the bundled copy"
    site = next((tmp_path / "extensions" / ".local" / "lib").glob("python3.*/site-packages"))
    assert (site / "zmq").is_dir() and (site / "msgpack").is_dir(), "Blender installed the bundled wheels"


def test_disabling_the_addon_stops_its_local_server(blender_python: Path, tmp_path: Path) -> None:
    probe = ServerProcess(tmp_path / "probe").start()  # a free loopback port: a server's own pick
    address = probe.endpoint
    probe.stop()
    result = run_scenario(tmp_path, "local_server_disable", {
        "blend": str(tmp_path / "d.blend"), "address": address, "python": sys.executable,
    })
    assert result["started"].startswith(f"running on {address}")
    assert result["exit_code"] is not None, "the server outlived the add-on that started it"


def test_submit_to_farm_runs_in_the_background_with_progress(
    blender_python: Path, tmp_path: Path, server: ServerProcess, shot_args: dict[str, Any]
) -> None:
    """A slow farm (cvgen farm taking 2 s, as a slow Cuebot would): the operator returns at once, the
    panel counts the seconds, and the bundle, or the farm's error, arrives when the command ends."""
    cvgen = Path(sys.executable).parent / "cvgen"
    slow, failing = tmp_path / "slow-cvgen", tmp_path / "failing-cvgen"
    slow.write_text(f"#!/bin/sh\nsleep 2\nexec {cvgen} \"$@\"\n")
    failing.write_text("#!/bin/sh\nsleep 1\necho 'cvgen: error: the Cuebot at cue.invalid did not answer' >&2\nexit 2\n")
    for script in (slow, failing):
        script.chmod(0o755)
    result = run_scenario(tmp_path, "farm_background", {**shot_args, "commands": [str(slow), str(failing)]})

    done, refused = result["submissions"]
    for sub in (done, refused):
        assert sub["result"] == "FINISHED" and sub["returned_s"] < 1.0, sub
        assert sub["running"] and not sub["poll_while_running"], "a second submission waits for the first"
        assert sub["statuses"] and sub["statuses"][0].startswith(f"Submitting {sub['job']} to OpenJD: ")
        assert not sub["running_after"]
    assert done["finished_s"] > 2.0 and not done["failed"]
    bundle = tmp_path / "project" / "cvgen" / "sh010" / "farm" / f"{done['job']}.openjd"
    assert (bundle / "template.yaml").is_file() and done["last_farm"] == str(bundle)
    assert done["status"] == f"cvgen: wrote the job bundle {bundle}; submit it with: deadline bundle submit {bundle}"
    assert refused["failed"] and refused["status"] == "cvgen farm: the Cuebot at cue.invalid did not answer"


def test_an_artists_session_keeps_values_per_op_inputs_and_reuses_conversions(
    blender_python: Path, tmp_path: Path, server: ServerProcess, shot_args: dict[str, Any], shared_data: Path
) -> None:
    """Issue 14's defects as an artist meets them, on one shot (one Blender start)."""
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        dead = f"tcp://127.0.0.1:{probe.getsockname()[1]}"
    result = run_scenario(tmp_path, "artist_defects", {
        **shot_args, "movie": str(shared_data / "video" / "woman-running.mp4"), "python": sys.executable,
        "dead_address": dead,
    })

    assert result["colormatch"]["temporal"] == 3.0
    sent = result["harmonize_sent"]
    assert (sent["strength"], sent["feather"]) == (0.5, 3.0), "harmonize starts from its own defaults"
    assert result["colormatch_back"]["temporal"] == 1.5, "colormatch's value survives switching away and back"
    assert result["harmonize_back"]["feather"] == 5.0

    shot = tmp_path / "project" / "cvgen" / "sh010"
    assert result["down"]["result"] == "error" and "no answer" in result["down"]["error"]
    assert result["files_after_refusal"] == [str(shot)], "a refused render converts nothing and leaves no files"
    first, second = result["renders"]
    assert first["result"] == second["result"] == "FINISHED"
    specs = [json.loads((tmp_path / "jobs" / r["job"] / "spec.json").read_text()) for r in (first, second)]
    matte = Path(specs[0]["inputs"]["matte"])
    assert specs[1]["inputs"]["matte"] == str(matte) and matte.parent.parent == shot / "inputs"
    frames = sorted(matte.parent.glob("*.exr"))
    assert len(frames) == FRAMES[1] - FRAMES[0] + 1
    assert all(read_exr(f).pixels.dtype == np.float16 for f in frames), "conversions are half float"
    assert len(list((shot / "inputs").iterdir())) == 1, "the unchanged movie strip was converted once"

    assert result["reuse_result"]["result"] == "FINISHED"
    assert result["fg"] == result["used"] and result["used"] in result["strips"], "the strip used as an input stays"
    assert result["new_result"] != result["used"] and result["new_result"] in result["strips"]

    assert result["port_in_use"].startswith("Error: port ") and "already in use" in result["port_in_use"]
    assert not result["local_running"]


def test_folders_that_cannot_be_written_and_a_missing_camera_are_reported(
    blender_python: Path, tmp_path: Path, server: ServerProcess, shot_args: dict[str, Any]
) -> None:
    result = run_scenario(tmp_path, "unwritable", {**shot_args, "cvgen": str(Path(sys.executable).parent / "cvgen")})

    assert result["no_camera"] == "Error: scene 'sh010' has no camera: add one (or set the scene's camera) " \
                                  "before rendering passes\n"
    blocker = tmp_path / "project" / "cvgen"
    for operator in ("passes", "render", "farm"):
        error = result[operator]
        assert error.startswith(f"Error: cannot create the folder {blocker}/sh010"), (operator, error)
        assert error.rstrip().endswith(f"{blocker} is a file, not a folder") and "Traceback" not in error


def test_render_passes_in_eevee_names_the_engine_as_blender_does(blender_python: Path, tmp_path: Path) -> None:
    result = run_scenario(tmp_path, "passes_eevee", {"blend": str(tmp_path / "e.blend")})

    assert "the EEVEE engine has no object index pass; render passes with Cycles" in result["error"]
    assert "BLENDER_EEVEE" not in result["error"]


def test_a_job_a_restarted_server_resumed_is_attached_to_and_gets_its_strip(
    blender_python: Path, tmp_path: Path, server: ServerProcess, shot_args: dict[str, Any]
) -> None:
    frames = (1001, 1003)
    shot = make_shot(tmp_path / "long", range(frames[0], frames[1] + 1))
    rendered, restarted = tmp_path / "rendered", tmp_path / "restarted"
    command, result_path = scenario_files(tmp_path, "resume", {
        **shot_args, "shot": shot, "frames": list(frames), "op": "harmonize", "params": {"steps": 4},
        "timeout": 3.0, "rendered": str(rendered), "restarted": str(restarted),
    })
    proc = subprocess.Popen(command, env=blender_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    again = ServerProcess(server.jobs_dir, bind=server.endpoint)
    try:
        with Client(server.endpoint) as client:
            deadline = time.monotonic() + 120
            while not (running := client.status().get("running")):
                assert proc.poll() is None and time.monotonic() < deadline, "the job never got going"
                time.sleep(0.1)
        server.stop()  # SIGTERM: the job stops cleanly and resumes with the next server on this folder
        deadline = time.monotonic() + 60
        while not rendered.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "Blender's render never returned"
            time.sleep(0.1)
        again.start()
        restarted.write_text("restarted")
        output = proc.communicate(timeout=180)[0]
        assert proc.returncode == 0, output[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        if again.proc is not None:
            again.stop(signal.SIGKILL)
    result = json.loads(result_path.read_text())
    job = running[0]
    assert result["render"]["result"] == "error" and result["render"]["job"] == job
    assert result["attach"] == "FINISHED", result["attach"]
    assert result["job"] == job
    folder = tmp_path / "project" / "cvgen" / "sh010" / job
    assert result["strip"]["files"] == [str(folder / f"sh010.{f}.exr") for f in range(frames[0], frames[1] + 1)]
    assert all(read_exr(f).attributes["cvgen:op"] == "harmonize" for f in result["strip"]["files"])


def test_an_op_the_addon_has_never_seen_gets_its_roles_and_ranges_from_hello(
    blender_python: Path, tmp_path: Path, shared_data: Path
) -> None:
    """Issue 14 item 3: the panel, the job and the checks follow the server's schema of `still`."""
    srv = ServerProcess(tmp_path / "jobs", extra_op=True).start()
    try:
        result = run_scenario(tmp_path, "schema_roles", {**make_shot_args(tmp_path, srv.endpoint), "op": "still"})
    finally:
        srv.stop(signal.SIGKILL)

    drawn = {call[2].get("text") for call in result["panel"]}
    assert {"Plate", "Reference", "Guide (optional)"} <= drawn, result["panel"]
    assert ["prop", ["source"], {"expand": True}] in result["panel"], "an image role offers a strip frame or a file"
    assert ["prop", ["filepath"], {"text": ""}] not in result["panel"], "the strip is the default source"
    assert any(c[0] == "prop" and c[2].get("slider") and c[2].get("text") == "Count" for c in result["panel"])
    assert result["count_range"] == [1, 8] and result["ref_frame"] == FRAMES[0]

    footage, shot = tmp_path / "footage", tmp_path / "project" / "cvgen" / "sh010"
    first, second = result["from_strip"], result["from_file"]
    assert first["result"] == second["result"] == "FINISHED", result
    spec = json.loads((tmp_path / "jobs" / first["job"] / "spec.json").read_text())
    assert spec["inputs"] == {"plate": str(footage / "plate.####.exr"), "ref": str(footage / f"fg.{FRAMES[0] + 1:04d}.exr"),
                              "guide": str(footage / "fg.####.exr")}
    ref = Path(json.loads((tmp_path / "jobs" / second["job"] / "spec.json").read_text())["inputs"]["ref"])
    assert ref.is_file() and ref.suffix == ".exr" and ref.parent.parent == shot / "inputs", ref
    srgb = np.array([64, 128, 191]) / 255  # what the PNG holds
    assert np.allclose(read_exr(ref).pixels[0, 0, :3], ((srgb + 0.055) / 1.055) ** 2.4, atol=0.01), "the PNG, linear"
    assert_result_strip(second["strip"], second["job"], tmp_path / "project", 3)
    assert read_exr(Path(second["strip"]["files"][0])).pixels[0, 0, 0] == 2, "count's default was sent"

    assert result["out_of_range"]["result"] == "error"
    assert result["out_of_range"]["error"] == "Error: Count must be between 1 and 8; it is 99\n"
    assert len(list((tmp_path / "jobs").iterdir())) == 2, "the refused job never reached the server"


def test_restyle_with_a_reference_image_file_renders_the_plate_strip_through_the_server(
    blender_python: Path, tmp_path: Path, server: ServerProcess, shot_args: dict[str, Any]
) -> None:
    """An artist picks restyle, the plate strip, a style frame on disk as the Reference (Image File),
    the built-in tiny depth model (a layout has no depth strip here) and 2 steps, and renders."""
    style = tmp_path / "footage" / "style.exr"
    rng = np.random.default_rng(1)
    write_exr(style, Image(rng.uniform(0.0, 1.5, (40, 40, 3)).astype(np.float16), ("R", "G", "B")))
    params = {"depth_model": "tiny-depth", "steps": 2, "prompt": "a watercolour painting"}
    result = run_scenario(tmp_path, "restyle", {**shot_args, "op": "restyle", "reference": str(style),
                                                "params": params})

    assert result["result"] == "FINISHED", result
    assert {k: result["params"][k] for k in params} == params, "the artist's values survive the schema refresh"
    project = tmp_path / "project"
    assert_result_strip(result["strip"], result["job"], project, channel=3)
    spec = json.loads((tmp_path / "jobs" / result["job"] / "spec.json").read_text())
    assert spec["op"] == "restyle"
    assert spec["inputs"] == {"plate": shot_args["shot"]["plate"], "reference": str(style)}, \
        "the plate strip goes by path, the EXR style frame as the one file of the image role"
    assert {k: spec["params"][k] for k in params} == params
    with Client(server.endpoint) as client:
        status = client.status(result["job"])
    assert status["state"] == "done" and status["done"] == 4
    for frame, path in zip(range(FRAMES[0], FRAMES[1] + 1), result["strip"]["files"]):
        image = read_exr(path)
        plate = read_exr(shot_args["shot"]["plate"].replace("####", str(frame)))
        assert image.attributes["cvgen:op"] == "restyle" and image.data_window == plate.data_window
        rgb = image.stack(("R", "G", "B"))
        assert np.isfinite(rgb).all() and not np.array_equal(rgb, plate.stack(("R", "G", "B"))), "restyled"
