"""Open Job Description bundles, checked and run for real with the `openjd` CLI (openjd-cli)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from support import make_shot

from cvgen.protocol import JobSpec
from cvgen.protocol.farm import FarmSubmission, Resources, read_job_file, write_job_file
from cvgen.server.farm.model import farm_job
from cvgen.server.io.exr import read_exr
from cvgen.server.jobs.runner import run_job

BIN = Path(sys.executable).parent
FIRST, LAST = 1001, 1005


@pytest.fixture(scope="module")
def openjd() -> str:
    tool = BIN / "openjd"
    assert tool.is_file(), f"the openjd CLI is missing ({tool}): install the test tools (pip install -e '.[test]')"
    return str(tool)


def cvgen(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cvgen.server.cli", *args], capture_output=True, text=True,
                          timeout=120)


def run_bundle(openjd: str, bundle: Path) -> dict:
    """`openjd run` the bundle's step with its parameter values file, as a farm would, all tasks in one session."""
    values = yaml.safe_load((bundle / "parameter_values.yaml").read_text())["parameterValues"]
    params = [arg for v in values for arg in ("-p", f"{v['name']}={v['value']}")]
    result = subprocess.run([openjd, "run", str(bundle / "template.yaml"), *params, "--output", "json"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr
    return json.loads(result.stdout)


def test_a_bundle_renders_every_frame_once_exactly_as_cvgen_renders_in_process(openjd, tmp_path):
    shot = make_shot(tmp_path / "shot", range(FIRST, LAST + 1))
    spec = JobSpec("colormatch", (FIRST, LAST), shot, name="sh010_cm", output=str(tmp_path / "farm-frames"))
    job_file = write_job_file(FarmSubmission(spec, chunk=2), tmp_path / "sh010_cm.json")
    bundle = tmp_path / "bundle"
    made = cvgen("farm", "openjd", str(job_file), "-o", str(bundle), "--cvgen", str(BIN / "cvgen"),
                 "--env", "CVGEN_FARM_TEST=1")
    assert made.returncode == 0, made.stderr
    assert "frames 1001-1005 (5) in 3 task(s) of up to 2 frame(s)" in made.stdout

    checked = subprocess.run([openjd, "check", str(bundle / "template.yaml")], capture_output=True, text=True)
    assert checked.returncode == 0 and "passes validation" in checked.stdout, checked.stdout + checked.stderr

    report = run_bundle(openjd, bundle)
    assert report["status"] == "success"
    messages = [entry.get("message", "") for entry in report["logs"]]
    assert "Setting: CVGEN_FARM_TEST=1" in messages
    tasks = [tuple(map(int, m.split("=")[1].strip().split("-"))) for m in messages if m.startswith("Frame(CHUNK[INT])")]
    assert tasks == farm_job(job_file, read_job_file(job_file)).chunks() == [(1001, 1002), (1003, 1004), (1005, 1005)]
    rendered = [int(m.split()[1].rstrip(":")) for m in messages if re.match(r"frame \d+: ", m)]
    assert rendered == list(range(FIRST, LAST + 1))  # every frame rendered, once, by one task

    frames = sorted(p.name for p in (tmp_path / "farm-frames").iterdir())
    assert frames == [f"sh010_cm.{f}.exr" for f in range(FIRST, LAST + 1)]
    run_job(spec, tmp_path / "local")
    for f in range(FIRST, LAST + 1):
        farm = read_exr(tmp_path / "farm-frames" / f"sh010_cm.{f}.exr")
        local = read_exr(tmp_path / "local" / f"sh010_cm.{f}.exr")
        assert np.array_equal(farm.pixels.view(np.uint16), local.pixels.view(np.uint16)), f"frame {f} differs"


def test_a_gpu_job_asks_for_its_resources_and_warm_up_and_passes_openjd_check(openjd, tmp_path):
    shot = make_shot(tmp_path / "shot", range(1, 2))
    submission = FarmSubmission(JobSpec("harmonize", (1, 48), shot, name="sh020"), chunk=8,
                                resources=Resources(gpu_memory_mib=12288, cpus=4), env={"CVGEN_MODELS": "/m.toml"})
    job_file = write_job_file(submission, tmp_path / "sh020.json")
    made = cvgen("farm", "openjd", str(job_file), "-o", str(tmp_path / "bundle"), "--memory", "32G")
    assert made.returncode == 0, made.stderr
    checked = subprocess.run([openjd, "check", str(tmp_path / "bundle" / "template.yaml")], capture_output=True,
                             text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    template = yaml.safe_load((tmp_path / "bundle" / "template.yaml").read_text())
    defaults = {p["name"]: p.get("default") for p in template["parameterDefinitions"]}
    assert defaults == {"JobFile": None, "Frames": "1-48", "ChunkSize": 8, "Warmup": 2}  # harmonize's warm-up
    step = template["steps"][0]
    assert step["parameterSpace"]["taskParameterDefinitions"][0]["type"] == "CHUNK[INT]"
    assert {a["name"]: a["min"] for a in step["hostRequirements"]["amounts"]} == {
        "amount.worker.gpu": 1, "amount.worker.gpu.memory": 12288, "amount.worker.vcpu": 4,
        "amount.worker.memory": 32768}
    action = step["script"]["actions"]["onRun"]
    assert [action["command"], *action["args"]] == [
        "cvgen", "render", "{{Param.JobFile}}", "--frames", "{{Task.Param.Frame}}", "--warmup", "{{Param.Warmup}}"]
    assert template["jobEnvironments"][0]["variables"] == {"CVGEN_MODELS": "/m.toml"}
    values = yaml.safe_load((tmp_path / "bundle" / "parameter_values.yaml").read_text())
    assert values == {"parameterValues": [{"name": "JobFile", "value": str(job_file.resolve())}]}


def test_a_propagate_bundle_is_one_task_and_renders_what_cvgen_renders_in_process(openjd, tmp_path):
    """propagate's windows each depend on the one before: the farm runs the whole range as one task."""
    shot = make_shot(tmp_path / "shot", range(FIRST, LAST + 1))
    inputs = {"plate": shot["plate"], "edit": shot["plate"].replace("####", str(FIRST))}
    spec = JobSpec("propagate", (FIRST, LAST), inputs, name="sh010_pr", output=str(tmp_path / "farm-frames"),
                   params={"model": "tiny-svd", "steps": 2})
    job_file = write_job_file(FarmSubmission(spec, chunk=2), tmp_path / "sh010_pr.json")
    bundle = tmp_path / "bundle"
    made = cvgen("farm", "openjd", str(job_file), "-o", str(bundle), "--cvgen", str(BIN / "cvgen"))
    assert made.returncode == 0, made.stderr
    assert "frames 1001-1005 (5) in 1 task(s) of up to 5 frame(s)" in made.stdout
    report = run_bundle(openjd, bundle)
    assert report["status"] == "success"
    run_job(spec, tmp_path / "local")
    for f in range(FIRST, LAST + 1):
        farm = read_exr(tmp_path / "farm-frames" / f"sh010_pr.{f}.exr")
        local = read_exr(tmp_path / "local" / f"sh010_pr.{f}.exr")
        assert np.array_equal(farm.pixels.view(np.uint16), local.pixels.view(np.uint16)), f"frame {f} differs"
