"""cvgen for Blender: send sequencer strips and render passes to a cvgen server, get EXR strips back.

The logic lives in `core` (no bpy); `blender` holds the properties, preferences, operators and
the Sequencer panel. Registering does nothing but register.
"""

from __future__ import annotations

import bpy

from .blender import operators, panel, prefs, props

classes = (*props.classes, *prefs.classes, *operators.classes, *panel.classes)


def register() -> None:
    for cls in classes:
        bpy.utils.register_class(cls)
    props.register_pointers()


def unregister() -> None:
    props.unregister_pointers()
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)
