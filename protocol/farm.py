"""Farm submissions as hosts write them: a job file that also says how a render farm should cut it up.

Blender and Nuke write the file with `write_job_file` and nothing but this package; the server's
`cvgen farm openjd|opencue JOB.json` reads it and turns it into the farm's job description, and
every farm task runs `cvgen render JOB.json --frames A-B` on the same file (which ignores the
`farm` section, as it ignores every key it does not know).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import ProtocolError
from .files import atomic_output
from .jobs import JobSpec, read_job_data

#: Farm engines `cvgen farm` writes job descriptions for.
ENGINES = ("openjd", "opencue")
DEFAULT_CHUNK = 10

_TAG = re.compile(r"^[A-Za-z0-9]+$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def check_engine(engine: str) -> str:
    """The engine, if `cvgen farm` knows it; the message lists the ones it does."""
    if engine not in ENGINES:
        raise ProtocolError(f"unknown farm engine {engine!r}; cvgen submits to {' or '.join(ENGINES)}")
    return engine


def _count(value: Any, what: str, least: int = 0, unit: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ProtocolError(f"{what} must be a whole number{unit}, {least} or more, not {value!r}")
    return value


@dataclass(frozen=True)
class Resources:
    """What one farm task needs of its node; 0 asks for nothing (the farm's default).

    `gpus` left as None takes the op's need: one GPU for ops with a model, none otherwise.
    `tags` pick OpenCue hosts (letters and digits, e.g. `gpu`); Open Job Description has no tags.
    """

    gpus: int | None = None
    gpu_memory_mib: int = 0
    cpus: int = 0
    memory_mib: int = 0
    tags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.gpus is not None:
            _count(self.gpus, "gpus")
        _count(self.gpu_memory_mib, "gpu_memory_mib")
        _count(self.cpus, "cpus")
        _count(self.memory_mib, "memory_mib")
        if isinstance(self.tags, str) or not all(isinstance(t, str) and _TAG.match(t) for t in self.tags):
            raise ProtocolError(f"tags must be names of letters and digits only, not {self.tags!r}")
        object.__setattr__(self, "tags", tuple(self.tags))


@dataclass(frozen=True)
class FarmSubmission:
    """A job plus how to run it on a farm: engine, frames per task, warm-up, resources, shot context.

    `warmup` left as None takes the op's own number of warm-up frames; `show` and `shot` are what
    OpenCue files the job under (empty: its defaults); `env` is set for every task.
    """

    job: JobSpec
    engine: str = "openjd"
    chunk: int = DEFAULT_CHUNK
    warmup: int | None = None
    resources: Resources = field(default_factory=Resources)
    show: str = ""
    shot: str = ""
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.job, JobSpec):
            raise ProtocolError(f"a farm submission needs a JobSpec, not {type(self.job).__name__}")
        check_engine(self.engine)
        _count(self.chunk, "chunk size", least=1, unit=" of frames")
        if self.warmup is not None:
            _count(self.warmup, "warm-up")
        if not isinstance(self.resources, Resources):
            raise ProtocolError("resources must be a Resources")
        for name in ("show", "shot"):
            if not isinstance(getattr(self, name), str):
                raise ProtocolError(f"{name} must be text, not {getattr(self, name)!r}")
        if not isinstance(self.env, dict) or not all(
            isinstance(k, str) and _ENV_NAME.match(k) and isinstance(v, str) for k, v in self.env.items()
        ):
            raise ProtocolError(f"env must map variable names to text values, not {self.env!r}")

    def to_dict(self) -> dict[str, Any]:
        """The job file: the job's own keys plus a `farm` section."""
        farm = asdict(self)
        del farm["job"]
        return {**self.job.to_dict(), "farm": farm}

    @classmethod
    def from_dict(cls, data: Any) -> FarmSubmission:
        """Read a job file; one without a `farm` section gets the defaults. Unknown keys are ignored."""
        job = JobSpec.from_dict(data)
        farm = data.get("farm", {})
        if not isinstance(farm, dict):
            raise ProtocolError(f"the job's farm section must be a mapping, not {farm!r}")
        resources = farm.get("resources", {})
        if not isinstance(resources, dict):
            raise ProtocolError(f"the farm section's resources must be a mapping, not {resources!r}")
        res = {f.name: resources[f.name] for f in fields(Resources) if f.name in resources}
        given = {f.name: farm[f.name] for f in fields(cls) if f.name not in ("job", "resources") and f.name in farm}
        return cls(job, resources=Resources(**res), **given)


def write_job_file(spec: JobSpec | FarmSubmission, path: str | os.PathLike[str]) -> Path:
    """Write a job file for `cvgen render` and `cvgen farm`, atomically.

    It goes to a hidden temporary file beside `path` and is renamed into place, so a farm task
    or a second submission reading it meanwhile sees the old file or the new one, never half.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(dest, ".json") as tmp, open(tmp, "x", encoding="utf-8") as f:
        json.dump(spec.to_dict(), f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    return dest


def read_job_file(path: str | os.PathLike[str]) -> FarmSubmission:
    """The submission in a job file, with messages that name the file when it is missing or broken."""
    return FarmSubmission.from_dict(read_job_data(path))
