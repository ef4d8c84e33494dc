"""Scenarios for tests/test_blender.py, run by the Python of the bpy virtualenv (.venv-blender).

`python scenarios.py NAME ARGS.json RESULT.json`: enables the add-on (the repository's folder,
linked into a user extension repository, or an installed zip), builds a scene, runs the add-on's
operators as a script or farm task would, and writes what it found as JSON for the test to check.
Blender's user folders are the test's own (HOME, XDG_CONFIG_HOME, BLENDER_USER_EXTENSIONS).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bpy

REPO = Path(__file__).resolve().parents[2]
ADDON = "bl_ext.user_default.cvgen"


def enable_dev_addon() -> None:
    """The repository's blender_addon/ as an extension folder, the way a developer works on it."""
    repo_dir = Path(bpy.utils.user_resource("EXTENSIONS")) / "user_default"
    repo_dir.mkdir(parents=True, exist_ok=True)
    import addon_utils  # importable only once bpy is

    link = repo_dir / "cvgen"
    if not link.exists():
        link.symlink_to(REPO / "blender_addon", target_is_directory=True)
    addon_utils.enable(ADDON, default_set=True, handle_error=_raise)


def _raise(exc: BaseException) -> None:
    raise exc


def prefs() -> Any:
    return bpy.context.preferences.addons[ADDON].preferences


def new_blend(path: str, frames: tuple[int, int], size: tuple[int, int] = (64, 48)) -> bpy.types.Scene:
    bpy.ops.wm.read_homefile(use_empty=True)
    scene = bpy.context.scene
    scene.name = "sh010"
    scene.frame_start, scene.frame_end = frames
    scene.render.resolution_x, scene.render.resolution_y = size
    scene.render.resolution_percentage = 100
    bpy.ops.wm.save_as_mainfile(filepath=path)
    return scene


def image_strip(scene: bpy.types.Scene, name: str, template: str, frames: list[int], channel: int,
                start: int) -> Any:
    files = [template.replace("####", f"{f:04d}") for f in frames]
    editor = scene.sequence_editor_create()
    strip = editor.strips.new_image(name, files[0], channel, start)
    for file in files[1:]:
        strip.elements.append(os.path.basename(file))
    return strip


def strip_facts(strip: Any) -> dict[str, Any]:
    return {
        "name": strip.name,
        "channel": strip.channel,
        "start": strip.frame_final_start,
        "end": strip.frame_final_end,
        "mute": strip.mute,
        "files": [os.path.normpath(os.path.join(bpy.path.abspath(strip.directory), e.filename))
                  for e in strip.elements],
    }


def run_render(scene: bpy.types.Scene) -> dict[str, Any]:
    """bpy.ops.cvgen.render() as a script calls it; an error report comes back as RuntimeError."""
    try:
        result = min(bpy.ops.cvgen.render())
    except RuntimeError as exc:
        return {"result": "error", "error": str(exc), "job": scene.cvgen.last_job}
    out: dict[str, Any] = {"result": result, "job": scene.cvgen.last_job}
    if result == "FINISHED":
        out["strip"] = strip_facts(scene.sequence_editor.strips[scene.cvgen.result_strip])
    return out


def setup_shot(args: dict[str, Any]) -> bpy.types.Scene:
    first, last = args["frames"]
    scene = new_blend(args["blend"], (first, last))
    prefs().address = args["address"]
    prefs().timeout = args.get("timeout", 10.0)
    prefs().server_key = args.get("server_key", "")
    prefs().client_key = args.get("client_key", "")
    frames = list(range(first, last + 1))
    plate = image_strip(scene, "plate", args["shot"]["plate"], args.get("plate_files", frames), 1,
                        args.get("plate_start", first))
    fg = image_strip(scene, "fg", args["shot"]["fg"], frames, 2, first)
    scene.cvgen.input("plate").strip, scene.cvgen.input("fg").strip = plate.name, fg.name
    scene.cvgen.op = args.get("op", "colormatch")
    for name, value in args.get("params", {}).items():
        item = scene.cvgen.params.add()
        item.name, item.kind = name, {bool: "bool", int: "int", float: "float", str: "str"}[type(value)]
        setattr(item, item.field, value)
    return scene


def scenario_render(args: dict[str, Any]) -> dict[str, Any]:
    """Connect, render (twice when asked: the second result replaces the first strip), save."""
    scene = setup_shot(args)
    bpy.ops.cvgen.connect()
    out: dict[str, Any] = {
        "connection": bpy.context.window_manager.cvgen.connection,
        "ops": [op.name for op in bpy.context.window_manager.cvgen.ops],
        "params": {p.name: [p.kind, p.value] for p in scene.cvgen.params},
        "renders": [],
    }
    for _ in range(args.get("renders", 1)):
        out["renders"].append(run_render(scene))
    out["result_strips"] = [s.name for s in scene.sequence_editor.strips if "cvgen_job" in s]
    bpy.ops.wm.save_mainfile()
    return out


def scenario_convert(args: dict[str, Any]) -> dict[str, Any]:
    """A plate slid along the timeline (its file numbers are not its frames) and a movie strip as the
    matte: both must be rendered to EXR before the job; the EXR fg goes by path."""
    scene = setup_shot(args)
    movie = scene.sequence_editor.strips.new_movie("clip", args["movie"], 3, args["frames"][0])
    scene.cvgen.input("matte").strip = movie.name
    return run_render(scene)


def scenario_unreachable(args: dict[str, Any]) -> dict[str, Any]:
    """Render against a server that is not there; no connect first (a farm script would not)."""
    scene = setup_shot(args)
    return run_render(scene)


def scenario_keys_refused(args: dict[str, Any]) -> dict[str, Any]:
    """Connect and render with each pair of key files in `attempts`; every one must be refused."""
    scene = setup_shot(args)
    out: dict[str, Any] = {"attempts": []}
    for server_key, client_key in args["attempts"]:
        prefs().server_key, prefs().client_key = server_key, client_key
        attempt = run_render(scene)
        try:
            bpy.ops.cvgen.connect()
        except RuntimeError as exc:
            attempt["connect_error"] = str(exc)
        attempt["connection"] = bpy.context.window_manager.cvgen.connection
        out["attempts"].append(attempt)
    return out


def scenario_offline(args: dict[str, Any]) -> dict[str, Any]:
    """A network server while Blender's online access is off: refused before anything is sent."""
    scene = setup_shot(args)
    out = run_render(scene)
    try:
        bpy.ops.cvgen.connect()
    except RuntimeError as exc:
        out["connect_error"] = str(exc)
    out["online_access"] = bpy.app.online_access
    return out


def scenario_passes(args: dict[str, Any]) -> dict[str, Any]:
    """A Cycles scene (a cube in front of a plane, the cube selected): passes, then a render on them."""
    first, last = args["frames"]
    scene = new_blend(args["blend"], (first, last))
    prefs().address = args["address"]
    scene.render.engine = "CYCLES"
    scene.cycles.samples = 4
    scene.cycles.device = "CPU"
    bpy.ops.mesh.primitive_plane_add(size=20, location=(0, 0, -2))
    bpy.ops.mesh.primitive_cube_add(size=1.5, location=(0, 0, 0))
    cube = bpy.context.active_object
    bpy.ops.object.light_add(type="SUN", location=(0, 0, 5))
    bpy.ops.object.camera_add(location=(0, -6, 2), rotation=(1.25, 0, 0))
    scene.camera = bpy.context.active_object
    bpy.ops.object.select_all(action="DESELECT")
    cube.select_set(True)
    cube.pass_index = 3
    compositor_before = scene.use_nodes
    bpy.ops.cvgen.render_passes()
    settings = scene.cvgen
    strips = scene.sequence_editor.strips
    out: dict[str, Any] = {
        "inputs": {role: strip_facts(strips[settings.input(role).strip]) for role in ("plate", "fg", "matte", "depth")},
        "cube_pass_index": cube.pass_index,
        "compositor_unchanged": scene.use_nodes == compositor_before,
        "scenes": [s.name for s in bpy.data.scenes],
        "f12_renders_strips": scene.render.use_sequencer,
    }
    settings.op = "colormatch"
    out["render"] = run_render(scene)
    return out


def scenario_local_server(args: dict[str, Any]) -> dict[str, Any]:
    """Start `cvgen serve` from the preferences, connect to it, stop it."""
    from bl_ext.user_default.cvgen.core.local_server import LOCAL

    new_blend(args["blend"], (1, 1))
    prefs().address = args["address"]
    prefs().server_python = args["python"]
    prefs().timeout = 60.0
    bpy.ops.cvgen.server_start()
    out = {"started": LOCAL.status(), "log": str(LOCAL.log_path)}
    bpy.ops.cvgen.connect()
    out["connection"] = bpy.context.window_manager.cvgen.connection
    out["message"] = bpy.context.window_manager.cvgen.message
    bpy.ops.cvgen.server_stop()
    out["stopped"] = LOCAL.status()
    return out


def scenario_install(args: dict[str, Any]) -> dict[str, Any]:
    """Install the built zip as an extension, enable it, and talk to a server through its own copies
    of the protocol package and of pyzmq/msgpack."""
    bpy.ops.extensions.package_install_files(filepath=args["zip"], repo="user_default", enable_on_install=True)
    import zmq
    from bl_ext.user_default.cvgen.core.protocol import protocol

    new_blend(args["blend"], (1, 1))
    prefs().address = args["address"]
    bpy.ops.cvgen.connect()
    out = {
        "enabled": ADDON in bpy.context.preferences.addons,
        "protocol": protocol.__name__,
        "protocol_file": protocol.__file__,
        "zmq_file": zmq.__file__,
        "connection": bpy.context.window_manager.cvgen.connection,
    }
    if "keyed" in args:  # the same, with key files, to a server that requires them
        keyed = args["keyed"]
        prefs().address, prefs().server_key, prefs().client_key = keyed["address"], keyed["server_key"], keyed["client_key"]
        bpy.ops.cvgen.connect()
        out["keyed_connection"] = bpy.context.window_manager.cvgen.connection
        out["keyed_message"] = bpy.context.window_manager.cvgen.message
    return out


def scenario_interrupt(args: dict[str, Any]) -> dict[str, Any]:
    """A long render that the test interrupts (SIGINT, as Ctrl-C on a farm console) once it runs."""
    scene = setup_shot(args)
    Path(args["ready"]).write_text("rendering")
    return run_render(scene)


def scenario_farm(args: dict[str, Any]) -> dict[str, Any]:
    """Connect (for the op's schema), then Submit to Farm as OpenJD with the given cvgen command; then
    again with a cvgen command that does not exist."""
    scene = setup_shot(args)
    bpy.ops.cvgen.connect()
    scene.cvgen.farm_engine, scene.cvgen.farm_chunk = "openjd", 2
    prefs().cvgen_command = args["cvgen"]
    out: dict[str, Any] = {"result": min(bpy.ops.cvgen.submit_farm()), "job": scene.cvgen.last_job,
                           "last_farm": scene.cvgen.last_farm}
    prefs().cvgen_command = args["missing"]
    try:
        bpy.ops.cvgen.submit_farm()
    except RuntimeError as exc:
        out["missing_error"] = str(exc)
    return out


def scenario_local_server_disable(args: dict[str, Any]) -> dict[str, Any]:
    """Start the local server, then disable the add-on as an artist does in the preferences."""
    import addon_utils

    from bl_ext.user_default.cvgen.core.local_server import LOCAL

    new_blend(args["blend"], (1, 1))
    prefs().address = args["address"]
    prefs().server_python = args["python"]
    bpy.ops.cvgen.server_start()
    proc = LOCAL.proc
    out: dict[str, Any] = {"started": LOCAL.status(), "pid": proc.pid if proc else None}
    addon_utils.disable(ADDON, default_set=True)
    out["exit_code"] = proc.poll() if proc else None
    return out


def scenario_farm_background(args: dict[str, Any]) -> dict[str, Any]:
    """Submit to Farm on a worker thread with each of `commands` (slow cvgen commands), polling the panel's
    farm line as Blender's timer would, until each submission ends."""
    import time

    from bl_ext.user_default.cvgen.blender import farm_task

    scene = setup_shot(args)
    bpy.ops.cvgen.connect()
    scene.cvgen.farm_engine, scene.cvgen.farm_chunk = "openjd", 2
    session = bpy.context.window_manager.cvgen
    out: dict[str, Any] = {"submissions": []}
    for command in args["commands"]:
        prefs().cvgen_command = command
        start = time.monotonic()
        result = min(bpy.ops.cvgen.submit_farm(background=True))
        sub: dict[str, Any] = {"result": result, "returned_s": time.monotonic() - start, "job": scene.cvgen.last_job,
                               "running": session.farm_running, "poll_while_running": bpy.ops.cvgen.submit_farm.poll()}
        statuses = []
        while farm_task.poll() is not None and time.monotonic() - start < 60:
            statuses.append(session.farm_status)
            time.sleep(0.1)
        sub.update(statuses=statuses, finished_s=time.monotonic() - start, running_after=session.farm_running,
                   failed=session.farm_failed, status=session.farm_status, last_farm=scene.cvgen.last_farm)
        out["submissions"].append(sub)
    return out


def error_of(operator: Callable[[], Any]) -> str:
    """The report a failing operator raises as RuntimeError ("" if it did not fail)."""
    try:
        operator()
    except RuntimeError as exc:
        return str(exc)
    return ""


def scenario_artist_defects(args: dict[str, Any]) -> dict[str, Any]:
    """On one shot, as an artist works: switch ops and back, render with a movie matte against a
    server that is down and then up, render again unchanged, render with the last result as the
    foreground, and Start Local Server on the port the server holds."""
    from bl_ext.user_default.cvgen.blender.operators import plan_render
    from bl_ext.user_default.cvgen.core.local_server import LOCAL

    scene = setup_shot(args)
    settings = scene.cvgen
    bpy.ops.cvgen.connect()
    out: dict[str, Any] = {"colormatch": {p.name: p.value for p in settings.params}}
    settings.params["temporal"].value_float = 1.5
    settings.op = "harmonize"
    out["harmonize_sent"] = plan_render(bpy.context).request.params
    settings.params["feather"].value_float = 5.0
    settings.op = "colormatch"
    out["colormatch_back"] = {p.name: p.value for p in settings.params}
    settings.op = "harmonize"
    out["harmonize_back"] = {p.name: p.value for p in settings.params}
    settings.op = "colormatch"

    movie = scene.sequence_editor.strips.new_movie("clip", args["movie"], 3, args["frames"][0])
    settings.input("matte").strip = movie.name
    prefs().address, prefs().timeout = args["dead_address"], 1.0
    out["down"] = run_render(scene)
    out["files_after_refusal"] = sorted(str(p) for p in Path(args["blend"]).parent.joinpath("cvgen").rglob("*"))
    prefs().address, prefs().timeout = args["address"], 10.0
    out["renders"] = [run_render(scene), run_render(scene)]
    used = settings.result_strip
    settings.input("fg").strip = used
    out["reuse_result"] = run_render(scene)
    out["strips"] = [s.name for s in scene.sequence_editor.strips]
    out["fg"], out["used"], out["new_result"] = settings.input("fg").strip, used, settings.result_strip

    prefs().server_python = args["python"]
    out["port_in_use"] = error_of(bpy.ops.cvgen.server_start)
    out["local_running"] = LOCAL.running
    return out


def scenario_unwritable(args: dict[str, Any]) -> dict[str, Any]:
    """A 3D scene with strips: Render Passes without a camera; then, with a file named `cvgen` beside
    the .blend, Render Passes, Render and Submit to Farm."""
    scene = setup_shot(args)
    prefs().cvgen_command = args["cvgen"]
    scene.render.engine = "CYCLES"
    bpy.ops.mesh.primitive_cube_add(size=1.5)
    bpy.context.active_object.select_set(True)
    out = {"no_camera": error_of(bpy.ops.cvgen.render_passes)}
    bpy.ops.object.camera_add(location=(0, -6, 2), rotation=(1.25, 0, 0))
    scene.camera = bpy.context.active_object
    shutil.rmtree(Path(args["blend"]).with_name("cvgen"), ignore_errors=True)
    Path(args["blend"]).with_name("cvgen").write_text("not a folder")
    out["passes"] = error_of(bpy.ops.cvgen.render_passes)
    out["render"] = error_of(bpy.ops.cvgen.render)
    out["farm"] = error_of(bpy.ops.cvgen.submit_farm)
    return out


def scenario_passes_eevee(args: dict[str, Any]) -> dict[str, Any]:
    """Render Passes in an EEVEE scene (no object index pass): refused, naming the engine as Blender does."""
    scene = new_blend(args["blend"], (1, 1))
    scene.render.engine = "BLENDER_EEVEE_NEXT"
    bpy.ops.object.camera_add(location=(0, -6, 2), rotation=(1.25, 0, 0))
    scene.camera = bpy.context.active_object
    try:
        bpy.ops.cvgen.render_passes()
    except RuntimeError as exc:
        return {"error": str(exc)}
    return {"error": ""}


def scenario_resume(args: dict[str, Any]) -> dict[str, Any]:
    """A render whose server the test stops mid-job; once the test has restarted the server (which
    resumes the job), Resume Unfinished Job attaches to it and adds its strip."""
    import time

    scene = setup_shot(args)
    out: dict[str, Any] = {"render": run_render(scene)}
    Path(args["rendered"]).write_text("rendered")
    deadline = time.monotonic() + 60
    while not Path(args["restarted"]).exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    try:
        out["attach"] = min(bpy.ops.cvgen.attach())
    except RuntimeError as exc:
        out["attach"] = str(exc)
    out["job"] = scene.cvgen.last_job
    if scene.cvgen.result_strip:
        out["strip"] = strip_facts(scene.sequence_editor.strips[scene.cvgen.result_strip])
    return out


class Recorder:
    """Stands in for Blender's UILayout (headless Blender draws no panels): records each call the panel
    makes, with its plain arguments, so a test sees the labels and fields an artist would."""

    def __init__(self, log: list[Any]) -> None:
        self.log = log

    def __getattr__(self, name: str) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Recorder:
            plain = [a for a in args if isinstance(a, (str, int, float, bool))]
            self.log.append([name, plain, {k: v for k, v in kwargs.items() if isinstance(v, (str, int, float, bool))}])
            return Recorder(self.log)
        return call


def draw_panel(scene: bpy.types.Scene) -> list[Any]:
    """What the cvgen panel draws for `scene`, as `Recorder` entries."""
    from types import SimpleNamespace

    from bl_ext.user_default.cvgen.blender.panel import SEQUENCER_PT_cvgen

    log: list[Any] = []
    context = SimpleNamespace(window_manager=bpy.context.window_manager, scene=scene, preferences=bpy.context.preferences,
                              region=SimpleNamespace(width=400))
    SEQUENCER_PT_cvgen.draw(SimpleNamespace(layout=Recorder(log)), context)
    return log


def scenario_schema_roles(args: dict[str, Any]) -> dict[str, Any]:
    """The test op `still` (tests/extra_op_server.py), which the add-on has never seen: the panel's roles
    and range, a render with the reference from a strip's frame, one from a PNG file, an out-of-range count."""
    scene = setup_shot(args)
    settings = scene.cvgen
    bpy.ops.cvgen.connect()
    count = settings.params["count"]
    out: dict[str, Any] = {"panel": draw_panel(scene), "ref_frame": settings.inputs["ref"].frame,
                           "count_range": [count.bl_rna.properties[count.field].hard_min,
                                           count.bl_rna.properties[count.field].hard_max]}
    settings.inputs["ref"].strip, settings.inputs["ref"].frame = "fg", args["frames"][0] + 1
    settings.inputs["guide"].strip = "fg"
    out["from_strip"] = run_render(scene)
    png = bpy.data.images.new("ref", 64, 48)
    png.pixels = [0.25, 0.5, 0.75, 1.0] * (64 * 48)
    png.filepath_raw, png.file_format = str(Path(args["blend"]).with_name("ref.png")), "PNG"
    png.save()
    settings.inputs["ref"].source, settings.inputs["ref"].filepath = "FILE", png.filepath_raw
    settings.inputs["guide"].strip = ""
    out["from_file"] = run_render(scene)
    count.value_int = 99
    out["out_of_range"] = run_render(scene)
    return out


def scenario_restyle(args: dict[str, Any]) -> dict[str, Any]:
    """restyle on the plate strip, with its Reference from an image file on disk (a style frame)."""
    scene = setup_shot(args)
    settings = scene.cvgen
    bpy.ops.cvgen.connect()
    reference = settings.input("reference")
    reference.source, reference.filepath = "FILE", args["reference"]
    out = run_render(scene)
    out["params"] = {p.name: p.value for p in settings.params}
    return out


SCENARIOS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    name.removeprefix("scenario_"): fn for name, fn in globals().items() if name.startswith("scenario_")
}


def main() -> None:
    name, args_path, result_path = sys.argv[1:4]
    args = json.loads(Path(args_path).read_text())
    if name != "install":
        enable_dev_addon()
    result = SCENARIOS[name](args)
    Path(result_path).write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
