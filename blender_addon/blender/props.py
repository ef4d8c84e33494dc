"""Properties: the scene's cvgen settings (saved with the .blend) and the session's server state.

Op parameters are generic name/kind/value items built from the server's schemas, so the panel
shows new ops' fields without an add-on update. The server state (connection, ops, progress)
lives on the window manager: it belongs to this session, not to the file.
"""

from __future__ import annotations

import json
from typing import Any

import bpy
from bpy.props import (
    BoolProperty,
    CollectionProperty,
    EnumProperty,
    FloatProperty,
    IntProperty,
    PointerProperty,
    StringProperty,
)
from bpy.types import Context, PropertyGroup

from ..core.farm import DEFAULT_CHUNK
from ..core.params import ParamValue, from_schema, ops_from_hello
from ..core.protocol import protocol

#: Enum items must outlive the call that returns them (Blender keeps pointers into the strings).
_CHOICE_ITEMS: dict[str, list[tuple[str, str, str]]] = {}


def _choice_items(item: CvgenParam, _context: Context | None) -> list[tuple[str, str, str]]:
    return _CHOICE_ITEMS.setdefault(item.choices, [(c, c, "") for c in item.choices.split("\n") if c])


class CvgenParam(PropertyGroup):
    """One op parameter; only the value field of its kind is used."""

    kind: StringProperty()  # type: ignore[valid-type]
    help: StringProperty()  # type: ignore[valid-type]
    choices: StringProperty(description="the allowed values of a choice, one a line")  # type: ignore[valid-type]
    value_float: FloatProperty()  # type: ignore[valid-type]
    value_int: IntProperty()  # type: ignore[valid-type]
    value_bool: BoolProperty()  # type: ignore[valid-type]
    value_str: StringProperty()  # type: ignore[valid-type]
    value_choice: EnumProperty(items=_choice_items)  # type: ignore[valid-type]

    @property
    def field(self) -> str:
        return f"value_{self.kind}"

    @property
    def value(self) -> Any:
        return getattr(self, self.field)

    def set(self, param: ParamValue) -> None:
        self.name, self.kind, self.help = param.name, param.kind, param.help
        self.choices = "\n".join(param.choices)
        setattr(self, self.field, param.value)


class CvgenOp(PropertyGroup):
    """An op as the server offers it (its `hello` schema, kept as text)."""

    summary: StringProperty()  # type: ignore[valid-type]
    schema_json: StringProperty()  # type: ignore[valid-type]


def op_schemas(wm: bpy.types.WindowManager) -> dict[str, Any]:
    """The session's ops (`cvgen.protocol.schema.OpSchema`) by name."""
    return ops_from_hello({"ops": [json.loads(op.schema_json) for op in wm.cvgen.ops]})


def sync_params(settings: CvgenSceneSettings, schema: Any) -> None:
    """Rebuild the parameter items for `schema` from the values the artist last set for that op, the
    server's defaults elsewhere. Values are kept per op (the items shown belong to `params_op`; items
    not yet tied to an op are the current op's), so one op's values never leak into another's."""
    stored = json.loads(settings.op_params or "{}")
    stored[settings.params_op or schema.name] = {p.name: p.value for p in settings.params}
    settings.op_params = json.dumps(stored)
    settings.params.clear()
    for param in from_schema(schema, stored.get(schema.name, {})):
        settings.params.add().set(param)
    settings.params_op = schema.name


def _op_changed(settings: CvgenSceneSettings, context: Context) -> None:
    schema = op_schemas(context.window_manager).get(settings.op)
    if schema is not None:
        sync_params(settings, schema)


STRIP_ROLES = (
    ("plate", "Plate", "the background footage"),
    ("fg", "Foreground", "the element composited over the plate (RGBA, premultiplied)"),
    ("matte", "Matte", "where the foreground is; empty: the foreground's alpha"),
    ("depth", "Depth", "depth of the plate, for ops that use it"),
)


class CvgenSceneSettings(PropertyGroup):
    """What to render: op, parameters, frames, input strips, shot. Saved with the .blend."""

    op: StringProperty(name="Op", description="what the server does to the shot", update=_op_changed)  # type: ignore[valid-type]
    params: CollectionProperty(type=CvgenParam)  # type: ignore[valid-type]
    params_op: StringProperty(description="the op whose parameters `params` holds")  # type: ignore[valid-type]
    op_params: StringProperty(description="the parameter values last set for each op, as JSON")  # type: ignore[valid-type]
    frame_source: EnumProperty(  # type: ignore[valid-type]
        name="Frames",
        items=(("SCENE", "Scene", "the scene's frame range"),
               ("STRIP", "Active Strip", "the frames of the active strip")),
    )
    plate: StringProperty(name="Plate", description=STRIP_ROLES[0][2])  # type: ignore[valid-type]
    fg: StringProperty(name="Foreground", description=STRIP_ROLES[1][2])  # type: ignore[valid-type]
    matte: StringProperty(name="Matte", description=STRIP_ROLES[2][2])  # type: ignore[valid-type]
    depth: StringProperty(name="Depth", description=STRIP_ROLES[3][2])  # type: ignore[valid-type]
    shot: StringProperty(name="Shot", description="names the result files and folders; empty: the scene's name")  # type: ignore[valid-type]
    seed: IntProperty(name="Seed", min=0)  # type: ignore[valid-type]
    colorspace: StringProperty(  # type: ignore[valid-type]
        name="Colour Space", default=protocol.DEFAULT_COLORSPACE,
        description="scene-linear space of the inputs, as the server names it",
    )
    passes_scene: PointerProperty(  # type: ignore[valid-type]
        type=bpy.types.Scene, name="3D Scene",
        description="scene whose active view layer is rendered for passes; empty: this scene",
    )
    result_strip: StringProperty(description="the strip of the last result, replaced by the next")  # type: ignore[valid-type]
    last_job: StringProperty(description="id of the last job sent")  # type: ignore[valid-type]
    farm_engine: EnumProperty(  # type: ignore[valid-type]
        name="Farm",
        items=(("openjd", "OpenJD", "an Open Job Description bundle, for AWS Deadline Cloud"),
               ("opencue", "OpenCue", "an OpenCue job, launched on the Cuebot named by $CUEBOT_HOSTS")),
    )
    farm_chunk: IntProperty(name="Chunk", default=DEFAULT_CHUNK, min=1, description="frames per farm task")  # type: ignore[valid-type]
    farm_show: StringProperty(name="Show", description="OpenCue show; empty: $SHOW or OpenCue's default")  # type: ignore[valid-type]
    farm_shot: StringProperty(name="Shot", description="OpenCue shot; empty: $SHOT or OpenCue's default")  # type: ignore[valid-type]
    farm_spec_only: BoolProperty(  # type: ignore[valid-type]
        name="Spec Only", description="write the OpenCue job spec (XML) beside the job file instead of launching it",
    )
    last_farm: StringProperty(description="the last farm submission's bundle, spec or job names")  # type: ignore[valid-type]


class CvgenSession(PropertyGroup):
    """This Blender session's view of the server and of the running job (not saved)."""

    connection: EnumProperty(  # type: ignore[valid-type]
        items=(("UNKNOWN", "Not Connected", ""), ("CONNECTING", "Connecting", ""),
               ("CONNECTED", "Connected", ""), ("FAILED", "No Server", "")),
    )
    message: StringProperty()  # type: ignore[valid-type]
    ops: CollectionProperty(type=CvgenOp)  # type: ignore[valid-type]
    running: BoolProperty()  # type: ignore[valid-type]
    cancel_requested: BoolProperty()  # type: ignore[valid-type]
    progress: FloatProperty(min=0.0, max=1.0, subtype="FACTOR")  # type: ignore[valid-type]
    status: StringProperty()  # type: ignore[valid-type]
    farm_running: BoolProperty()  # type: ignore[valid-type]
    farm_failed: BoolProperty()  # type: ignore[valid-type]
    farm_status: StringProperty(description="the farm submission's progress, or how it ended")  # type: ignore[valid-type]


def register_pointers() -> None:
    bpy.types.Scene.cvgen = PointerProperty(type=CvgenSceneSettings)
    bpy.types.WindowManager.cvgen = PointerProperty(type=CvgenSession)


def unregister_pointers() -> None:
    del bpy.types.WindowManager.cvgen
    del bpy.types.Scene.cvgen


classes = (CvgenParam, CvgenOp, CvgenSceneSettings, CvgenSession)
