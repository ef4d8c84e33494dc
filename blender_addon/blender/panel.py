"""The Sequencer sidebar's cvgen tab: connection, op and parameters, frames, inputs, render, passes, farm."""

from __future__ import annotations

from typing import Any

from bpy.types import Context, Panel, UILayout

from ..core.text import sidebar_lines
from ..core.params import param_label
from .props import CvgenParam, op_schemas

_LIGHTS = {"UNKNOWN": "RADIOBUT_OFF", "CONNECTING": "SORTTIME", "CONNECTED": "CHECKMARK", "FAILED": "ERROR"}


class SEQUENCER_PT_cvgen(Panel):
    bl_space_type = "SEQUENCE_EDITOR"
    bl_region_type = "UI"
    bl_category = "cvgen"
    bl_label = "cvgen"

    def draw(self, context: Context) -> None:
        layout = self.layout
        session, settings = context.window_manager.cvgen, context.scene.cvgen
        row = layout.row()
        row.label(text=session.message or session.bl_rna.properties["connection"].enum_items[session.connection].name,
                  icon=_LIGHTS[session.connection])
        row.operator("cvgen.connect", text="", icon="FILE_REFRESH")

        layout.prop_search(settings, "op", session, "ops", icon="NODE")
        schema = op_schemas(context.window_manager).get(settings.op)
        if schema is not None and schema.summary:
            col = layout.column(align=True)
            for line in sidebar_lines(schema.summary, context.region.width, context.preferences.view.ui_scale):
                col.label(text=line)
        for param in settings.params:
            _draw_param(layout, param)

        col = layout.column(align=True)
        col.prop(settings, "frame_source", expand=True)
        for role in schema.role_schemas if schema is not None else ():
            _draw_role(layout, context, role)
        row = layout.row(align=True)
        row.prop(settings, "shot")
        row.prop(settings, "seed")

        if session.running:
            row = layout.row(align=True)
            row.progress(factor=session.progress, type="BAR", text=session.status or "Waiting")
            row.operator("cvgen.cancel", text="", icon="CANCEL")
        else:
            row = layout.row(align=True)
            row.operator("cvgen.render", icon="RENDER_ANIMATION")
            row.operator("cvgen.attach", text="", icon="RECOVER_LAST")

        box = layout.box()
        box.prop(settings, "passes_scene")
        box.operator("cvgen.render_passes", icon="RENDERLAYERS")

        box = layout.box()
        box.label(text="Farm", icon="NETWORK_DRIVE")
        box.row().prop(settings, "farm_engine", expand=True)
        box.prop(settings, "farm_chunk")
        if settings.farm_engine == "opencue":
            row = box.row(align=True)
            row.prop(settings, "farm_show")
            row.prop(settings, "farm_shot")
            box.prop(settings, "farm_spec_only")
        box.operator("cvgen.submit_farm", icon="EXPORT")
        if session.farm_running or session.farm_failed:
            box.label(text=session.farm_status, icon="SORTTIME" if session.farm_running else "ERROR")
        if settings.last_farm and not session.farm_failed:
            box.label(text=settings.last_farm)


def _draw_param(layout: UILayout, param: CvgenParam) -> None:
    row = layout.row(align=True)
    row.prop(param, param.field, text=param_label(param.name), slider=param.slider)
    _help(row, param.help)


def role_text(role: Any) -> str:
    """A role's label as the panel shows it: optional inputs are marked, required ones are not."""
    return role.label if role.required else f"{role.label} (optional)"


def _draw_role(layout: UILayout, context: Context, role: Any) -> None:
    """One input: a strip for a sequence role; a strip and its frame, or an image file, for an image role."""
    choice = context.scene.cvgen.inputs.get(role.name)
    if choice is None or not role.known:  # Connect makes the choices; a newer kind needs a newer add-on
        layout.label(text=f"{role_text(role)}: " + ("press Connect" if role.known else "update the cvgen add-on"),
                     icon="ERROR")
        return
    editor = context.scene.sequence_editor
    column = layout.column(align=True)
    row = column.row(align=True)
    if role.kind == "image":
        row.label(text=role_text(role))
        row.prop(choice, "source", expand=True)
        _help(row, role.help)
        row = column.row(align=True)
        if choice.source == "FILE":
            row.prop(choice, "filepath", text="")
            return
    text = "" if role.kind == "image" else role_text(role)
    if editor is None:
        row.prop(choice, "strip", text=text)
    else:
        row.prop_search(choice, "strip", editor, "strips" if hasattr(editor, "strips") else "sequences", text=text,
                        icon="SEQUENCE")
    if role.kind == "image":
        row.prop(choice, "frame")
    else:
        _help(row, role.help)


def _help(row: UILayout, text: str) -> None:
    """A help button whose tooltip is `text` (Blender takes no tooltip for a single field drawn with `prop`)."""
    if text:
        row.operator("cvgen.param_help", text="", icon="QUESTION").text = text


classes = (SEQUENCER_PT_cvgen,)
