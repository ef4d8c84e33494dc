"""How input frames reach the server: as paths it reads itself, or as pixels in the message.

Paths are faster and the normal case (one machine, or a studio filer both sides mount at the
same place). A server elsewhere cannot read the host's disk, so the frames travel inline and
the results come back the same way. `auto` decides from the server's `hello`: the server is on
this machine (a loopback address), or the jobs folder it reports is visible here under the
same absolute path.
"""

from __future__ import annotations

import os
from typing import Callable, Mapping

from cvgen.protocol import Image, frame_path
from cvgen.protocol.addresses import is_loopback

from . import exr
from .errors import SetupError


def choose(setting: str, address: str, jobs_dir: str, is_dir: Callable[[str], bool] = os.path.isdir) -> str:
    """'paths' or 'inline' for the transfer knob's `setting` (auto, paths or inline)."""
    if setting in ("paths", "inline"):
        return setting
    if setting != "auto":
        raise SetupError(f"send frames as {setting!r} is not one of auto, paths, inline")
    shared = is_loopback(address) or (os.path.isabs(jobs_dir) and is_dir(jobs_dir))
    return "paths" if shared else "inline"


def load_inline(sequences: Mapping[str, str], frames: range,
                image_frames: Mapping[str, int] = {}) -> dict[str, dict[int, Image]]:
    """The frames of each role's sequence, read for sending (role -> frame -> Image); an `image`
    role (role -> the frame it was taken at, in `image_frames`) is its one file, as one frame."""
    return {role: {image_frames[role]: exr.read(path)} if role in image_frames else
            {f: exr.read(frame_path(path, f)) for f in frames} for role, path in sequences.items()}
