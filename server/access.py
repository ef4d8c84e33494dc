"""Who may use which job: the sender of each request by its key, as the allow-list is now, and
the jobs and job-folder paths that sender may touch.

On a server without keys everything belongs to the one local user. With keys, a job belongs to
the key that submitted it (`JobStore.owner`); another client's job answers exactly as one that
does not exist, so job ids do not leak, and no request reaches another client's staged inputs or
frames by naming a path in the jobs folder.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import zmq

from cvgen.protocol.errors import ProtocolError
from cvgen.protocol.jobs import JobSpec

from .auth import LOCAL, RECHECK_S, AllowList, Requester
from .jobs.store import JobRecord, JobStore

log = logging.getLogger("cvgen.server")


class Access:
    """The access rules of one server: its job store and its allow-list (None: no keys)."""

    def __init__(self, store: JobStore, allow: AllowList | None) -> None:
        self.store = store
        self.allow = allow
        self._next_key_check = 0.0

    def check_keys(self, sighup: bool) -> None:
        """Re-read the allow-list on SIGHUP, and when authorized/ changed (looked at every
        RECHECK_S; each request also looks, in `requester`)."""
        if self.allow is None:
            if sighup:
                log.warning("no keys to reload: this server was started without --keys")
            return
        now = time.monotonic()
        if sighup:
            self.allow.reload()
        elif now >= self._next_key_check:
            self.allow.refresh(thorough=True)
        else:
            return
        self._next_key_check = now + RECHECK_S

    def requester(self, frames: list[zmq.Frame]) -> Requester:
        """The sender of a request, by its connection's key, as the allow-list is now: a key
        removed since the connection was made is refused from the first request after."""
        if self.allow is None:
            return LOCAL
        self.allow.refresh()
        try:
            user_id = frames[0].get("User-Id")
        except zmq.ZMQError:
            user_id = ""
        return self.allow.requester(user_id)

    def check_owner(self, job_id: str, requester: Requester) -> None:
        """Refuse a job the requester may not use as if it did not exist, so job ids do not leak."""
        if not requester.may_use(self.store.owner(job_id)):
            raise self.store.no_job(job_id)

    def check_job_paths(self, spec: JobSpec, requester: Requester) -> None:
        """No request reads or writes the jobs folder by path, except inside the requester's own
        jobs (a result chained into the next op): not another client's staged inputs or frames."""
        named = {f"input {role}": os.path.dirname(template) for role, template in spec.inputs.items()}
        if spec.output:
            named["output"] = spec.output
        for what, folder in named.items():
            job_id = self.store.job_at(Path(os.path.realpath(folder)))
            if job_id is not None and not (job_id and requester.may_use(self.store.owner(job_id))):
                raise ProtocolError(f"{what} {folder} is in the jobs folder outside any job of yours; a request "
                                    "may read only its own jobs' files there")

    def job_folders(self, record: JobRecord) -> list[Path]:
        """The job folders a job reads frames from: its own, and those its inputs name of jobs its
        owner may use. Called on a worker thread as the job starts, so a symlink made after the
        submit still cannot lead to another client's files."""
        owner = self.store.owner(record.job_id)
        requester = LOCAL if self.allow is None else Requester(owner or "", owner in self.allow.admins)
        folders = [record.folder]
        for template in record.spec.inputs.values():
            job_id = self.store.job_at(Path(os.path.realpath(os.path.dirname(template))))
            if job_id and requester.may_use(self.store.owner(job_id)):
                folders.append(self.store.root / job_id)
        return folders
