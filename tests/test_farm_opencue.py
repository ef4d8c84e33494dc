"""OpenCue jobs built with the real pyoutline and pycue: the spec Cuebot would parse, its chunking,
and submission over pycue's real gRPC client to a stand-in Cuebot on loopback."""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent import futures
from io import StringIO
from pathlib import Path

import grpc
import pytest
from FileSequence import FrameSet
from lxml import etree
from opencue_proto import cue_pb2, cue_pb2_grpc, job_pb2, job_pb2_grpc
from support import make_shot

from cvgen.protocol import JobSpec
from cvgen.protocol.farm import FarmSubmission, Resources, write_job_file
from cvgen.server.farm.model import farm_job, load_submission

#: Cuebot's job spec schema, cjsl 1.15: the version pyoutline 1.37 writes (its DOCTYPE names it).
#: Neither pyoutline nor pycue ships the DTD (Cuebot serves it), so its content model is restated
#: here, element by element, to validate against what Cuebot's spec parser checks first.
CJSL_1_15 = """
<!ELEMENT spec (facility?, dept?, show, shot, user, email?, uid?, job*, depends*)>
<!ELEMENT job (paused?, priority?, maxretries?, maxcores?, maxgpus?, autoeat?, localbook?, os?, env*, layers?)>
<!ATTLIST job name NMTOKEN #REQUIRED>
<!ELEMENT localbook (#PCDATA)*>
<!ATTLIST localbook host NMTOKEN #REQUIRED cores NMTOKEN #REQUIRED memory NMTOKEN #REQUIRED
                    threads NMTOKEN #REQUIRED gpu NMTOKEN #REQUIRED>
<!ELEMENT layers (layer+)>
<!ELEMENT layer (cmd, range, chunk, cores?, threadable?, memory?, gpus?, gpu?, gpu_memory?, timeout?, timeout_llu?,
                 tags?, limits?, env*, services?, outputs*)>
<!ATTLIST layer name NMTOKEN #REQUIRED type (Render | Util | Post) #REQUIRED>
<!ELEMENT limits (limit+)>
<!ELEMENT services (service+)>
<!ELEMENT outputs (output*)>
<!ATTLIST output name NMTOKEN #REQUIRED>
<!ELEMENT env (key*)>
<!ATTLIST key name NMTOKEN #REQUIRED>
<!ELEMENT depends (depend*)>
<!ELEMENT depend (depjob, deplayer?, depframe?, onjob, onlayer?, onframe?)>
<!ATTLIST depend anyframe NMTOKEN #IMPLIED
                 type (LAYER_ON_SIM_FRAME | PREVIOUS_FRAME | JOB_ON_JOB | JOB_ON_LAYER | JOB_ON_FRAME | LAYER_ON_JOB |
                       LAYER_ON_FRAME | LAYER_ON_LAYER | FRAME_ON_JOB | FRAME_ON_LAYER | FRAME_ON_FRAME |
                       FRAME_BY_FRAME) #REQUIRED>
""" + "".join(f"<!ELEMENT {name} (#PCDATA)*>\n" for name in (
    "facility dept show shot user email uid paused priority maxretries maxcores maxgpus autoeat os cmd range chunk "
    "cores threadable memory gpus gpu gpu_memory timeout timeout_llu tags service output limit key depjob onjob "
    "deplayer onlayer depframe onframe"
).split())


def cvgen(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cvgen.server.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def validate(spec: str) -> etree._Element:
    """Parse the spec as Cuebot would (its DOCTYPE points at a Cuebot URL: nothing is fetched) and validate it."""
    root = etree.fromstring(spec.encode(), etree.XMLParser(no_network=True, load_dtd=False, resolve_entities=False))
    assert root.getroottree().docinfo.system_url.endswith("/cjsl-1.15.dtd")
    dtd = etree.DTD(StringIO(CJSL_1_15))
    assert dtd.validate(root), dtd.error_log.filter_from_errors()
    return root


@pytest.fixture
def job_file(tmp_path: Path) -> Path:
    shot = make_shot(tmp_path / "shot", range(1001, 1002))
    spec = JobSpec("harmonize", (1001, 1010), shot, name="sh010 harmonize v2", params={"prompt": "dusk"})
    submission = FarmSubmission(spec, engine="opencue", chunk=4, show="demo", shot="sh010",
                                resources=Resources(gpu_memory_mib=16384, tags=("gpu", "cuda")))
    return write_job_file(submission, tmp_path / "sh010 harmonize.json")


def test_the_spec_validates_against_cuebots_dtd_with_show_shot_gpus_memory_and_tags(job_file, tmp_path):
    result = cvgen("farm", "opencue", str(job_file), "--memory", "24G", "--cpus", "4", "--env", "CVGEN_MODELS=/m.toml",
                   "--output", str(tmp_path / "spec.xml"))
    assert result.returncode == 0, result.stderr
    assert "frames 1001-1010 (10) in 3 task(s) of up to 4 frame(s), 2 warm-up frame(s) each" in result.stdout
    root = validate((tmp_path / "spec.xml").read_text())
    assert (root.findtext("show"), root.findtext("shot")) == ("demo", "sh010")
    assert root.find("job").get("name") == "sh010_harmonize_v2"
    layer = root.find("job/layers/layer")
    assert (layer.get("name"), layer.get("type")) == ("harmonize", "Render")
    assert {e.tag: e.text for e in layer if e.text} == {
        "cmd": f"cvgen render {shlex.quote(str(job_file.resolve()))} --frames '#FRAME_START#-#FRAME_END#' --warmup 2",
        "range": "1001-1010", "chunk": "4", "cores": "4.0", "memory": "24576m", "gpus": "1",
        "gpu_memory": "16384m", "tags": "gpu | cuda"}
    assert {k.get("name"): k.text for k in layer.findall("env/key")} == {"CVGEN_MODELS": "/m.toml"}


def test_cuebots_chunks_cover_the_range_exactly_once(job_file):
    """Expand the layer the way Cuebot dispatches it: a frame at every `chunk`-th frame of the range,
    each running the command with #FRAME_START#/#FRAME_END# set to its chunk's first and last frame."""
    result = cvgen("farm", "opencue", str(job_file), "--chunk", "3")
    assert result.returncode == 0, result.stderr
    layer = validate(result.stdout).find("job/layers/layer")
    frames, chunk = FrameSet(layer.findtext("range")), int(layer.findtext("chunk"))
    covered = []
    for start in range(0, frames.size(), chunk):
        end = min(start + chunk, frames.size()) - 1
        args = shlex.split(layer.findtext("cmd").replace("#FRAME_START#", str(frames[start]))
                           .replace("#FRAME_END#", str(frames[end])))
        first, last = map(int, args[args.index("--frames") + 1].split("-"))
        covered.append((first, last))
    assert covered == [(1001, 1003), (1004, 1006), (1007, 1009), (1010, 1010)]
    assert covered == farm_job(job_file, load_submission(job_file, {"chunk": 3})).chunks()
    assert [f for a, b in covered for f in range(a, b + 1)] == list(range(1001, 1011))


def test_spec_generation_leaves_no_pyoutline_session_in_the_home_folder(job_file, tmp_path):
    env = {**os.environ, "HOME": str(tmp_path / "home")}
    result = cvgen("farm", "opencue", str(job_file), env=env)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "home").exists()


class StandInCuebot(cue_pb2_grpc.CueInterfaceServicer, job_pb2_grpc.JobInterfaceServicer):
    """Answers the two calls a submission makes, over OpenCue's real gRPC API: the connection
    check and LaunchSpecAndWait, which it answers with a job named as Cuebot names them."""

    def __init__(self) -> None:
        self.specs: list[str] = []

    def GetSystemStats(self, request, context):
        return cue_pb2.CueGetSystemStatsResponse()

    def LaunchSpecAndWait(self, request, context):
        self.specs.append(request.spec)
        root = validate(request.spec)
        name = "-".join([root.findtext("show"), root.findtext("shot"), root.findtext("user")]) + "_" + \
            root.find("job").get("name")
        return job_pb2.JobLaunchSpecAndWaitResponse(jobs=job_pb2.JobSeq(jobs=[job_pb2.Job(name=name)]))


@pytest.fixture
def cuebot() -> Iterator[tuple[StandInCuebot, str]]:
    servicer = StandInCuebot()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    cue_pb2_grpc.add_CueInterfaceServicer_to_server(servicer, server)
    job_pb2_grpc.add_JobInterfaceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(grace=None)


def test_submit_launches_the_job_on_the_cuebot_named_by_cuebot_hosts(job_file, cuebot):
    servicer, endpoint = cuebot
    result = cvgen("farm", "opencue", str(job_file), "--submit", env={**os.environ, "CUEBOT_HOSTS": endpoint})
    assert result.returncode == 0, result.stderr
    assert re.search(r"launched OpenCue job\(s\) demo-sh010-\S+_sh010_harmonize_v2", result.stdout)
    assert len(servicer.specs) == 1 and "<range>1001-1010</range>" in servicer.specs[0]
    assert "<?xml" not in result.stdout  # submitting does not also dump the spec


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_submit_says_what_is_wrong_when_no_cuebot_is_named_or_reachable(job_file):
    env = {k: v for k, v in os.environ.items() if k != "CUEBOT_HOSTS"}
    result = cvgen("farm", "opencue", str(job_file), "--submit", env=env)
    assert result.returncode == 1 and "cvgen: error: CUEBOT_HOSTS is not set" in result.stderr
    start = time.monotonic()
    result = cvgen("farm", "opencue", str(job_file), "--submit",
                   env={**env, "CUEBOT_HOSTS": f"127.0.0.1:{closed_port()}"}, timeout=60)
    assert result.returncode == 1, result.stderr
    assert "cvgen: error: cannot reach the Cuebot at 127.0.0.1:" in result.stderr
    assert "Traceback" not in result.stderr and time.monotonic() - start < 30
    assert json.loads(job_file.read_text())["farm"]["engine"] == "opencue"  # the job file is only ever read


def test_a_propagate_job_is_one_layer_task_over_the_whole_range(tmp_path):
    shot = make_shot(tmp_path / "shot", range(1001, 1002))
    inputs = {"plate": shot["plate"], "edit": shot["plate"].replace("####", "1001")}
    spec = JobSpec("propagate", (1001, 1010), inputs, name="sh010_pr")
    job_file = write_job_file(FarmSubmission(spec, engine="opencue", chunk=4), tmp_path / "sh010_pr.json")
    result = cvgen("farm", "opencue", str(job_file), "--output", str(tmp_path / "spec.xml"))
    assert result.returncode == 0, result.stderr
    assert "frames 1001-1010 (10) in 1 task(s) of up to 10 frame(s)" in result.stdout
    layer = validate((tmp_path / "spec.xml").read_text()).find("job/layers/layer")
    assert (layer.findtext("range"), layer.findtext("chunk")) == ("1001-1010", "10")
