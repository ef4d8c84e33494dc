"""Submitting a shot to a render farm: a job file on shared storage, then `cvgen farm` as a subprocess.

The job is the one a Render would send (same planning, same converted inputs), written with
`cvgen.protocol.farm.write_job_file` to `//cvgen/<shot>/farm/<job-id>.json` with a `farm`
section (engine, chunk, OpenCue show/shot). The `cvgen` command turns it into the farm's job:
an Open Job Description bundle beside it (`<job-id>.openjd`, submitted with Deadline's tools),
or an OpenCue job launched with `--submit` (or its spec saved as `<job-id>.xml`). Every farm
node must see the job file, the inputs and the output folder at the same paths.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import SetupError
from .jobs import Notice, RenderRequest, build_job
from .params import ops_from_hello
from .protocol import protocol
from .shots import shot_dir

farm = importlib.import_module(f"{protocol.__name__}.farm")

ENGINES = farm.ENGINES
DEFAULT_CHUNK = farm.DEFAULT_CHUNK
#: Seconds `cvgen farm` may take (an OpenCue submission talks to the Cuebot).
TIMEOUT_S = 120.0


@dataclass(frozen=True)
class FarmOptions:
    """The panel's Farm box: engine, frames per task, OpenCue's show and shot, spec only (OpenCue)."""

    engine: str = "openjd"
    chunk: int = DEFAULT_CHUNK
    show: str = ""
    shot: str = ""
    spec_only: bool = False


@dataclass(frozen=True)
class FarmResult:
    """What a submission made: the job file, the bundle or spec written (if any), the OpenCue jobs launched."""

    job_file: Path
    output: Path | None
    launched: tuple[str, ...]
    log: str

    @property
    def message(self) -> str:
        if self.launched:
            return f"cvgen: launched OpenCue job(s) {', '.join(self.launched)} from {self.job_file}"
        if self.output is not None and self.output.suffix == ".openjd":
            return f"cvgen: wrote the job bundle {self.output}; submit it with: deadline bundle submit {self.output}"
        return f"cvgen: wrote the OpenCue job spec {self.output}"


def job_file_path(blend_path: str, shot: str, job_id: str) -> Path:
    """`//cvgen/<shot>/farm/<job-id>.json`."""
    return shot_dir(blend_path, shot) / "farm" / f"{job_id}.json"


def farm_spec(request: RenderRequest, ops: list[dict[str, Any]]) -> tuple[Any, list[str]]:
    """The `JobSpec` a Render would send, and notices; checked against the ops' schemas when the panel
    has them (after Connect), else left for `cvgen farm` to check against its own ops."""
    notices: list[str] = []

    def emit(event: Any) -> None:
        if isinstance(event, Notice):
            notices.append(event.text)

    hello = {"ops": ops}
    if request.op in ops_from_hello(hello):
        return build_job(request, hello, emit), notices
    return protocol.JobSpec(
        request.op, request.frames, dict(request.inputs), dict(request.params), colorspace=request.colorspace,
        seed=request.seed, name=request.name, output=request.output, job_id=request.job_id,
    ), notices


def submission(spec: Any, options: FarmOptions) -> Any:
    """A `FarmSubmission`; a bad engine or chunk is the artist's to fix."""
    try:
        return farm.FarmSubmission(spec, engine=options.engine, chunk=options.chunk,
                                   show=options.show.strip() if options.engine == "opencue" else "",
                                   shot=options.shot.strip() if options.engine == "opencue" else "")
    except protocol.CvgenError as exc:
        raise SetupError(str(exc)) from None


def find_cvgen(configured: str, server_python: str = "") -> str:
    """The cvgen command: the preference if set, else `cvgen` beside the local server's Python, else on PATH."""
    if configured:
        if os.path.isfile(configured) and os.access(configured, os.X_OK):
            return configured
        raise SetupError(f"the cvgen command in the cvgen preferences ({configured}) is not an executable file")
    if server_python:
        folder = Path(server_python).parent
        for name in ("cvgen.exe", "cvgen") if sys.platform == "win32" else ("cvgen",):
            candidate = folder / name
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    found = shutil.which("cvgen")
    if found is None:
        raise SetupError(
            "the cvgen command was not found: set \"cvgen Command\" in the cvgen preferences to the cvgen "
            "executable (e.g. .venv/bin/cvgen), or the local server's Python to the one cvgen is installed in"
        )
    return found


def farm_command(cvgen: str, engine: str, job_file: Path, spec_only: bool = False) -> tuple[list[str], Path | None]:
    """The `cvgen farm` command line for a job file, and the bundle or spec it writes (None: it launches)."""
    if engine == "openjd":
        output: Path | None = job_file.with_suffix(".openjd")
        return [cvgen, "farm", "openjd", str(job_file), "-o", str(output)], output
    if spec_only:
        output = job_file.with_suffix(".xml")
        return [cvgen, "farm", "opencue", str(job_file), "--output", str(output)], output
    return [cvgen, "farm", "opencue", str(job_file), "--submit"], None


def error_of(stderr: str, code: int) -> str:
    """The `cvgen: error: ...` line of a failed command, or its last words."""
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("cvgen: error:"):
            return "cvgen farm: " + line.removeprefix("cvgen: error:").strip()
    return f"cvgen farm failed (exit code {code})" + (f": {lines[-1]}" if lines else "")


def child_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for `cvgen`: Blender's own Python settings are not the cvgen install's."""
    return {k: v for k, v in (os.environ if env is None else env).items() if k not in ("PYTHONHOME", "PYTHONPATH")}


def submit(cvgen: str, sub: Any, job_file: Path, spec_only: bool = False, timeout: float = TIMEOUT_S) -> FarmResult:
    """Write the job file and run `cvgen farm` on it; its errors become `SetupError`s."""
    farm.write_job_file(sub, job_file)
    command, output = farm_command(cvgen, sub.engine, job_file, spec_only)
    try:
        proc = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
                              env=child_env(), check=False)
    except FileNotFoundError:
        raise SetupError(f"the cvgen command {cvgen} was not found: set it in the cvgen preferences") from None
    except PermissionError:
        raise SetupError(f"the cvgen command {cvgen} cannot be run: set it in the cvgen preferences") from None
    except subprocess.TimeoutExpired:
        raise SetupError(f"cvgen farm did not finish within {timeout:.0f} s; the job file is {job_file}") from None
    if proc.returncode != 0:
        raise SetupError(error_of(proc.stderr, proc.returncode))
    launched: tuple[str, ...] = ()
    for line in proc.stdout.splitlines():
        if line.startswith("launched OpenCue job(s) "):
            launched = tuple(n.strip() for n in line.removeprefix("launched OpenCue job(s) ").split(",") if n.strip())
    return FarmResult(job_file, output, launched, proc.stdout)

