"""Strips in and out: read them for `core.strips`, render one to EXR, add results as strips.

A strip the server cannot read as it is gets rendered alone through a copy of its scene's
sequencer (the other strips muted), to float EXRs in the scene-linear space: the pixels the
artist sees, from any kind of strip Blender can show. The copy shares the scene's objects and
data, and is removed afterwards; the artist's scene is never changed.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import bpy
from bpy.types import Scene

from ..core import SetupError
from ..core.protocol import protocol
from ..core.shots import make_dir, shot_name
from ..core.strips import StripInfo, blender_colorspace

#: Marks strips this add-on made, so a re-render replaces only its own strips.
RESULT_MARK = "cvgen_job"
PASS_MARK = "cvgen_pass"
#: The space the sequencer works in while converting: Blender's scene-linear space.
LINEAR = blender_colorspace(protocol.DEFAULT_COLORSPACE)


def strips(scene: Scene) -> Any:
    """The top-level strips (`sequences` before Blender 4.4, `strips` since)."""
    editor = scene.sequence_editor_create()
    return editor.strips if hasattr(editor, "strips") else editor.sequences


def info(strip: Any, frames: range) -> StripInfo:
    """`strip` for planning; for image strips, the file shown on each frame of `frames` it covers."""
    span = (int(strip.frame_final_start), int(strip.frame_final_end))
    files = {}
    if strip.type == "IMAGE":
        folder = bpy.path.abspath(strip.directory, library=strip.id_data.library)
        for frame in frames:
            element = strip.strip_elem_from_frame(frame) if span[0] <= frame < span[1] else None
            if element is not None:
                files[frame] = os.path.normpath(os.path.join(folder, element.filename))
    return StripInfo(strip.name, strip.type, int(strip.channel), span, files, len(strip.modifiers) > 0)


def all_info(scene: Scene) -> list[StripInfo]:
    return [info(s, range(0)) for s in strips(scene)]


def find(scene: Scene, name: str) -> Any:
    strip = strips(scene).get(name)
    if strip is None:
        raise SetupError(f"there is no strip named {name!r} in scene {scene.name!r}")
    return strip


@contextmanager
def scene_copy(scene: Scene) -> Iterator[Scene]:
    """A linked copy of `scene` (objects and data shared, settings its own), removed afterwards."""
    copy = scene.copy()
    try:
        yield copy
    finally:
        bpy.data.scenes.remove(copy)


def exr_output(scene: Scene, template: str) -> None:
    """Render settings for float RGBA EXR frames, zip-compressed (Blender can read every cvgen EXR)."""
    settings = scene.render.image_settings
    settings.file_format = "OPEN_EXR"
    settings.color_mode = "RGBA"
    settings.color_depth = "32"
    settings.exr_codec = "ZIP"
    scene.render.filepath = template
    scene.render.use_file_extension = True  # `.exr` is there already; File Output nodes need this to add it


#: Strip kinds whose pixels come from files alone, so a fingerprint can tell when they change.
_FILE_KINDS = {"IMAGE", "MOVIE"}
#: Properties that do not change a strip's pixels when it is rendered alone.
_IGNORED = {"name", "channel", "mute", "lock", "select", "select_left_handle", "select_right_handle"}
_SIMPLE = {"BOOLEAN", "INT", "FLOAT", "STRING", "ENUM"}
#: Marks a conversion folder whose frames were all written.
COMPLETE = ".complete"


def _values(data: Any) -> dict[str, Any]:
    """`data`'s simple RNA properties as plain values."""
    out = {}
    for prop in data.bl_rna.properties:
        if prop.type in _SIMPLE and prop.identifier not in _IGNORED:
            value = getattr(data, prop.identifier)
            out[prop.identifier] = sorted(value) if isinstance(value, set) else (
                value if isinstance(value, (bool, int, float, str)) else list(value))
    return out


def _source_files(strip: Any) -> list[tuple[str, float, int]]:
    """Path, modification time and size of each file the strip reads (a missing one counts as changed)."""
    if strip.type == "MOVIE":
        paths = [bpy.path.abspath(strip.filepath, library=strip.id_data.library)]
    else:
        folder = bpy.path.abspath(strip.directory, library=strip.id_data.library)
        paths = [os.path.join(folder, e.filename) for e in strip.elements]
    stats = []
    for path in paths:
        stat = os.stat(path) if os.path.exists(path) else None
        stats.append((os.path.normpath(path), stat.st_mtime if stat else -1.0, stat.st_size if stat else -1))
    return stats


def conversion_key(scene: Scene, name: str, frames: range) -> str | None:
    """A name for strip `name`'s conversion over `frames` that changes whenever its pixels would:
    its source files, settings, modifiers and the scene's output size. None for strips whose pixels
    do not come from files alone (scene, effect or meta strips), which are converted every time."""
    strip = find(scene, name)
    if strip.type not in _FILE_KINDS:
        return None
    parts: list[Any] = [frames.start, frames.stop, _values(strip), _source_files(strip)]
    parts += [_values(getattr(strip, sub)) for sub in ("transform", "crop", "colorspace_settings") if hasattr(strip, sub)]
    parts += [[m.type, _values(m)] for m in strip.modifiers]
    render = scene.render
    parts.append([render.resolution_x, render.resolution_y, render.resolution_percentage, render.pixel_aspect_x,
                  render.pixel_aspect_y, render.fps, render.fps_base])
    text = json.dumps(parts, sort_keys=True, default=str)
    return f"{shot_name(name)}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def file_key(scene: Scene, path: str) -> str:
    """A name for the conversion of image file `path` that changes whenever its pixels would (the file,
    the scene's output size), like `conversion_key` for strips."""
    stat = os.stat(path) if os.path.exists(path) else None
    render = scene.render
    parts = [os.path.normpath(path), stat.st_mtime if stat else -1.0, stat.st_size if stat else -1,
             render.resolution_x, render.resolution_y, render.resolution_percentage]
    digest = hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]
    return f"{shot_name(os.path.basename(path))}-{digest}"


def convert(scene: Scene, name: str, frames: range, template: str, file: str = "") -> bool:
    """Render strip `name` (or, given `file`, that image file, shown from the first of `frames`) to
    `template` unless a complete conversion is there already (its folder is named by `conversion_key`
    or `file_key`); True if it rendered."""
    marker = os.path.join(os.path.dirname(template), COMPLETE)
    if os.path.exists(marker):
        return False
    render_strip(scene, name, frames, template, file)
    with open(marker, "w", encoding="utf-8"):
        pass
    return True


def render_strip(scene: Scene, name: str, frames: range, template: str, file: str = "") -> None:
    """Render strip `name` of `scene`, alone, over `frames` to half-float EXRs at `template` (`####` = frame):
    half float holds footage's range and precision in half the disk space of float. Given `file`, an
    image strip of that file, added to the copy only, is rendered instead: Blender reads any image it can
    show, in the colour space it would show it in."""
    with scene_copy(scene) as copy:
        if file:
            channel = max((s.channel for s in strips(copy)), default=0) + 1
            name = strips(copy).new_image("cvgen image", file, channel, frames.start).name
        for strip in strips(copy):
            strip.mute = strip.name != name
        copy.sequencer_colorspace_settings.name = LINEAR
        copy.render.use_sequencer = True
        copy.render.use_compositing = False
        copy.frame_start, copy.frame_end = frames.start, frames.stop - 1
        exr_output(copy, template)
        copy.render.image_settings.color_depth = "16"
        make_dir(Path(template).parent)
        bpy.ops.render.render(animation=True, scene=copy.name)
    missing = [f for f in frames if not os.path.exists(protocol.frame_path(template, f))]
    if missing:
        raise SetupError(f"rendering strip {name!r} to EXR did not write frame {missing[0]}")


def add_sequence(scene: Scene, name: str, folder: str, files: list[str], first: int, channel: int,
                 mark: tuple[str, str], colorspace: str = protocol.DEFAULT_COLORSPACE) -> Any:
    """An image strip of `files` (in `folder`) from frame `first` on `channel`, marked as ours, read
    in `colorspace` (cvgen's name for it).

    The folder is stored relative to the .blend when it can be, so the file moves with its results.
    """
    strip = strips(scene).new_image(name, os.path.join(folder, files[0]), channel, first)
    for file in files[1:]:
        strip.elements.append(file)
    strip.directory = bpy.path.relpath(folder + os.sep) if bpy.data.filepath else folder + os.sep
    strip.colorspace_settings.name = blender_colorspace(colorspace)
    strip[mark[0]] = mark[1]
    return strip


def remove_marked(scene: Scene, name: str, mark: str) -> None:
    """Remove strip `name` if this add-on made it (never a strip the artist renamed to that)."""
    strip = strips(scene).get(name)
    if strip is not None and mark in strip:
        strips(scene).remove(strip)
