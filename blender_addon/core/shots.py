"""Where a shot's files go and how its jobs are named.

Everything lands in `//cvgen/<shot>/` beside the .blend: each job's results in its own `<job-id>/`
folder, inputs that had to be converted first in `inputs/<key>/` (shared by the jobs that read the
same strip over the same frames), render passes in `passes/`. No result is overwritten by a later
job, so an artist can always go back to an earlier result.
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


def make_dir(path: Path) -> Path:
    """Create `path` and its parents; a folder that cannot be made (a read-only share, a full disk,
    a file in the way) is a `SetupError` naming it, so the artist sees one sentence, not a traceback."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SetupError(f"cannot create the folder {path}: {os_problem(path, exc)}") from None
    return path


def os_problem(path: Path, exc: OSError) -> str:
    """What stopped `path` from being written, in words: a file where a folder should be, or the OS's reason."""
    for folder in (path, *path.parents):
        try:
            if folder.is_file():
                return f"{folder} is a file, not a folder"
        except OSError:
            break
    return (exc.strerror or type(exc).__name__).lower()


def job_dir(blend_path: str, shot: str, job_id: str) -> Path:
    return shot_dir(blend_path, shot) / job_id


def converted_input(blend_path: str, shot: str, key: str) -> str:
    """Frame-sequence template for an input that had to be rendered to EXR first, in a folder named
    by `key` (what the pixels depend on), so a later job with the same strip and frames reuses it."""
    return str(shot_dir(blend_path, shot) / "inputs" / key / "input.####.exr")


def pass_template(blend_path: str, shot: str, view_layer: str, role: str) -> str:
    """Frame-sequence template of one render pass, per view layer (re-rendering overwrites them)."""
    return str(shot_dir(blend_path, shot) / "passes" / shot_name(view_layer) / role / f"{role}.####.exr")
