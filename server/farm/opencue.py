"""OpenCue jobs for a cvgen job, built with OpenCue's own pyoutline and launched with pycue.

One outline with one layer: Cuebot cuts the layer's frame range into chunks and runs
`cvgen render JOB.json --frames #FRAME_START#-#FRAME_END#` for each, on a host with the GPUs,
memory and tags asked for. The spec is made offline (no Cuebot needed); only `submit` talks to
the Cuebot named by `CUEBOT_HOSTS`.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .model import FarmError, FarmJob, render_command

#: pyoutline narrates every step at INFO ("Creating new session path ..."), and pycue warns of a
#: failed connection that `submit` then explains itself: neither is a TD's concern.
logging.getLogger("outline").setLevel(logging.WARNING)
logging.getLogger("opencue").setLevel(logging.ERROR)

#: Seconds to wait for a Cuebot before telling the TD it cannot be reached.
CUEBOT_TIMEOUT_S = 10


def job_spec(job: FarmJob) -> str:
    """The OpenCue job spec (XML against Cuebot's cjsl DTD) that pyoutline serialises for `job`."""
    import outline
    from outline.cuerun import OutlineLauncher
    from outline.modules.shell import Shell

    first, last = job.frames
    command = render_command(job.cvgen, str(job.job_file), "#FRAME_START#-#FRAME_END#", job.warmup)
    layer = Shell(_token(job.op), command=shlex.join(command), range=f"{first}-{last}", chunk=job.chunk,
                  **layer_resources(job))
    for name, value in job.env.items():
        layer.set_env(name, value)
    ol = outline.Outline(_token(job.name), frame_range=f"{first}-{last}", show=job.show or None,
                         shot=job.shot or None)
    ol.add_layer(layer)
    with _session_in_temporary_folder():
        return OutlineLauncher(ol, nomail=True).serialize(use_pycuerun=False)


def layer_resources(job: FarmJob) -> dict[str, Any]:
    """pyoutline layer arguments for the task's resources (memory as Cuebot reads it: `NNNNm` is MiB)."""
    res = job.resources
    args: dict[str, Any] = {}
    if res.gpus:
        args["gpus"] = res.gpus
    if res.gpu_memory_mib:
        args["gpu_memory"] = f"{res.gpu_memory_mib}m"
    if res.cpus:
        args["cores"] = res.cpus
    if res.memory_mib:
        args["memory"] = f"{res.memory_mib}m"
    if res.tags:
        args["tags"] = list(res.tags)
    return args


def submit(spec: str) -> list[str]:
    """Launch the spec on the Cuebot named by `CUEBOT_HOSTS`; returns the names of the jobs made."""
    hosts = [h.strip() for h in os.environ.get("CUEBOT_HOSTS", "").split(",") if h.strip()]
    if not hosts:
        raise FarmError("CUEBOT_HOSTS is not set: name the Cuebot to submit to, e.g. CUEBOT_HOSTS=cuebot:8443")
    import opencue

    where = ", ".join(hosts)
    opencue.Cuebot.setTimeout(CUEBOT_TIMEOUT_S * 1000)
    try:
        opencue.Cuebot.setHosts(hosts)
    except opencue.exception.CueException:
        raise FarmError(f"cannot reach the Cuebot at {where} (CUEBOT_HOSTS): check the host, the port "
                        f"(8443 by default) and that Cuebot is running") from None
    try:
        jobs = opencue.api.launchSpecAndWait(spec)
    except opencue.exception.CueException as exc:
        raise FarmError(f"the Cuebot at {where} did not take the job: {exc}") from None
    finally:
        opencue.Cuebot.closeChannel()
    return [j.name() for j in jobs]


def _token(name: str) -> str:
    """Job and layer names are XML name tokens to Cuebot: letters, digits, `.`, `_` and `-`."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "cvgen"


@contextmanager
def _session_in_temporary_folder() -> Iterator[None]:
    """pyoutline writes a session folder (for its `pycuerun` wrapper) when it serialises; cvgen's
    tasks run their command directly, so that folder goes to a temporary one, not ~/.opencue."""
    import outline

    before = outline.config.get("outline", "session_dir", raw=True)
    with tempfile.TemporaryDirectory(prefix="cvgen-outline-") as folder:
        outline.config.set("outline", "session_dir", folder)
        try:
            yield
        finally:
            outline.config.set("outline", "session_dir", before)
