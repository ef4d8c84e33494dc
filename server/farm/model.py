"""The farm-neutral job: one cvgen job cut into tasks, each running `cvgen render` on a chunk.

Open Job Description bundles and OpenCue jobs are both written from a `FarmJob`, so the frame
range, chunking, warm-up, resources and the command a task runs are decided once, here, and the
engine modules only translate.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from cvgen.protocol.errors import CvgenError, ProtocolError
from cvgen.protocol.farm import FarmSubmission, Resources, read_job_file

from ..jobs.runner import check_job


class FarmError(CvgenError):
    """The farm, or the tool that talks to it, could not take the job."""


#: How the summary says a task also renders the shot's first frame.
ANCHOR = " after the shot's first frame"

@dataclass(frozen=True)
class FarmJob:
    """What a farm needs to know to run a cvgen job: everything resolved, nothing left to defaults.

    `job_file` is absolute, because tasks run on other machines (which must see it, its inputs
    and its output folder at the same paths); `cvgen` is the command on those machines.
    """

    name: str
    op: str
    job_file: Path
    frames: tuple[int, int]
    chunk: int
    warmup: int
    resources: Resources
    #: Each task also renders the shot's first frame first (`OpSpec.anchor`).
    anchor: bool = False
    show: str = ""
    shot: str = ""
    env: Mapping[str, str] = field(default_factory=dict)
    cvgen: str = "cvgen"

    def chunks(self) -> list[tuple[int, int]]:
        """(first, last) of every task in order: the range exactly once, `chunk` frames each but the last."""
        first, last = self.frames
        return [(a, min(a + self.chunk - 1, last)) for a in range(first, last + 1, self.chunk)]

    def summary(self) -> str:
        """One line for the TD: how the shot is cut up, and what each task asks for."""
        first, last = self.frames
        count = last - first + 1
        res = self.resources
        needs = [f"{res.gpus} GPU(s)" if res.gpus else "no GPU"]
        needs += [f"{res.gpu_memory_mib} MiB GPU memory"] if res.gpu_memory_mib else []
        needs += [f"{res.cpus} CPU(s)"] if res.cpus else []
        needs += [f"{res.memory_mib} MiB RAM"] if res.memory_mib else []
        return (f"{self.op} {self.name}: frames {first}-{last} ({count}) in {len(self.chunks())} task(s) of up to "
                f"{self.chunk} frame(s), {self.warmup} warm-up frame(s) each"
                f"{ANCHOR if self.anchor else ''}; per task {', '.join(needs)}")


def render_command(cvgen: str, job_file: str, frames: str, warmup: int | str) -> list[str]:
    """The command every farm task runs; each engine passes its own placeholders for the chunk."""
    return [cvgen, "render", job_file, "--frames", frames, "--warmup", str(warmup)]


def load_submission(path: Path, overrides: Mapping[str, Any]) -> FarmSubmission:
    """The job file's submission with the TD's command-line choices on top.

    `overrides` holds fields of `FarmSubmission` or of its `Resources`; `env` is merged, name by name.
    """
    submission = read_job_file(path)
    resource_names = {f.name for f in fields(Resources)}
    on_resources = {k: v for k, v in overrides.items() if k in resource_names}
    on_submission = {k: v for k, v in overrides.items() if k not in resource_names}
    if "env" in on_submission:
        on_submission["env"] = {**submission.env, **on_submission["env"]}
    return replace(submission, resources=replace(submission.resources, **on_resources), **on_submission)


def farm_job(path: Path, submission: FarmSubmission, cvgen: str = "cvgen") -> FarmJob:
    """Check the job as `cvgen render` will (op, parameters, inputs, colour space) before anything
    reaches a farm, where a typo would fail every task; then fill in the op's defaults."""
    op = check_job(submission.job).op
    res = submission.resources
    gpus = res.gpus if res.gpus is not None else int(op.uses_model)
    if res.gpu_memory_mib and not gpus:
        raise ProtocolError(f"GPU memory ({res.gpu_memory_mib} MiB) is asked for tasks without a GPU; ask for --gpus 1")
    first, last = submission.job.frames
    return FarmJob(
        name=submission.job.name or path.stem,
        op=op.name,
        job_file=path.resolve(),
        frames=submission.job.frames,
        # an op whose frames each depend on every frame before them (propagate's window chain) runs
        # as one task: any other cut would make each chunk re-render the chain from the shot's start
        chunk=last - first + 1 if op.sequential else submission.chunk,
        warmup=op.warmup if submission.warmup is None else submission.warmup,
        resources=replace(res, gpus=gpus),
        anchor=op.anchor,
        show=submission.show,
        shot=submission.shot,
        env=dict(submission.env),
        cvgen=cvgen,
    )


def parse_mib(text: str, option: str) -> int:
    """A memory size as TDs write it (`16G`, `16GiB`, `512M`, or MiB as a plain number), in MiB."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(?:([MmGg])(?:i?[Bb])?)?\s*", text)
    if not match:
        raise ProtocolError(f"{option} must be a size such as 16G or 512M, not {text!r}")
    unit = (match.group(2) or "m").lower()
    return round(float(match.group(1)) * (1024 if unit == "g" else 1))
