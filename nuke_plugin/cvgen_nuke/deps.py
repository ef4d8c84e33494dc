"""Where `cvgen.protocol` and its dependencies come from inside Nuke.

Nuke has its own Python, so pyzmq, msgpack and the `cvgen.protocol` package are installed
into a folder of their own (see nuke_plugin/README.md) and named by the `CVGEN_NUKE_SITE`
environment variable (several folders separated like PATH). Startup puts those folders at the
front of `sys.path` and, if something is still missing, says what and how to install it,
instead of a traceback in the middle of Nuke's start.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Mapping, MutableSequence

SITE_VARIABLE = "CVGEN_NUKE_SITE"

#: Modules the plugin needs besides the standard library, and the package that provides each.
NEEDED = (("numpy", "numpy"), ("zmq", "pyzmq"), ("msgpack", "msgpack"), ("cvgen.protocol", "cvgen.protocol"))


def add_site_folders(environ: Mapping[str, str], path: MutableSequence[str]) -> list[str]:
    """Put the folders named by $CVGEN_NUKE_SITE at the front of `path`; returns those that do not exist."""
    folders = [f for f in environ.get(SITE_VARIABLE, "").split(os.pathsep) if f.strip()]
    for folder in reversed(folders):
        if os.path.isdir(folder) and folder not in path:
            path.insert(0, folder)
    return [f for f in folders if not os.path.isdir(f)]


def missing() -> list[str]:
    """The packages from `NEEDED` that cannot be imported."""
    return [package for module, package in NEEDED if not _importable(module)]


def install_hint(packages: list[str], absent_folders: list[str]) -> str:
    """What to tell a pipeline TD when the plugin cannot load."""
    lines = [f"cvgen: not loaded: {', '.join(packages)} cannot be imported by Nuke's Python."]
    if absent_folders:
        lines.append(f"${SITE_VARIABLE} names folders that do not exist: {', '.join(absent_folders)}.")
    lines.append(f"Install them into a folder named by ${SITE_VARIABLE} as nuke_plugin/README.md describes "
                 "(pip install --target, and nuke_plugin/copy_protocol.py for cvgen.protocol).")
    return " ".join(lines)


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # the parent package of a dotted name is missing
        return False
