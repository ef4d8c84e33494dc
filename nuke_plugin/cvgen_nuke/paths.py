"""Where a render's files go: a new version folder per render, inputs and results inside it.

Every Render gets its own folder (`v001`, `v002`, ...) under the node's output folder, because
the server skips frames that already exist in a job's output folder (that is how it resumes):
rendering again into the same folder would silently keep the previous result. A version folder
also keeps what was sent with what came back, so an old result can always be told apart.

Paths use forward slashes, which Nuke and Python accept on every platform, and `####` frame
placeholders, which Nuke's Read and Write nodes and `cvgen.protocol.frame_path` all understand.
"""

from __future__ import annotations

import os
import re
from typing import Iterable

from .errors import SetupError

_VERSION = re.compile(r"^v(\d{3,})$")


def output_folder(knob_value: str, script_path: str, node_name: str) -> str:
    """The node's output folder as an absolute path (the server resolves paths on its side).

    Empty means `cvgen/<node name>` beside the saved script; a relative folder is taken from
    the script's folder too, the way Nuke's own relative paths are.
    """
    folder = os.path.expanduser(knob_value.strip())
    base = os.path.dirname(script_path) if script_path else ""
    if not folder:
        if not base:
            raise SetupError("set the output folder, or save the script first: by default results go beside it")
        folder = os.path.join(base, "cvgen", node_name)
    elif not os.path.isabs(folder):
        if not base:
            raise SetupError(f"the output folder {folder!r} is relative and the script is not saved: "
                             "give a full path or save the script")
        folder = os.path.join(base, folder)
    return _slashes(os.path.normpath(folder))


def next_version(folder: str) -> str:
    """A version folder one above the highest `vNNN` already in `folder` (not created yet)."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        names = []
    numbers = [int(m.group(1)) for m in map(_VERSION.match, names) if m]
    return _join(folder, f"v{max(numbers, default=0) + 1:03d}")


def input_sequence(version_dir: str, role: str) -> str:
    """Where the node's Write node renders the `role` input for the server to read."""
    return _join(version_dir, "inputs", f"{role}.####.exr")


def input_image(version_dir: str, role: str) -> str:
    """Where the node's Write node renders the one frame of an `image` role: one file, no frame number."""
    return _join(version_dir, "inputs", f"{role}.exr")


def result_sequence(version_dir: str, name: str) -> str:
    """Where the result frames land: the server names them `NAME.####.exr` in the job's output."""
    return _join(version_dir, f"{name}.####.exr")


def make_folders(sequences: Iterable[str]) -> None:
    """Create the folders of these sequences, so Write nodes of any Nuke version can write there."""
    for sequence in sequences:
        os.makedirs(os.path.dirname(sequence), exist_ok=True)


def _join(*parts: str) -> str:
    return "/".join(p.rstrip("/") for p in parts)


def _slashes(path: str) -> str:
    return path.replace("\\", "/")
