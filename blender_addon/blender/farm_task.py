"""Submit to Farm on a worker thread: `cvgen farm` may wait on a slow Cuebot for up to two minutes,
and Blender's UI must stay usable meanwhile.

The operator plans the job and renders any strip conversions on the UI thread (they need bpy),
then hands the submission to `start`; `poll`, a `bpy.app.timers` callback, keeps the panel's farm
line up to date (elapsed seconds while it runs, the bundle or OpenCue job names or the error after).
A pipeline script polls it itself (timers only run in Blender's event loop).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import bpy

from ..core.farm import FarmResult
from ..core.jobs import Finished, Worker

#: Seconds between updates of the panel's farm line.
POLL_S = 0.25


@dataclass
class Submitting:
    """The submission in flight: its worker, the scene it belongs to, what the panel says."""

    worker: Worker
    scene: str
    label: str
    started: float


_current: Submitting | None = None


def farm_label(result: FarmResult) -> str:
    """The panel's line for a finished submission: the OpenCue jobs launched, or the file written."""
    return ", ".join(result.launched) if result.launched else str(result.output)


def start(context: bpy.types.Context, task: Callable[[Any], FarmResult], label: str) -> None:
    """Run `task` (the `cvgen farm` call) on a worker thread and follow it from a timer."""
    global _current
    session = context.window_manager.cvgen
    session.farm_running, session.farm_status, session.farm_failed = True, f"{label}: starting", False
    _current = Submitting(Worker(task, "cvgen farm").start(), context.scene.name, label, time.monotonic())
    if not bpy.app.timers.is_registered(poll):
        bpy.app.timers.register(poll, first_interval=POLL_S)


def poll() -> float | None:
    """Update the panel from the worker; None (the timer ends) once the submission has finished."""
    global _current
    if _current is None:
        return None
    session = bpy.context.window_manager.cvgen
    finished = next((e for e in _current.worker.poll() if isinstance(e, Finished)), None)
    if finished is None:
        session.farm_status = f"{_current.label}: {time.monotonic() - _current.started:.0f} s"
        _redraw()
        return POLL_S
    scene = bpy.data.scenes.get(_current.scene)
    session.farm_running, session.farm_failed = False, bool(finished.error)
    if finished.error:
        session.farm_status = finished.error
    else:
        session.farm_status = finished.done.message
        if scene is not None:
            scene.cvgen.last_farm = farm_label(finished.done)
    _current = None
    _redraw()
    return None


def stop() -> None:
    """Forget the submission and its timer (the add-on is being disabled); `cvgen farm` itself runs on."""
    global _current
    _current = None
    if bpy.app.timers.is_registered(poll):
        bpy.app.timers.unregister(poll)


def _redraw() -> None:
    for window in bpy.context.window_manager.windows:
        for area in window.screen.areas:
            if area.type == "SEQUENCE_EDITOR":
                area.tag_redraw()
