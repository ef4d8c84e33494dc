"""Render passes of a 3D scene as cvgen inputs: the picture, its depth, and a matte of objects.

Blender's multilayer EXRs name channels `ViewLayer.Combined.R`, `ViewLayer.Depth.Z`; the server
looks channels up by their plain names (`R`, `G`, `B`, `A`, a matte's only channel), so each pass
is written as its own single-layer EXR sequence: the plate (Combined) as the render's RGBA output,
depth and matte by a compositor File Output node as one channel each (Blender names it `V`). The matte is an object-index
(ID Mask) matte of the selected objects, anti-aliased. The work happens in a linked copy of the
scene, so the artist's compositor, passes and output settings are never touched; only the
objects' pass indices are set for the render and put back afterwards.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import bpy
from bpy.types import Scene

from ..core import SetupError
from ..core.protocol import protocol
from ..core.shots import make_dir
from .strips import exr_output, scene_copy

#: Pass roles and the Render Layers output each comes from ("matte" goes through an ID Mask).
PASSES = (("plate", "Image"), ("depth", "Depth"), ("matte", "IndexOB"))
#: The passes the File Output node writes; the plate is the render's own output.
_NODE_PASSES = PASSES[1:]


@contextmanager
def matte_index(scene: Scene, objects: list[Any]) -> Iterator[int]:
    """A pass index no other object of `scene` has, given to `objects` for the render."""
    index = max((o.pass_index for o in scene.objects), default=0) + 1
    before = {o.name: o.pass_index for o in objects}
    try:
        for o in objects:
            o.pass_index = index
        yield index
    finally:
        for o in objects:
            o.pass_index = before[o.name]


def engine_name(scene: Scene) -> str:
    """The engine as Blender's Render Properties name it ("EEVEE"), not its identifier (BLENDER_EEVEE_NEXT)."""
    items = scene.render.bl_rna.properties["engine"].enum_items
    engine = scene.render.engine
    return items[engine].name if engine in items.keys() else engine


def _compositor(scene: Scene, view_layer: str, index: int, templates: dict[str, str]) -> None:
    """Replace the copy's compositor: Render Layers -> Composite (the plate) and -> File Output
    (depth, and the ID Mask of `index` as the matte)."""
    scene.use_nodes = True
    tree = scene.node_tree
    tree.nodes.clear()
    layers = tree.nodes.new("CompositorNodeRLayers")
    layers.scene, layers.layer = scene, view_layer
    if "IndexOB" not in layers.outputs or not layers.outputs["IndexOB"].enabled:
        raise SetupError(f"the {engine_name(scene)} engine has no object index pass; render passes with Cycles")
    composite = tree.nodes.new("CompositorNodeComposite")
    tree.links.new(layers.outputs["Image"], composite.inputs["Image"])
    mask = tree.nodes.new("CompositorNodeIDMask")
    mask.index, mask.use_antialiasing = index, True
    tree.links.new(layers.outputs["IndexOB"], mask.inputs["ID value"])
    out = tree.nodes.new("CompositorNodeOutputFile")
    out.base_path = os.path.commonpath([templates[role] for role, _ in _NODE_PASSES])
    out.format.file_format = "OPEN_EXR"
    out.format.exr_codec = "ZIP"
    out.format.color_mode = "BW"
    out.format.color_depth = "32"
    out.file_slots.clear()
    for i, (role, source) in enumerate(_NODE_PASSES):
        out.file_slots.new(role)
        out.file_slots[i].path = os.path.relpath(os.path.splitext(templates[role])[0], out.base_path)
        tree.links.new(mask.outputs[0] if role == "matte" else layers.outputs[source], out.inputs[i])


def render(source: Scene, view_layer: str, objects: list[Any], frames: range, templates: dict[str, str]) -> None:
    """Render `frames` of `source`'s `view_layer` into the EXR sequences `templates` (role -> path)."""
    if source.camera is None:
        raise SetupError(f"scene {source.name!r} has no camera: add one (or set the scene's camera) before rendering passes")
    if not objects:
        raise SetupError("select the objects the matte should show before rendering passes")
    for template in templates.values():
        make_dir(Path(template).parent)
    with scene_copy(source) as copy, matte_index(source, objects) as index:
        for layer in copy.view_layers:
            layer.use = layer.name == view_layer
        layer = copy.view_layers[view_layer]
        layer.use_pass_z = True
        layer.use_pass_object_index = True
        copy.render.use_sequencer = False
        copy.render.use_compositing = True
        copy.frame_start, copy.frame_end = frames.start, frames.stop - 1
        _compositor(copy, view_layer, index, templates)
        exr_output(copy, templates["plate"])
        copy.render.image_settings.color_depth = "16"
        bpy.ops.render.render(animation=True, scene=copy.name, layer=view_layer)
    for role, template in templates.items():
        missing = [f for f in frames if not os.path.exists(protocol.frame_path(template, f))]
        if missing:
            raise SetupError(f"the {role} pass of frame {missing[0]} was not written")
