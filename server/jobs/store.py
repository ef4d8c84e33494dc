"""Job folders on disk: the spec, the state, staged inputs and finished frames of every job.

The folder is the job's memory across crashes: frames are complete files or absent (written
atomically), so a restarted job only needs to look at which frames exist to know what is left.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from cvgen.protocol.errors import ProtocolError
from cvgen.protocol.jobs import JobSpec, check_job_id

from ..errors import NotFound
from cvgen.protocol.files import atomic_output

#: Job states; the first two mean "not finished" and are resumed when the server restarts.
UNFINISHED = ("queued", "running")
FINISHED = ("done", "failed", "cancelled")
#: The client key that submitted a job (`auth.Requester.owner`), in its folder: not in the spec,
#: which the client writes.
OWNER_FILE = "owner.json"
#: Folders of jobs being stored by a submit: hidden, and not valid job ids.
_STAGING_PREFIX = ".submit-"


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
        """Remove what a server killed mid-write left in the job's folder: the hidden temp files of
        `atomic_output` for its state and staged inputs (never a finished file). Called as the job
        starts, when nothing else writes them; `run_job` does the same for the frames it writes,
        through the output folder it opened."""
        own = {"state.json", "spec.json"}
        for folder in (self.folder, self.inputs_dir):
            for path in folder.glob(".*.tmp.*") if folder.is_dir() else ():
                if temp_file_target(path.name) in own or folder == self.inputs_dir:
                    path.unlink(missing_ok=True)


def temp_file_target(name: str) -> str:
    """The file a hidden temp file of `atomic_output` (`.NAME.<hex>.tmp.EXT`) was to become."""
    return name[1:].rpartition(".tmp.")[0].rpartition(".")[0]


class JobStore:
    """All jobs under one root folder, one sub-folder per job id."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._owners: dict[tuple[str, int], str] = {}
        #: Creation time of every job, read from disk once and kept up to date by `listed` (by the
        #: server's transport thread, once it has accepted a job), so listing jobs does not read
        #: every job folder.
        self._created: dict[str, float] | None = None

    def create(self, spec: JobSpec, prepare: Callable[[Path, Path], None] | None = None,
               owner: str | None = None) -> JobRecord:
        """Store a new job. The folder is filled under a hidden name and renamed into place last,
        so a job folder either holds a complete job or does not exist (a crash or a full disk
        midway leaves only a hidden folder, removed at the next start). `prepare(folder, final)`
        adds files (staged inputs) to `folder`; paths it records must name `final`. `owner` is
        the submitting client's key; without one, only admins see the job on a server with keys."""
        job_id = spec.job_id or time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:8]
        spec.job_id = job_id
        folder = self.root / check_job_id(job_id)
        if folder.exists():
            raise ProtocolError(f"job {job_id} already exists in {self.root}")
        staging = self.root / f"{_STAGING_PREFIX}{job_id}.{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        try:
            if prepare is not None:
                prepare(staging, folder)
            if owner is not None:
                write_json_atomic(staging / OWNER_FILE, {"owner": owner})
            record = JobRecord(job_id, staging, spec)
            record.save_spec()
            record.set_state("queued")
            os.rename(staging, folder)
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise ProtocolError(f"job {job_id} already exists in {self.root}") from None
            raise
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return JobRecord(job_id, folder, spec)

    def remove_unfinished_submits(self) -> None:
        """Remove the hidden folders of submits a killed server never finished storing (their
        hosts never heard `accepted`)."""
        for folder in self.root.glob(f"{_STAGING_PREFIX}*"):
            shutil.rmtree(folder, ignore_errors=True)

    def get(self, job_id: str) -> JobRecord:
        folder = self.root / check_job_id(job_id)
        try:
            spec = JobSpec.from_dict(json.loads((folder / "spec.json").read_text()))
        except FileNotFoundError:
            raise self.no_job(job_id) from None
        except (OSError, ValueError) as exc:
            raise NotFound(f"job {job_id} in {self.root} has an unreadable spec: {exc}") from None
        return JobRecord(job_id, folder, spec)

    def no_job(self, job_id: str) -> NotFound:
        return NotFound(f"no job {job_id} in {self.root}")

    def owner(self, job_id: str) -> str | None:
        """Who submitted the job: None for a job without a readable owner (made before owners
        were recorded) and for no job at all. A job's owner never changes, so it is read once per
        job folder (a folder removed by hand and made again by another submit is read anew)."""
        try:
            folder = self.root / check_job_id(job_id)
            key = (job_id, os.stat(folder).st_ino)
            if key not in self._owners:
                owner = json.loads((folder / OWNER_FILE).read_text())["owner"]
                if not isinstance(owner, str):
                    return None
                self._owners[key] = owner
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return self._owners[key]

    def job_at(self, path: Path) -> str | None:
        """The name of the folder right under the jobs folder that holds `path` (resolved): a job
        id, "" for the jobs folder itself, None for a path outside the jobs folder."""
        if path != self.root and self.root not in path.parents:
            return None
        inside = path.relative_to(self.root).parts
        return inside[0] if inside else ""

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
        created = {r.job_id: r.state().get("created", 0.0) for r in records}
        self._created = created
        return sorted(records, key=lambda r: created[r.job_id])

    def listed(self, job_id: str) -> None:
        """List a job created since the listing was read (`create` runs on another thread)."""
        if self._created is not None:
            self._created.setdefault(job_id, time.time())

    def ids(self) -> list[str]:
        """Every job's id, oldest first, from memory after the first call."""
        if self._created is None:
            self.all()
        created = self._created or {}
        return sorted(created, key=created.__getitem__)
