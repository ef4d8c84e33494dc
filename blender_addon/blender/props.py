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


def _ranged_get(field: str) -> Any:
    return lambda item: getattr(item, field)


def _ranged_set(field: str) -> Any:
    def store(item: CvgenParam, value: Any) -> None:
        setattr(item, field, value)
    return store


def ranged_field(kind: str, low: float | None, high: float | None) -> str:
    """The field that edits a number of `kind` within the schema's `low`-`high` (either may be None).

    Blender takes a property's limits only where it is defined, so each range gets a property of its
    own, added to `CvgenParam` when first needed: a view of the kind's value field (its `get` and `set`
    read and write `value_<kind>`, so nothing more is saved), with the range as hard limits and, when
    both ends are given, as the slider's. A script setting `value_<kind>` directly is not clamped: the
    job's check refuses what is out of range. The name encodes the range, so it is the same in every session.
    """
    field = f"value_{kind}"
    if kind not in ("int", "float") or (low is None and high is None):
        return field
    name = f"{field}_{_tag(low)}_{_tag(high)}"
    if name not in CvgenParam.bl_rna.properties:
        make, cast = (IntProperty, int) if kind == "int" else (FloatProperty, float)
        limits = {k: cast(v) for k, v in (("min", low), ("soft_min", low), ("max", high), ("soft_max", high))
                  if v is not None}
        setattr(CvgenParam, name, make(get=_ranged_get(field), set=_ranged_set(field), **limits))
    return name


def _tag(limit: float | None) -> str:
    return "x" if limit is None else f"{limit:g}".replace("-", "m").replace(".", "p").replace("+", "")


class CvgenParam(PropertyGroup):
    """One op parameter; only the value field of its kind (or its range's view of it) is used."""

    kind: StringProperty()  # type: ignore[valid-type]
    help: StringProperty()  # type: ignore[valid-type]
    choices: StringProperty(description="the allowed values of a choice, one a line")  # type: ignore[valid-type]
    value_float: FloatProperty()  # type: ignore[valid-type]
    value_int: IntProperty()  # type: ignore[valid-type]
    value_bool: BoolProperty()  # type: ignore[valid-type]
    value_str: StringProperty()  # type: ignore[valid-type]
    value_choice: EnumProperty(items=_choice_items)  # type: ignore[valid-type]
    ranged: StringProperty(description="the field with the schema's range (`ranged_field`); empty: none")  # type: ignore[valid-type]
    slider: BoolProperty(description="the range has both ends, so the field is a slider")  # type: ignore[valid-type]

    @property
    def field(self) -> str:
        """The field the panel shows: the range's, once this session has defined it (Connect does)."""
        return self.ranged if self.ranged in self.bl_rna.properties else f"value_{self.kind}"

    @property
    def value(self) -> Any:
        return getattr(self, f"value_{self.kind}")

    def set(self, param: ParamValue) -> None:
        self.name, self.kind, self.help = param.name, param.kind, param.help
        self.choices = "\n".join(param.choices)
        self.ranged = ranged_field(param.kind, param.min, param.max)
        self.slider = self.ranged != f"value_{param.kind}" and None not in (param.min, param.max)
        setattr(self, f"value_{self.kind}", param.value)


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


def sync_inputs(settings: CvgenSceneSettings, schema: Any) -> None:
    """Make an input choice for each role of `schema` that has none yet (an image role's frame: the
    scene's first). Choices are never removed, so switching to another op and back keeps them."""
    for role in schema.role_schemas:
        settings.input(role.name)


def _op_changed(settings: CvgenSceneSettings, context: Context) -> None:
    schema = op_schemas(context.window_manager).get(settings.op)
    if schema is not None:
        sync_params(settings, schema)
        sync_inputs(settings, schema)


class CvgenInput(PropertyGroup):
    """The artist's choice for one input role (the item's name), shared by every op with a role of that
    name: a role's name means the same footage for each op (the plate is the plate), so the artist picks
    it once and switching op keeps it. Labels and help come from the selected op's schema."""

    strip: StringProperty(name="Strip", description="the strip this input reads")  # type: ignore[valid-type]
    source: EnumProperty(  # type: ignore[valid-type]
        name="Source",
        items=(("STRIP", "Strip Frame", "one frame of a strip"), ("FILE", "Image File", "an image file")),
        description="where an image input (one picture for the whole shot) comes from",
    )
    frame: IntProperty(name="Frame", description="the frame of the strip an image input takes")  # type: ignore[valid-type]
    filepath: StringProperty(name="File", subtype="FILE_PATH", description="the image file an image input reads")  # type: ignore[valid-type]

    def chosen(self, kind: str) -> bool:
        """Whether the artist gave this input (for an `image` role, from its source)."""
        return bool(self.filepath if kind == "image" and self.source == "FILE" else self.strip)


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
    inputs: CollectionProperty(type=CvgenInput, description="the input choices, by role name")  # type: ignore[valid-type]
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

    def input(self, role: str) -> CvgenInput:
        """The choice for `role`, made when the role has none yet (not while drawing: Blender forbids it)."""
        if role not in self.inputs:
            item = self.inputs.add()
            item.name, item.frame = role, self.id_data.frame_start
        return self.inputs[role]


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


classes = (CvgenParam, CvgenOp, CvgenInput, CvgenSceneSettings, CvgenSession)
