"""cvgen for Nuke: a node that renders its inputs through a cvgen server and reads the results.

`init.py` and `menu.py` in the plugin folder call `setup_init` and `setup_menu`. Both import
the Nuke adapter only once the dependencies are known to be importable, and catch whatever
goes wrong, so a broken or half-installed plugin costs one line in Nuke's terminal and never
Nuke's start.

Modules: `nuke_adapter` is the only one that imports `nuke`; `schema`, `knobs`, `inputs`,
`frames`, `paths`, `jobbuild`, `transfer`, `exr`, `progress`, `session` and `farm` are plain Python,
tested without Nuke.
"""

from __future__ import annotations

import logging
import os
import sys

from . import deps

log = logging.getLogger("cvgen.nuke")


def setup_init() -> None:
    """For init.py (GUI and terminal sessions): find the dependencies, register the node's callbacks."""
    try:
        absent = deps.add_site_folders(os.environ, sys.path)
        missing = deps.missing()
        if missing:
            log.warning(deps.install_hint(missing, absent))
            return
        from . import nuke_adapter

        nuke_adapter.register_callbacks()
    except Exception:  # a broken plugin must not stop Nuke from starting
        log.exception("cvgen: the plugin could not be set up; Nuke starts without it")


def setup_menu() -> None:
    """For menu.py (GUI only): the cvgen entry in the Nodes toolbar."""
    try:
        if deps.missing():
            return  # setup_init has said why
        from . import nuke_adapter

        nuke_adapter.add_menu()
    except Exception:  # a broken plugin must not stop Nuke from starting
        log.exception("cvgen: the cvgen menu could not be added; Nuke starts without it")
