"""Where a shot's files go and how its jobs are named.

Everything lands in `//cvgen/<shot>/` beside the .blend: each job in its own `<job-id>/` folder
(results, and the inputs that had to be converted first), render passes in `passes/`. Nothing is
overwritten by a later job, so an artist can always go back to an earlier result.
"""

from __future__ import annotations

import re
import secrets
import time
from pathlib import Path

from . import SetupError

#: The folder beside the .blend that holds everything the add-on writes.
ROOT = "cvgen"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def shot_name(text: str) -> str:
    """`text` made safe for file names and job ids: letters, digits, `_`, `.` and `-`."""
    name = _UNSAFE.sub("_", text).strip("._-")[:40]
    return name or "shot"


def new_job_id(shot: str, now: float | None = None) -> str:
    """A job id that sorts by time and cannot collide with another host's: `<shot>-<time>-<random>`."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(time.time() if now is None else now))
    return f"{shot_name(shot)}-{stamp}-{secrets.token_hex(3)}"


def shot_dir(blend_path: str, shot: str) -> Path:
    """`//cvgen/<shot>/` as an absolute path; the .blend must be saved, because that is where results go."""
    if not blend_path:
        raise SetupError("save the .blend file first: cvgen writes its results to //cvgen/ beside it")
    return Path(blend_path).resolve().parent / ROOT / shot_name(shot)


def job_dir(blend_path: str, shot: str, job_id: str) -> Path:
    return shot_dir(blend_path, shot) / job_id


def converted_input(job_folder: Path, role: str) -> str:
    """Frame-sequence template for an input that had to be rendered to EXR first."""
    return str(job_folder / "inputs" / role / f"{role}.####.exr")


def pass_template(blend_path: str, shot: str, view_layer: str, role: str) -> str:
    """Frame-sequence template of one render pass, per view layer (re-rendering overwrites them)."""
    return str(shot_dir(blend_path, shot) / "passes" / shot_name(view_layer) / role / f"{role}.####.exr")
