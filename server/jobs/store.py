"""Job folders on disk: the spec, the state, staged inputs and finished frames of every job.

The folder is the job's memory across crashes: frames are complete files or absent (written
atomically), so a restarted job only needs to look at which frames exist to know what is left.
"""

from __future__ import annotations

import errno
import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cvgen.protocol.errors import ProtocolError
from cvgen.protocol.jobs import JobSpec, check_job_id

from ..errors import NotFound
from cvgen.protocol.files import atomic_output

#: Job states; the first two mean "not finished" and are resumed when the server restarts.
UNFINISHED = ("queued", "running")
FINISHED = ("done", "failed", "cancelled")


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON so that readers see the old file or the new one, never half of either."""
    with atomic_output(path, ".json") as tmp, open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())


def output_name(spec: JobSpec, frame: int) -> str:
    return f"{spec.name or spec.op}.{frame:04d}.exr"


@dataclass
class JobRecord:
    job_id: str
    folder: Path
    spec: JobSpec

    @property
    def output_dir(self) -> Path:
        return Path(self.spec.output) if self.spec.output else self.folder / "frames"

    @property
    def inputs_dir(self) -> Path:
        return self.folder / "inputs"

    def frame_file(self, frame: int) -> Path:
        return self.output_dir / output_name(self.spec, frame)

    def done_frames(self) -> list[int]:
        return [f for f in self.spec.frame_numbers if self.frame_file(f).exists()]

    def state(self) -> dict[str, Any]:
        try:
            return json.loads((self.folder / "state.json").read_text())
        except (OSError, ValueError):
            return {"state": "failed", "message": "the job's state file is missing or unreadable"}

    def set_state(self, state: str, **extra: Any) -> None:
        now = time.time()
        path = self.folder / "state.json"
        created = self.state().get("created", now) if path.exists() else now
        data = {"state": state, "time": now, "created": created, **extra}
        try:
            write_json_atomic(path, data)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or not path.exists():
                raise
            # A disk too full for a temp file beside it: overwrite the state in place, in the room
            # its old content frees, so the job does not read as running forever.
            with open(path, "w") as f:
                json.dump(data, f, indent=2, sort_keys=True)

    def save_spec(self) -> None:
        write_json_atomic(self.folder / "spec.json", self.spec.to_dict())

    def remove_stale_temp_files(self) -> None:
        """Remove what a server killed mid-write left: the hidden temp files of `atomic_output`
        for this job's state, staged inputs and frames (never a finished file). Called as the job
        starts, when nothing else writes them."""
        own = {"state.json", "spec.json", *(output_name(self.spec, f) for f in self.spec.frame_numbers)}
        for folder in (self.folder, self.inputs_dir, self.output_dir):
            for path in folder.glob(".*.tmp.*") if folder.is_dir() else ():
                dest = path.name[1:].rpartition(".tmp.")[0].rpartition(".")[0]  # .NAME.<hex>.tmp.EXT
                if dest in own or folder == self.inputs_dir:
                    path.unlink(missing_ok=True)


class JobStore:
    """All jobs under one root folder, one sub-folder per job id."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def create(self, spec: JobSpec) -> JobRecord:
        job_id = spec.job_id or time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:8]
        spec.job_id = job_id
        folder = self.root / check_job_id(job_id)
        if folder.exists():
            raise ProtocolError(f"job {job_id} already exists in {self.root}")
        folder.mkdir(parents=True)
        record = JobRecord(job_id, folder, spec)
        record.save_spec()
        record.set_state("queued")
        return record

    def get(self, job_id: str) -> JobRecord:
        folder = self.root / check_job_id(job_id)
        try:
            spec = JobSpec.from_dict(json.loads((folder / "spec.json").read_text()))
        except FileNotFoundError:
            raise NotFound(f"no job {job_id} in {self.root}") from None
        except (OSError, ValueError) as exc:
            raise NotFound(f"job {job_id} in {self.root} has an unreadable spec: {exc}") from None
        return JobRecord(job_id, folder, spec)

    def exists(self, job_id: str) -> bool:
        return (self.root / check_job_id(job_id) / "spec.json").exists()

    def all(self) -> list[JobRecord]:
        """Every readable job, oldest first (creation order is the queue order on restart)."""
        records = []
        for spec_file in self.root.glob("*/spec.json"):
            try:
                records.append(self.get(spec_file.parent.name))
            except (NotFound, ProtocolError):
                continue
        return sorted(records, key=lambda r: r.state().get("created", 0.0))
