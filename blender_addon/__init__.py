"""cvgen for Blender: send sequencer strips and render passes to a cvgen server, get EXR strips back.

The logic lives in `core` (no bpy); `blender` holds the properties, preferences, operators and
the Sequencer panel. Registering does nothing but register; unregistering (the add-on disabled or
uninstalled) also stops the local server and forgets a farm submission in flight.
"""

from __future__ import annotations

import bpy

from .blender import farm_task, operators, panel, prefs, props
from .core.local_server import LOCAL

classes = (*props.classes, *prefs.classes, *operators.classes, *panel.classes)


def register() -> None:
    for cls in classes:
        bpy.utils.register_class(cls)
    props.register_pointers()


def unregister() -> None:
    """Disabling or uninstalling the add-on also stops its local server: nothing would be left to stop it."""
    LOCAL.stop()
    farm_task.stop()
    props.unregister_pointers()
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)
