"""Operators: thin. Each reads Blender's properties into plain values, calls `core`, and reports.

Render runs modal in the UI (a timer polls a worker thread, Esc or Cancel stops the job on the
server) and blocking where there is no UI to keep alive (background mode, or a script calling
`bpy.ops.cvgen.render()`), so a farm task or a pipeline script gets its strip when the call
returns. Ctrl-C in a blocking render cancels the job on the server too, and raises (an ERROR
report), so the script stops there. Resume Unfinished Job is Render for a job already on the server.
Submit to Farm runs `cvgen farm` on a worker thread from the panel (`farm_task`), blocking otherwise.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bpy
from bpy.props import BoolProperty, StringProperty
from bpy.types import Context, Event, Operator

from ..core import SetupError
from ..core.connection import check_allowed
from ..core.farm import (
    FarmOptions,
    farm_spec,
    find_cvgen,
    job_file_path,
    submission,
    submit,
)
from ..core.jobs import (
    Finished,
    JobWorker,
    Notice,
    RenderRequest,
    Worker,
    cancel_job,
    check_job,
    describe,
    hello,
    run_job,
    unfinished_jobs,
)
from ..core.local_server import LOCAL
from ..core.params import ops_from_hello
from ..core.protocol import client, protocol, schema
from ..core.shots import converted_input, job_dir, make_dir, new_job_id, os_problem, pass_template, shot_name
from ..core.strips import (
    StripInfo,
    check_convertible,
    frame_range,
    image_file,
    path_template,
    result_channel,
    result_files,
    strip_range,
)
from . import farm_task, passes, strips
from .prefs import local_server_folder, preferences, server_settings
from .props import op_schemas, sync_inputs, sync_params

#: Seconds between polls of a running job: often enough for a live progress bar.
POLL_S = 0.1


@dataclass(frozen=True)
class Conversion:
    """An input the server cannot read as it is, to render to EXR at `template` over `frames`: strip
    `strip`, or (for an image role) the image file `file`."""

    template: str
    frames: range
    strip: str = ""
    file: str = ""


@dataclass
class Plan:
    """A render, ready to send: the request, the strips it reads, and what to tell the artist."""

    request: RenderRequest
    inputs: list[StripInfo]
    conversions: list[Conversion] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)

    @property
    def frames(self) -> range:
        return frame_range(*self.request.frames)


def job_frames(scene: bpy.types.Scene) -> range:
    """The scene's frame range, or the active strip's."""
    if scene.cvgen.frame_source == "STRIP":
        active = scene.sequence_editor.active_strip if scene.sequence_editor else None
        if active is None:
            raise SetupError("the frame range comes from the active strip, but no strip is active")
        return strip_range(strips.info(active, range(0)))
    return frame_range(scene.frame_start, scene.frame_end)


def plan_render(context: Context, to_server: bool = True) -> Plan:
    """Read the panel's settings into a `Plan`; strips the server cannot read are listed for conversion.

    A farm submission (`to_server=False`) sends nothing to the server, so the network rule does not apply.
    """
    scene, settings = context.scene, context.scene.cvgen
    server = server_settings(context)
    if to_server:
        check_allowed(server.address, bpy.app.online_access)
    if not settings.op:
        raise SetupError("choose an op first (Connect lists the server's ops)")
    frames = job_frames(scene)
    shot = shot_name(settings.shot or scene.name)
    job_id = new_job_id(shot)
    folder = job_dir(bpy.data.filepath, shot, job_id)
    make_dir(folder.parent)
    op = op_schemas(context.window_manager).get(settings.op)
    roles = op.role_schemas if op is not None else schema.sequence_roles(tuple(i.name for i in settings.inputs), ())
    inputs: dict[str, str] = {}
    used: list[StripInfo] = []
    conversions: list[Conversion] = []
    notices: list[str] = []
    for role in roles:
        choice = settings.inputs.get(role.name)
        if choice is None or not choice.chosen(role.kind):
            continue
        if not role.known:
            raise SetupError(f"{settings.op}'s {role.label} input is a {role.kind}, which this cvgen add-on "
                             "does not know: update the add-on")
        if role.kind == "image" and choice.source == "FILE":
            inputs[role.name] = image_from_file(scene, shot, role.label, choice.filepath, frames, conversions, notices)
            continue
        taken = frames if role.kind == "sequence" else range(choice.frame, choice.frame + 1)
        strip = strips.info(strips.find(scene, choice.strip), taken)
        path, why = path_template(strip, frames) if role.kind == "sequence" else image_file(strip, choice.frame)
        if path is None:
            check_convertible(strip.name, why, settings.colorspace)
            key = strips.conversion_key(scene, strip.name, taken) or f"{job_id}-{role.name}"
            template = converted_input(bpy.data.filepath, shot, key)
            conversions.append(Conversion(template, taken, strip=strip.name))
            notices.append(f"{role.label} strip {strip.name!r} was rendered to EXR for the server: {why}")
            path = template if role.kind == "sequence" else protocol.frame_path(template, choice.frame)
        inputs[role.name] = path
        used.append(strip)
    request = RenderRequest(server, bpy.app.online_access, settings.op, (frames.start, frames.stop - 1), inputs,
                            {p.name: p.value for p in settings.params}, shot, str(folder), job_id,
                            settings.seed, settings.colorspace)
    return Plan(request, used, conversions, notices)


def image_from_file(scene: bpy.types.Scene, shot: str, label: str, path: str, frames: range,
                    conversions: list[Conversion], notices: list[str]) -> str:
    """The path to send for an image role read from file `path`: the file itself if it is an EXR (the
    server reads those), else the EXR it is rendered to first (added to `conversions`)."""
    path = os.path.normpath(bpy.path.abspath(path))
    if not os.path.isfile(path):
        raise SetupError(f"the {label} image {path} does not exist")
    if path.lower().endswith(".exr"):
        return path
    check_convertible(os.path.basename(path), "it is not an EXR", scene.cvgen.colorspace)
    template = converted_input(bpy.data.filepath, shot, strips.file_key(scene, path))
    taken = range(frames.start, frames.start + 1)
    conversions.append(Conversion(template, taken, file=path))
    notices.append(f"{label} image {os.path.basename(path)} was converted to EXR for the server")
    return protocol.frame_path(template, taken.start)


def convert_inputs(scene: bpy.types.Scene, plan: Plan) -> None:
    """Render the plan's inputs the server cannot read, reusing conversions of unchanged ones."""
    for conversion in plan.conversions:
        strips.convert(scene, conversion.strip, conversion.frames, conversion.template, conversion.file)


def failure(exc: Exception) -> str:
    """Any failure before a job is sent, as a sentence: the server's own errors (some of which are
    OS errors, like a timeout) as `describe` words them, other OS errors naming the file."""
    if isinstance(exc, OSError) and not isinstance(exc, protocol.CvgenError):
        return os_error(exc)
    return describe(exc)


def os_error(exc: OSError) -> str:
    """An OS error while writing the add-on's files, as one sentence naming the file and the problem."""
    if exc.filename is None:
        return f"cvgen could not write its files: {(exc.strerror or str(exc)).lower()}"
    return f"cannot write {exc.filename}: {os_problem(Path(exc.filename), exc)}"


def add_result(scene: bpy.types.Scene, plan: Plan, done: Any) -> Any:
    """The job's frames as an image strip on the first free channel above the inputs, in place of
    the previous result's strip unless this job read it (then it stays, and the new strip gets a
    name of its own); the previous result's files stay on disk."""
    settings = scene.cvgen
    folder, files, first = result_files(done.frames)
    if settings.result_strip not in {s.name for s in plan.inputs}:
        strips.remove_marked(scene, settings.result_strip, strips.RESULT_MARK)
    others = [s for s in strips.all_info(scene) if s.name not in {i.name for i in plan.inputs}]
    channel = result_channel(plan.inputs, others, plan.frames)
    name = f"{plan.request.name} {plan.request.op}"
    strip = strips.add_sequence(scene, name, folder, files, first, channel, (strips.RESULT_MARK, done.job_id),
                                plan.request.colorspace)
    settings.result_strip = strip.name
    return strip


class CVGEN_OT_connect(Operator):
    """Ask the server what it offers (hello): the connection light, and the ops with their parameters"""

    bl_idname = "cvgen.connect"
    bl_label = "Connect"

    _worker: Worker | None = None
    _timer: Any = None

    def invoke(self, context: Context, event: Event) -> set[str]:
        if context.window is None:
            return self.execute(context)
        session = context.window_manager.cvgen
        try:
            server, online = server_settings(context), bpy.app.online_access
            check_allowed(server.address, online)
        except SetupError as exc:
            return self._failed(context, str(exc))
        session.connection, session.message = "CONNECTING", f"asking {server.address}"
        self._worker = Worker(lambda emit: hello(server, online)).start()
        self._timer = context.window_manager.event_timer_add(POLL_S, window=context.window)
        context.window_manager.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context: Context, event: Event) -> set[str]:
        if event.type != "TIMER" or self._worker is None:
            return {"PASS_THROUGH"}
        for finished in self._worker.poll():
            context.window_manager.event_timer_remove(self._timer)
            _redraw(context)
            if finished.error:
                return self._failed(context, finished.error)
            return self._connected(context, finished.done)
        return {"PASS_THROUGH"}

    def execute(self, context: Context) -> set[str]:
        try:
            reply = hello(server_settings(context), bpy.app.online_access)
        except Exception as exc:  # reported, as every failure to reach the server is
            return self._failed(context, describe(exc))
        return self._connected(context, reply)

    def _connected(self, context: Context, reply: dict[str, Any]) -> set[str]:
        session, settings = context.window_manager.cvgen, context.scene.cvgen
        try:
            ops = ops_from_hello(reply)
        except protocol.ProtocolError as exc:
            return self._failed(context, f"the server's op list cannot be read: {exc}")
        session.ops.clear()
        for op in reply.get("ops", ()):
            item = session.ops.add()
            item.name, item.summary, item.schema_json = op["name"], op.get("summary", ""), json.dumps(op)
        devices = ", ".join(reply.get("devices", ())) or "no devices"
        session.connection = "CONNECTED"
        session.message = f"cvgen {reply.get('server_version', '?')} on {devices}"
        if settings.op in ops:
            sync_params(settings, ops[settings.op])
            sync_inputs(settings, ops[settings.op])
        elif not settings.op and ops:
            settings.op = next(iter(ops))  # its update callback builds the parameters
        elif settings.op:
            self.report({"WARNING"}, f"this server has no op {settings.op!r}; it offers {', '.join(ops)}")
        self.report({"INFO"}, f"Connected: {session.message}")
        return {"FINISHED"}

    def _failed(self, context: Context, message: str) -> set[str]:
        session = context.window_manager.cvgen
        session.connection, session.message = "FAILED", message
        self.report({"ERROR"}, message)
        return {"CANCELLED"}


class JobOperator(Operator):
    """Render's machinery, shared with Resume Unfinished Job (Blender breaks a registered operator class
    that another one subclasses, so both derive from this unregistered one); `_prepare` picks the job."""

    _worker: JobWorker | None = None
    _timer: Any = None
    _plan: Plan | None = None

    @classmethod
    def poll(cls, context: Context) -> bool:
        return not context.window_manager.cvgen.running

    def invoke(self, context: Context, event: Event) -> set[str]:
        if context.window is None:  # background mode: no event loop to run a modal operator in
            return self.execute(context)
        self._plan = self._prepare(context)
        if self._plan is None:
            return {"CANCELLED"}
        session = context.window_manager.cvgen
        session.running, session.cancel_requested, session.progress = True, False, 0.0
        session.status = "Sending the job"
        self._worker = JobWorker(self._plan.request)
        self._worker.start()
        self._timer = context.window_manager.event_timer_add(POLL_S, window=context.window)
        context.window_manager.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context: Context, event: Event) -> set[str]:
        assert self._worker is not None
        session = context.window_manager.cvgen
        if (event.type == "ESC" or session.cancel_requested) and not self._worker.cancel_requested:
            self._worker.cancel()
            session.status = "Cancelling"
        if event.type != "TIMER":
            return {"RUNNING_MODAL"} if event.type == "ESC" else {"PASS_THROUGH"}
        for event_ in self._worker.poll():
            if isinstance(event_, Finished):
                context.window_manager.event_timer_remove(self._timer)
                context.workspace.status_text_set(None)
                if event_.cancelled:  # the artist asked for it: the server's own wording would repeat it
                    event_ = Finished(error="cancelled", cancelled=True)
                return self._finish(context, event_)
            self._on_event(context, event_)
        context.workspace.status_text_set(f"cvgen: {session.status} (Esc cancels)")
        _redraw(context)
        return {"PASS_THROUGH"}

    def execute(self, context: Context) -> set[str]:
        self._plan = self._prepare(context)
        if self._plan is None:
            return {"CANCELLED"}
        request = self._plan.request
        try:
            done = run_job(request, lambda e: self._on_event(context, e))
        except KeyboardInterrupt:
            state = cancel_job(request.server, request.online_access, request.job_id)
            return self._finish(context, Finished(error=f"interrupted by Ctrl-C, {state} on the server", cancelled=True))
        except Exception as exc:  # reported: a script sees a RuntimeError with this message
            return self._finish(context, Finished(error=describe(exc)))
        return self._finish(context, Finished(done=done))

    def _prepare(self, context: Context) -> Plan | None:
        """Plan the job and render the strips the server cannot read; None (reported) on a problem.

        When strips need converting, the server checks the job first (it is up, takes the keys, the op,
        inputs and parameters), so a job it would refuse costs no conversion and leaves no files."""
        try:
            plan = plan_render(context)
            if plan.conversions:
                check_job(plan.request)
            convert_inputs(context.scene, plan)
        except Exception as exc:  # reported, as every failure to reach the server is
            self.report({"ERROR"}, failure(exc))
            return None
        for text in plan.notices:
            self.report({"INFO"}, text)
        context.scene.cvgen.last_job = plan.request.job_id
        return plan

    def _on_event(self, context: Context, event: Any) -> None:
        session = context.window_manager.cvgen
        if isinstance(event, Notice):
            self.report({"WARNING"}, event.text)
        elif isinstance(event, client.Accepted):
            first, last = event.frames
            session.status = f"Job {event.job_id}: frames {first}-{last} queued"
            if bpy.app.background:
                self.report({"INFO"}, f"cvgen job {event.job_id} accepted ({event.done} frames already done)")
        elif isinstance(event, client.Progress):
            session.progress = event.fraction
            eta = f", {event.eta_s:.0f} s left" if event.eta_s is not None else ""
            session.status = f"Frame {event.frame}, step {event.step}/{event.steps}{eta}"
        elif isinstance(event, client.FrameReady) and bpy.app.background:
            self.report({"INFO"}, f"cvgen frame {event.frame}: {event.path}")

    def _finish(self, context: Context, finished: Finished) -> set[str]:
        session = context.window_manager.cvgen
        session.running, session.cancel_requested, session.status = False, False, ""
        _redraw(context)
        assert self._plan is not None
        output = self._plan.request.output
        if finished.cancelled:
            # An ERROR report makes a script's bpy.ops call raise, so a headless `render(); save()` stops
            # there and a farm task fails (with --python-exit-code), instead of carrying on as if it had rendered.
            level = "ERROR" if bpy.app.background else "WARNING"
            self.report({level}, f"cvgen: job {self._plan.request.job_id} {finished.error}; "
                                 f"finished frames stay in {output}")
            return {"CANCELLED"}
        if finished.error:
            self.report({"ERROR"}, finished.error)
            return {"CANCELLED"}
        try:
            strip = add_result(context.scene, self._plan, finished.done)
        except SetupError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        session.progress = 1.0
        self.report({"INFO"}, f"cvgen: {len(finished.done.frames)} frames in {output}, strip {strip.name!r} "
                               f"on channel {strip.channel}")
        return {"FINISHED"}


class CVGEN_OT_render(JobOperator):
    """Send the shot to the cvgen server; the result comes back as a strip above the inputs"""

    bl_idname = "cvgen.render"
    bl_label = "Render"


class CVGEN_OT_attach(JobOperator):
    """Attach to this shot's latest unfinished job on the server (one a restarted server resumed) and get
    its strip when it finishes, as Render would"""

    bl_idname = "cvgen.attach"
    bl_label = "Resume Unfinished Job"

    def _prepare(self, context: Context) -> Plan | None:
        """The latest unfinished job of this shot that this workstation sent; None (reported) if none."""
        scene = context.scene
        server, online = server_settings(context), bpy.app.online_access
        shot = shot_name(scene.cvgen.shot or scene.name)
        try:
            check_allowed(server.address, online)
            found = unfinished_jobs(server, online, shot)
        except Exception as exc:  # reported, as every failure to reach the server is
            self.report({"ERROR"}, failure(exc))
            return None
        if not found:
            self.report({"ERROR"}, f"the cvgen server at {server.address} has no unfinished job of shot {shot!r}")
            return None
        request = found[-1]
        self.report({"INFO"}, f"cvgen: attaching to job {request.job_id} ({request.op}, frames "
                              f"{request.frames[0]}-{request.frames[1]})")
        scene.cvgen.last_job = request.job_id
        return Plan(request, [])


class CVGEN_OT_cancel(Operator):
    """Cancel the running cvgen job on the server (finished frames stay on disk)"""

    bl_idname = "cvgen.cancel"
    bl_label = "Cancel"

    @classmethod
    def poll(cls, context: Context) -> bool:
        return context.window_manager.cvgen.running

    def execute(self, context: Context) -> set[str]:
        context.window_manager.cvgen.cancel_requested = True
        return {"FINISHED"}


class CVGEN_OT_render_passes(Operator):
    """Render the frame range of the 3D scene's active view layer as cvgen inputs: Combined as the
    plate (and foreground, if none is set), depth, and a matte of the selected objects"""

    bl_idname = "cvgen.render_passes"
    bl_label = "Render Passes for cvgen"

    def execute(self, context: Context) -> set[str]:
        scene, settings = context.scene, context.scene.cvgen
        source = settings.passes_scene or scene
        layer = context.view_layer if source == scene else source.view_layers[0]
        try:
            frames = job_frames(scene)
            shot = shot_name(settings.shot or scene.name)
            templates = {role: pass_template(bpy.data.filepath, shot, layer.name, role) for role, _ in passes.PASSES}
            selected = [o for o in layer.objects if o.select_get(view_layer=layer)]
            passes.render(source, layer.name, selected, frames, templates)
            renders_3d = source == scene and not (scene.sequence_editor and len(strips.strips(scene)))
            self._add_strips(scene, frames, templates)
            if renders_3d:  # the new strips would take over F12; it stays the 3D scene's render
                scene.render.use_sequencer = False
        except SetupError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        except OSError as exc:
            self.report({"ERROR"}, os_error(exc))
            return {"CANCELLED"}
        self.report({"INFO"}, f"cvgen: passes of {len(frames)} frames in {os.path.dirname(os.path.dirname(templates['plate']))}")
        return {"FINISHED"}

    def _add_strips(self, scene: bpy.types.Scene, frames: range, templates: dict[str, str]) -> None:
        """One strip per pass, each on the first free channel above the last (depth and matte muted),
        set as the shot's inputs in place of the previous passes' strips."""
        settings = scene.cvgen
        for role, _ in passes.PASSES:
            strips.remove_marked(scene, settings.input(role).strip, strips.PASS_MARK)
        below: list[StripInfo] = []
        for role, _ in passes.PASSES:
            template = templates[role]
            files = [os.path.basename(protocol.frame_path(template, f)) for f in frames]
            channel = result_channel(below, strips.all_info(scene), frames)
            strip = strips.add_sequence(scene, f"{shot_name(settings.shot or scene.name)} {role}",
                                        os.path.dirname(template), files, frames.start, channel,
                                        (strips.PASS_MARK, role))
            strip.mute = role != "plate"
            settings.input(role).strip = strip.name
            below = [strips.info(strip, range(0))]
        if not settings.input("fg").strip:
            settings.input("fg").strip = settings.input("plate").strip
            self.report({"INFO"}, "cvgen: the rendered picture is the foreground too; the matte picks the objects")


class CVGEN_OT_submit_farm(Operator):
    """Write the shot's job file to //cvgen/<shot>/farm/ and turn it into a farm job with the cvgen command:
    an Open Job Description bundle beside it, or an OpenCue job"""

    bl_idname = "cvgen.submit_farm"
    bl_label = "Submit to Farm"

    background: BoolProperty(  # type: ignore[valid-type]
        options={"HIDDEN", "SKIP_SAVE"},
        description="run `cvgen farm` on a worker thread (the panel's button does); a script then polls farm_task.poll",
    )

    @classmethod
    def poll(cls, context: Context) -> bool:
        return not context.window_manager.cvgen.farm_running

    def invoke(self, context: Context, event: Event) -> set[str]:
        self.background = context.window is not None and not bpy.app.background
        return self.execute(context)

    def execute(self, context: Context) -> set[str]:
        scene, settings = context.scene, context.scene.cvgen
        prefs = preferences(context)
        options = FarmOptions(settings.farm_engine, settings.farm_chunk, settings.farm_show, settings.farm_shot,
                              settings.farm_spec_only)
        try:
            cvgen = find_cvgen(bpy.path.abspath(prefs.cvgen_command), bpy.path.abspath(prefs.server_python))
            plan = plan_render(context, to_server=False)
            request = plan.request
            spec, notices = farm_spec(request, [json.loads(op.schema_json) for op in context.window_manager.cvgen.ops])
            sub = submission(spec, options)
            convert_inputs(scene, plan)
            job_file = job_file_path(bpy.data.filepath, request.name, request.job_id)
            if not self.background:
                result = submit(cvgen, sub, job_file, options.spec_only)
        except SetupError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        except OSError as exc:
            self.report({"ERROR"}, os_error(exc))
            return {"CANCELLED"}
        for text in plan.notices + notices:
            self.report({"INFO"} if text in plan.notices else {"WARNING"}, text)
        settings.last_job = request.job_id
        if self.background:
            engine = settings.bl_rna.properties["farm_engine"].enum_items[settings.farm_engine].name
            farm_task.start(context, lambda emit: submit_on_worker(cvgen, sub, job_file, options.spec_only),
                            f"Submitting {request.job_id} to {engine}")
            self.report({"INFO"}, f"cvgen: submitting job {request.job_id} to {engine}; the panel's Farm box "
                                  "shows when it is done")
            return {"FINISHED"}
        settings.last_farm = farm_task.farm_label(result)
        self.report({"INFO"}, result.message)
        return {"FINISHED"}


def submit_on_worker(cvgen: str, sub: Any, job_file: Any, spec_only: bool) -> Any:
    """`submit` for a worker thread: an OS error (the farm folder cannot be written) reaches the panel as
    the sentence the blocking path reports, not as an unexpected error."""
    try:
        return submit(cvgen, sub, job_file, spec_only)
    except OSError as exc:
        raise SetupError(os_error(exc)) from None


class CVGEN_OT_server_start(Operator):
    """Start `cvgen serve` on the preferences' address with the preferences' Python"""

    bl_idname = "cvgen.server_start"
    bl_label = "Start Local Server"

    def execute(self, context: Context) -> set[str]:
        prefs = preferences(context)
        try:
            LOCAL.start(bpy.path.abspath(prefs.server_python), prefs.address.strip(), local_server_folder())
        except SetupError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        self.report({"INFO"}, f"cvgen: local server {LOCAL.status()}; log in {LOCAL.log_path}")
        return {"FINISHED"}


class CVGEN_OT_server_stop(Operator):
    """Stop the local cvgen server; a running job stops cleanly and resumes when it starts again"""

    bl_idname = "cvgen.server_stop"
    bl_label = "Stop Local Server"

    @classmethod
    def poll(cls, context: Context) -> bool:
        return LOCAL.running

    def execute(self, context: Context) -> set[str]:
        LOCAL.stop()
        self.report({"INFO"}, f"cvgen: local server {LOCAL.status()}")
        return {"FINISHED"}


class CVGEN_OT_param_help(Operator):
    """Show what a parameter does (its help from the server)"""

    bl_idname = "cvgen.param_help"
    bl_label = "Parameter Help"
    bl_options = {"INTERNAL"}

    text: StringProperty()  # type: ignore[valid-type]

    @classmethod
    def description(cls, context: Context, properties: Any) -> str:
        return properties.text

    def execute(self, context: Context) -> set[str]:
        self.report({"INFO"}, self.text)
        return {"FINISHED"}


def _redraw(context: Context) -> None:
    for area in context.screen.areas if context.screen else ():
        if area.type == "SEQUENCE_EDITOR":
            area.tag_redraw()


classes = (
    CVGEN_OT_connect,
    CVGEN_OT_render,
    CVGEN_OT_attach,
    CVGEN_OT_cancel,
    CVGEN_OT_render_passes,
    CVGEN_OT_submit_farm,
    CVGEN_OT_server_start,
    CVGEN_OT_server_stop,
    CVGEN_OT_param_help,
)
