"""Submit to farm: the node's job as a job file, handed to `cvgen farm` in a subprocess.

The job is the one Render builds (`jobbuild.plan_render`), with its inputs as paths in the
version folder: the farm's nodes read them from shared storage. The job file goes to the
node's output folder as `farm/<node>_<version>.json`, written with `cvgen.protocol.farm`, and
`cvgen farm` turns it into the farm's job:

- OpenJD: an Open Job Description bundle beside the job file (`farm/<node>_<version>_openjd/`),
  which the artist submits with Deadline's own tools (`deadline bundle submit DIR`);
- OpenCue: the job launched with `--submit`, or with "spec only" its XML written beside the
  job file (`farm/<node>_<version>.xml`).

Nothing here calls Nuke: the adapter reads the knobs, calls `settings` and `submit`, and shows
the `FarmResult` or the error (`SetupError` for what the artist can fix on the node,
`RenderFailed` when `cvgen farm` refused or failed). In the GUI it submits through
`Submissions` instead, which runs `submit` in a worker thread and reports on the node's status
line as it goes, so a slow Cuebot does not freeze Nuke.
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from cvgen.protocol import CvgenError
from cvgen.protocol.farm import DEFAULT_CHUNK, FarmSubmission, write_job_file

from . import knobs
from .errors import RenderFailed, SetupError
from .jobbuild import RenderPlan

#: The Farm tab's engine choice -> `cvgen farm`'s engine name.
ENGINES = {"OpenJD": "openjd", "OpenCue": "opencue"}
#: Seconds `cvgen farm` may take (checking the job, and for OpenCue talking to the Cuebot).
TIMEOUT_S = 120.0
#: Environment variables of Nuke's own Python that would break another Python started from it.
_NUKE_PYTHON_VARIABLES = ("PYTHONHOME", "PYTHONPATH")

#: Seconds between the status line's reports while a background submission runs.
TICK_S = 5.0

log = logging.getLogger("cvgen.nuke")

Runner = Callable[..., "subprocess.CompletedProcess[str]"]


@dataclass(frozen=True)
class FarmSettings:
    """The Farm tab's knobs, checked: engine as `cvgen farm` names it, chunk, OpenCue's context."""

    engine: str
    chunk: int = DEFAULT_CHUNK
    show: str = ""
    shot: str = ""
    spec_only: bool = False
    cvgen: str = "cvgen"


@dataclass(frozen=True)
class FarmResult:
    """What a submission made: the job file, the bundle or spec (None when launched), what `cvgen farm` said."""

    engine: str
    job_file: str
    output: str | None
    report: str

    @property
    def status(self) -> str:
        """One line for the node's status knob."""
        if self.engine == "openjd":
            return f"farm: wrote the OpenJD bundle {self.output}"
        if self.output:
            return f"farm: wrote the OpenCue job spec {self.output}"
        return f"farm: submitted to OpenCue ({os.path.basename(self.job_file)})"

    @property
    def message(self) -> str:
        """The message box for the artist: what `cvgen farm` reported, and what to do next."""
        lines = [self.report.strip(), f"job file: {self.job_file}"]
        if self.engine == "openjd":
            lines.append(f"Submit the bundle with Deadline's tools, e.g.: deadline bundle submit {self.output}")
        elif self.output:
            lines.append("Launch the spec with OpenCue's tools, or untick spec only to submit from the node.")
        return "\n".join(line for line in lines if line)


def settings(values: Mapping[str, Any]) -> FarmSettings:
    """The Farm tab's knob values, checked, with a message naming the knob to fix."""
    label = str(values.get(knobs.FARM_ENGINE, knobs.FARM_ENGINES[0]))
    if label not in ENGINES:
        raise SetupError(f"the farm engine must be {' or '.join(ENGINES)}, not {label!r}")
    chunk = values.get(knobs.FARM_CHUNK, DEFAULT_CHUNK)
    try:
        number = float(chunk)
    except (TypeError, ValueError):
        raise SetupError(f"the chunk size must be a whole number of frames, not {chunk!r}") from None
    if isinstance(chunk, bool) or number != int(number) or number < 1:
        raise SetupError(f"the chunk size must be a whole number of frames, 1 or more, not {chunk!r}")
    cvgen = os.path.expanduser(str(values.get(knobs.FARM_CVGEN, "") or "").strip()) or "cvgen"
    return FarmSettings(ENGINES[label], int(number), str(values.get(knobs.FARM_SHOW, "") or "").strip(),
                        str(values.get(knobs.FARM_SHOT, "") or "").strip(),
                        bool(values.get(knobs.FARM_SPEC_ONLY, False)), cvgen)


def submission(plan: RenderPlan, farm: FarmSettings) -> FarmSubmission:
    """The plan's job (inputs and output as paths) with how the farm cuts it up."""
    show, shot = (farm.show, farm.shot) if farm.engine == "opencue" else ("", "")
    try:
        return FarmSubmission(plan.job, engine=farm.engine, chunk=farm.chunk, show=show, shot=shot)
    except CvgenError as exc:
        raise SetupError(str(exc)) from None


def job_file(plan: RenderPlan) -> str:
    """`OUTPUT/farm/<node>_<version>.json`: beside the version folders, one file per submission."""
    version_dir = plan.job.output or ""
    output, version = os.path.dirname(version_dir), os.path.basename(version_dir)
    return "/".join((output, "farm", f"{plan.job.name or plan.job.op}_{version}.json"))


def target(farm: FarmSettings, path: str) -> str | None:
    """What `cvgen farm` writes beside the job file: the bundle, the spec, or nothing (submitted)."""
    stem = path.removesuffix(".json")
    if farm.engine == "openjd":
        return f"{stem}_openjd"
    return f"{stem}.xml" if farm.spec_only else None


def command(farm: FarmSettings, path: str) -> list[str]:
    """The `cvgen farm` command line for a job file (chunk, show and shot are in the file)."""
    out = target(farm, path)
    return [farm.cvgen, "farm", farm.engine, path, *(["-o", out] if out else ["--submit"])]


def child_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment for `cvgen farm`: Nuke's, less what points Python at Nuke's own Python."""
    return {k: v for k, v in environ.items() if k not in _NUKE_PYTHON_VARIABLES}


def run(cmd: Sequence[str], environ: Mapping[str, str] = os.environ, timeout: float = TIMEOUT_S,
        runner: Runner = subprocess.run) -> str:
    """Run `cvgen farm`; its report (stdout), or the error it gave, as a message for the artist."""
    try:
        done = runner(list(cmd), capture_output=True, text=True, timeout=timeout, env=child_environment(environ))
    except FileNotFoundError:
        raise SetupError(f"the cvgen executable {cmd[0]!r} was not found: install cvgen on this machine, or set "
                         "\"cvgen executable\" on the Farm tab to its full path") from None
    except PermissionError:
        raise SetupError(f"the cvgen executable {cmd[0]!r} cannot be run (permission denied): set "
                         "\"cvgen executable\" on the Farm tab to the cvgen command") from None
    except OSError as exc:
        raise SetupError(f"the cvgen executable {cmd[0]!r} cannot be run: {exc}") from None
    except subprocess.TimeoutExpired:
        raise RenderFailed(f"`cvgen farm` did not finish within {timeout:g} seconds") from None
    if done.returncode != 0:
        raise RenderFailed(f"`cvgen farm` refused the job: {error_message(done.stderr, done.returncode)}")
    return done.stdout


def error_message(stderr: str, returncode: int) -> str:
    """The reason in `cvgen farm`'s stderr (`cvgen: error: ...`), else its last line, else the exit status."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("cvgen: error:"):
            return line[len("cvgen: error:"):].strip()
    return lines[-1] if lines else f"it exited with status {returncode} and said nothing"


def submit(plan: RenderPlan, farm: FarmSettings, environ: Mapping[str, str] = os.environ,
           timeout: float = TIMEOUT_S, runner: Runner = subprocess.run) -> FarmResult:
    """Write the job file for `plan` (its inputs already on disk) and run `cvgen farm` on it."""
    path = job_file(plan)
    try:
        write_job_file(submission(plan, farm), path)
    except OSError as exc:
        raise SetupError(f"cannot write the farm job file {path}: {exc}") from None
    report = run(command(farm, path), environ, timeout, runner)
    return FarmResult(farm.engine, path, target(farm, path), report)


@dataclass(frozen=True)
class FarmUpdate:
    """What a background submission tells its node: a status line and, at the end, its result or error."""

    status: str
    result: FarmResult | None = None
    error: CvgenError | None = None

    @property
    def finished(self) -> bool:
        return self.result is not None or self.error is not None


Notify = Callable[[FarmUpdate], None]


def activity(farm: FarmSettings) -> str:
    """What `cvgen farm` is busy with, for the status line while it runs."""
    if farm.engine == "openjd":
        return "writing the OpenJD bundle"
    return "writing the OpenCue job spec" if farm.spec_only else "submitting to OpenCue"


class Submissions:
    """Farm submissions running in the background, at most one per node.

    `cvgen farm` may take up to `TIMEOUT_S` (an OpenCue submission waits on the Cuebot), and
    Nuke's UI must stay live meanwhile, so it runs in a worker thread. The worker never calls
    Nuke: it hands every update to `notify`, which the adapter makes post to Nuke's main thread.
    A node is claimed before its inputs are written, so a second press while its submission
    runs is refused before it writes another version folder.
    """

    def __init__(self, tick_s: float = TICK_S) -> None:
        self.tick_s = tick_s
        self._lock = threading.Lock()
        self._started: dict[str, float] = {}

    def claim(self, node: str) -> None:
        """Reserve `node` for a submission, or refuse with a sentence saying its last one still runs."""
        with self._lock:
            started = self._started.get(node)
            if started is None:
                self._started[node] = time.monotonic()
                return
        raise SetupError(f"{node} is still handing its last job to the farm (for {time.monotonic() - started:.0f} s): "
                         "wait until its status line says how that went")

    def release(self, node: str) -> None:
        """Free `node`: its submission ended, or its claim ended before one started."""
        with self._lock:
            self._started.pop(node, None)

    def start(self, node: str, plan: RenderPlan, farm: FarmSettings, notify: Notify,
              environ: Mapping[str, str] = os.environ, timeout: float = TIMEOUT_S,
              runner: Runner = subprocess.run) -> None:
        """Submit `plan` for the claimed `node` in a worker thread; returns at once, updates go to `notify`."""
        args = (node, plan, farm, notify, environ, timeout, runner)
        threading.Thread(target=self._run, args=args, name="cvgen-farm", daemon=True).start()

    def _run(self, node: str, plan: RenderPlan, farm: FarmSettings, notify: Notify,
             environ: Mapping[str, str], timeout: float, runner: Runner) -> None:
        stop = threading.Event()
        ticker = threading.Thread(target=self._tick, args=(farm, notify, timeout, stop), name="cvgen-farm-tick",
                                  daemon=True)
        ticker.start()
        try:
            result = submit(plan, farm, environ, timeout, runner)
            update = FarmUpdate(result.status, result=result)
        except CvgenError as exc:
            update = FarmUpdate(f"farm submission failed: {exc}", error=exc)
        except Exception as exc:  # the thread's boundary: a bug must end the submission, not leave the node busy
            log.exception("the cvgen farm submission failed")
            error = RenderFailed(f"internal error in the cvgen plugin: {type(exc).__name__}: {exc}")
            update = FarmUpdate(f"farm submission failed: {error}", error=error)
        finally:
            stop.set()
            ticker.join()
            self.release(node)
        notify(update)

    def _tick(self, farm: FarmSettings, notify: Notify, timeout: float, stop: threading.Event) -> None:
        """Say on the node what `cvgen farm` is doing, then every `tick_s` how long it has taken so far."""
        started = time.monotonic()
        notify(FarmUpdate(f"farm: {activity(farm)}"))
        while not stop.wait(self.tick_s):
            notify(FarmUpdate(f"farm: {activity(farm)}, {time.monotonic() - started:.0f} s so far "
                              f"(gives up after {timeout:g} s)"))
