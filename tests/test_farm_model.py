"""The farm-neutral job: chunking, warm-up, resources, the job file hosts write, TD-facing errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from support import make_shot

from cvgen.protocol import JobSpec, ProtocolError
from cvgen.protocol.farm import FarmSubmission, Resources, read_job_file, write_job_file
from cvgen.server.core.models import ModelCache, ModelRegistry
from cvgen.server.farm.model import FarmJob, farm_job, load_submission, parse_mib
from cvgen.server.io.exr import read_exr
from cvgen.server.jobs.runner import run_job
from cvgen.server.ops.harmonize import frames_to_render


def cvgen(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cvgen.server.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def colormatch_job(tmp_path: Path, **farm) -> Path:
    shot = make_shot(tmp_path / "shot", range(1001, 1004))
    job = JobSpec("colormatch", (1001, 1003), shot, name="sh010_cm")
    return write_job_file(FarmSubmission(job, **farm), tmp_path / "sh010_cm.json")


@given(first=st.integers(-10, 2000), length=st.integers(1, 300), chunk=st.integers(1, 64))
def test_chunks_cover_the_range_exactly_once_in_order(first, length, chunk):
    last = first + length - 1
    job = FarmJob("sh", "colormatch", Path("/j.json"), (first, last), chunk, 0, Resources(gpus=0))
    chunks = job.chunks()
    frames = [f for a, b in chunks for f in range(a, b + 1)]
    assert frames == list(range(first, last + 1))
    assert all(b - a + 1 == chunk for a, b in chunks[:-1]) and 1 <= chunks[-1][1] - chunks[-1][0] + 1 <= chunk


def test_the_job_file_a_host_writes_round_trips_and_cvgen_render_reads_it(tmp_path):
    submission = FarmSubmission(JobSpec("colormatch", (1, 3), {"plate": "p.####.exr", "fg": "f.####.exr"}),
                                engine="opencue", chunk=2, warmup=1, show="demo", shot="sh010", env={"A": "1"},
                                resources=Resources(gpus=1, gpu_memory_mib=8192, cpus=4, memory_mib=16384,
                                                    tags=("gpu",)))
    path = write_job_file(submission, tmp_path / "jobs" / "sh010.json")
    assert read_job_file(path) == submission
    assert [p.name for p in path.parent.iterdir()] == ["sh010.json"]  # no temporary file left behind
    assert JobSpec.from_dict(json.loads(path.read_text())) == submission.job  # what `cvgen render` reads


def test_defaults_come_from_the_op_and_the_command_line_wins_over_the_job_file(tmp_path):
    shot = make_shot(tmp_path / "shot", range(1, 2))
    cm = write_job_file(JobSpec("colormatch", (1, 1), shot), tmp_path / "cm.json")
    job = farm_job(cm, read_job_file(cm))
    assert (job.warmup, job.resources.gpus, job.chunk, job.name) == (0, 0, 10, "cm")
    hz = write_job_file(FarmSubmission(JobSpec("harmonize", (1, 1), shot), chunk=4, env={"A": "1", "B": "2"},
                                       resources=Resources(cpus=8)), tmp_path / "hz.json")
    job = farm_job(hz, read_job_file(hz))
    assert (job.warmup, job.resources.gpus, job.chunk, job.resources.cpus) == (2, 1, 4, 8)
    job = farm_job(hz, load_submission(hz, {"chunk": 6, "warmup": 0, "gpus": 2, "env": {"B": "3"}}))
    assert (job.warmup, job.resources.gpus, job.chunk, job.resources.cpus) == (0, 2, 6, 8)
    assert job.env == {"A": "1", "B": "3"} and job.job_file == hz.resolve()
    assert "2 warm-up frame(s) each;" in farm_job(hz, read_job_file(hz)).summary()


def test_a_restyle_task_says_it_renders_the_shots_first_frame_too(tmp_path):
    """Every restyle frame attends to the shot's first frame, so each task renders it: the TD sizing the
    chunks should see that cost."""
    shot = make_shot(tmp_path / "shot", range(1, 2))
    rs = write_job_file(FarmSubmission(JobSpec("restyle", (1, 40), {"plate": shot["plate"]}), chunk=8),
                        tmp_path / "rs.json")
    job = farm_job(rs, read_job_file(rs))
    assert job.anchor and job.warmup == 2
    assert "in 5 task(s) of up to 8 frame(s), 2 warm-up frame(s) each after the shot's first frame;" in job.summary()


def test_memory_sizes_read_as_tds_write_them():
    assert [parse_mib(t, "--memory") for t in ("16G", "16GiB", "512M", "512", "1.5g")] == [16384, 16384, 512, 512, 1536]
    with pytest.raises(ProtocolError, match="--memory must be a size such as 16G"):
        parse_mib("lots", "--memory")


@pytest.mark.parametrize(
    "farm, message",
    [({"engine": "deadline"}, "unknown farm engine 'deadline'; cvgen submits to openjd or opencue"),
     ({"chunk": 0}, "chunk size must be a whole number of frames, 1 or more, not 0"),
     ({"warmup": -1}, "warm-up must be a whole number, 0 or more, not -1")],
)
def test_a_bad_farm_section_is_refused_when_read(tmp_path, farm, message):
    path = tmp_path / "job.json"
    path.write_text(json.dumps({"op": "colormatch", "frames": [1, 2], "farm": farm}))
    with pytest.raises(ProtocolError) as err:
        read_job_file(path)
    assert str(err.value) == message


@pytest.mark.parametrize(
    "args, message",
    [(["--chunk", "0"], "chunk size must be a whole number of frames, 1 or more, not 0"),
     (["--chunk", "ten"], "--chunk must be a whole number, not 'ten'"),
     (["--gpus", "-1"], "gpus must be a whole number, 0 or more, not -1"),
     (["--env", "NOEQUALS"], "--env must look like NAME=VALUE"),
     (["--gpu-memory", "big"], "--gpu-memory must be a size such as 16G"),
     (["--gpu-memory", "8G"], "GPU memory (8192 MiB) is asked for tasks without a GPU; ask for --gpus 1")],
)
def test_cvgen_farm_explains_bad_options_without_a_traceback(tmp_path, args, message):
    job = colormatch_job(tmp_path)
    result = cvgen("farm", "openjd", str(job), "-o", str(tmp_path / "bundle"), *args)
    assert result.returncode == 1, result.stderr
    assert f"cvgen: error: {message}" in result.stderr and "Traceback" not in result.stderr


def test_cvgen_farm_explains_a_missing_job_file_an_unknown_engine_and_an_unknown_op(tmp_path):
    result = cvgen("farm", "opencue", str(tmp_path / "nope.json"))
    assert result.returncode == 1 and f"cvgen: error: job file {tmp_path / 'nope.json'} does not exist" in result.stderr
    job = colormatch_job(tmp_path)
    result = cvgen("farm", "deadline", str(job))
    assert result.returncode == 1
    assert "cvgen: error: unknown farm engine 'deadline'; cvgen submits to openjd or opencue" in result.stderr
    result = cvgen("farm", "openjd", str(job))
    assert result.returncode == 1 and "cvgen: error: cvgen farm openjd needs -o DIR" in result.stderr
    result = cvgen("farm", "openjd", str(job), "-o", str(tmp_path / "b"), "--tags", "gpu", "--submit")
    assert result.returncode == 1 and "cvgen: error: --tags, --submit: OpenCue only" in result.stderr
    data = json.loads(job.read_text())
    job.write_text(json.dumps({**data, "farm": {"engine": "tractor"}}))
    result = cvgen("farm", "opencue", str(job))
    assert result.returncode == 1 and "cvgen: error: unknown farm engine 'tractor'" in result.stderr
    job.write_text(json.dumps({**data, "op": "relight"}))
    result = cvgen("farm", "openjd", str(job), "-o", str(tmp_path / "b"))
    assert result.returncode == 1 and "cvgen: error: unknown op 'relight'" in result.stderr
    assert not (tmp_path / "b").exists() and "Traceback" not in result.stderr


def test_the_host_side_needs_only_the_protocol_package(tmp_path):
    """Blender and Nuke write farm job files with nothing but cvgen.protocol and the standard library."""
    code = f"""
import importlib.abc, sys
BLOCKED = ("OpenImageIO", "PyOpenColorIO", "av", "torch", "yaml", "outline", "opencue", "openjd", "cvgen.server")
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.startswith(BLOCKED):
            raise ImportError(f"host environments have no {{name}}")
sys.meta_path.insert(0, Block())
from cvgen.protocol import JobSpec
from cvgen.protocol.farm import FarmSubmission, Resources, write_job_file
job = JobSpec("harmonize", (1001, 1010), {{"plate": "p.####.exr", "fg": "f.####.exr"}}, name="sh010")
print(write_job_file(FarmSubmission(job, engine="opencue", chunk=5, resources=Resources(gpus=1)), {str(tmp_path / "h.json")!r}))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert read_job_file(tmp_path / "h.json").chunk == 5


class Shot:
    frames = range(1001, 1011)


@pytest.mark.parametrize(
    "todo, warmup, tau, expected",
    [([1005, 1006], 2, 0.6, [1003, 1004, 1005, 1006]),
     ([1002, 1003], 2, 0.6, [1001, 1002, 1003]),  # only frames inside the shot
     ([1001], 2, 0.6, [1001]),
     ([1005, 1006], 0, 0.6, [1005, 1006]),
     ([1005, 1006], 2, 0.0, [1005, 1006])],  # without inter-frame attention there is no state to warm
)
def test_harmonize_warms_up_on_the_frames_before_a_chunk(todo, warmup, tau, expected):
    assert frames_to_render(Shot(), todo, {"tau": tau}, warmup) == expected


def test_warm_up_frames_make_a_harmonize_chunk_match_the_full_run(tmp_path):
    """Frame 3 of a 3-frame shot rendered alone with 2 warm-up frames (`cvgen render --warmup 2`)
    sees the inter-frame attention a full run gives it: the same pixels, bit for bit; without
    warm-up frames it does not."""
    shot = make_shot(tmp_path / "shot", range(1, 4))
    params = {"steps": 4, "strength": 0.5, "tau": 0.6}
    spec = JobSpec("harmonize", (1, 3), shot, params=params, name="h")
    models = ModelCache(ModelRegistry.load())
    run_job(spec, tmp_path / "priming", models=models)  # fills the inversion cache, which every run below reads
    run_job(spec, tmp_path / "full", models=models)
    run_job(spec, tmp_path / "cold", frames=[3], warmup=0, models=models)
    job = write_job_file(spec, tmp_path / "h.json")
    result = cvgen("render", str(job), "--frames", "3", "--warmup", "2", "--output", str(tmp_path / "warm"))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "warm").iterdir()) == ["h.0003.exr"]  # warm-up frames are not written
    full, warm, cold = (read_exr(tmp_path / d / "h.0003.exr").pixels.view(np.uint16) for d in ("full", "warm", "cold"))
    assert np.array_equal(warm, full)
    assert not np.array_equal(cold, full)
