"""The only module that talks to Nuke: it builds the cvgen node and runs its buttons.

What the node shows and does is decided by the plain modules; here knob specs become knobs,
knobs become a dict of values, and a render's steps become Nuke calls. Everything here runs
on Nuke's main thread: network and file work runs in `session`'s worker threads, which never
call Nuke. Errors reach the compositor as a message box in the GUI and as exceptions under
`nuke -t`, so a terminal render fails loudly and a cancel is never mistaken for success.
"""

from __future__ import annotations

import concurrent.futures
import os
from typing import Any, Callable, TypeVar, cast

import nuke

from cvgen.protocol import CvgenError

from . import farm, frames, inputs, jobbuild, knobs, paths, session
from .errors import RenderCancelled, RenderFailed, SetupError
from .knobs import KnobSpec
from .progress import CANCELLED, DONE, JobProgress
from .schema import ServerInfo, from_hello

T = TypeVar("T")

#: Seconds to wait for a server's `hello` when creating a node or refreshing its ops.
HELLO_TIMEOUT_S = 5.0
RESULT_READ = "result"
#: Farm submissions running in the background, at most one per node.
_FARM = farm.Submissions()

_EXR_COMPRESSION = "Zip (16 scanlines)"
_EXR_DATATYPE = "16 bit half"


# -- start-up --------------------------------------------------------------------------------

def register_callbacks() -> None:
    """Show the chosen op's parameters whenever the op or frame range changes or a panel opens."""
    nuke.addKnobChanged(_on_knob_changed, nodeClass="Group")


def add_menu() -> None:
    """The cvgen entry in the Nodes toolbar, in GUI sessions."""
    if not nuke.GUI:
        return
    toolbar = nuke.toolbar("Nodes")
    if toolbar is not None:
        toolbar.addMenu("cvgen").addCommand("cvgen", create_node)


def _on_knob_changed() -> None:
    node = nuke.thisNode()
    if nuke.thisKnob().name() in (knobs.OP, knobs.FRAME_RANGE, knobs.FARM_ENGINE, "showPanel") and node.knob(knobs.OPS) is not None:
        _apply_visibility(node)


# -- the node --------------------------------------------------------------------------------

def create_node(address: str = "") -> nuke.Group:
    """A new cvgen node with knobs for the ops of the server at `address` (default: $CVGEN_SERVER).

    A server that does not answer still gets a node, with no ops and a status line saying to
    start the server and press Refresh ops.
    """
    project = _project_range()
    address = address or knobs.default_address(os.environ)
    try:
        info = from_hello(_wait_for_server(address, jobbuild.key_files({}, os.environ)))
    except CvgenError as exc:
        _tell(f"cvgen: {exc}\nThe node is created without ops: start the server and press Refresh ops.")
        info = ServerInfo()
    selected = nuke.selectedNodes()
    node = cast(nuke.Group, nuke.createNode("Group", inpanel=False))
    node.setName("cvgen1", uncollide=True)
    node["label"].setValue("[value op]")
    _build_graph(node)
    for spec in knobs.panel(info, project):
        node.addKnob(_make_knob(spec))
    node[knobs.SERVER].setValue(address)
    if len(selected) == 1:
        node.setInput(0, selected[0])
    _apply_visibility(node)
    return node


def _build_graph(node: nuke.Group) -> None:
    """`inputs.MAX_INPUTS` inputs, each into a (disabled) Write node; a Read into the output.

    `_apply_visibility` names the Input nodes after the roles of the selected op.
    """
    with node:
        for index in range(inputs.MAX_INPUTS):
            write = nuke.nodes.Write(name=f"write_{index}", inputs=[nuke.nodes.Input(name=f"input{index + 1}")])
            write["file_type"].setValue("exr")
            write["datatype"].setValue(_EXR_DATATYPE)
            write["compression"].setValue(_EXR_COMPRESSION)
            write["raw"].setValue(True)
            write["disable"].setValue(True)  # only rendered by Render, never by a script-wide render
        read = nuke.nodes.Read(name=RESULT_READ)
        read["raw"].setValue(True)
        read["on_error"].setValue("black")
        nuke.nodes.Output(inputs=[read])


def _make_knob(spec: KnobSpec) -> nuke.Knob:
    """The Nuke knob for a spec, with its default, range, choices, tooltip and line placement."""
    if spec.kind == "tab":
        return nuke.Tab_Knob(spec.name, spec.label)
    if spec.kind == "divider":
        return nuke.Text_Knob(spec.name, spec.label)
    knob = _new_knob(spec)
    if spec.kind == "hidden":
        knob.setFlag(nuke.INVISIBLE)
    elif spec.same_line:
        knob.clearFlag(nuke.STARTLINE)
    else:
        knob.setFlag(nuke.STARTLINE)
    if spec.tooltip:
        knob.setTooltip(spec.tooltip)
    _set(knob, spec, spec.default)
    return knob


def _new_knob(spec: KnobSpec) -> nuke.Knob:
    if spec.kind == "status":
        return nuke.Text_Knob(spec.name, spec.label, str(spec.default))
    if spec.kind == "button":
        return nuke.PyScript_Knob(spec.name, spec.label, _button_command(spec.name))
    if spec.kind == "choice":
        return nuke.Enumeration_Knob(spec.name, spec.label, list(spec.choices))
    if spec.kind in ("float", "int"):
        number = nuke.Double_Knob(spec.name, spec.label) if spec.kind == "float" else nuke.Int_Knob(spec.name, spec.label)
        if spec.min is not None and spec.max is not None:
            number.setRange(spec.min, spec.max)
        return number
    return _TEXT_KNOBS[spec.kind](spec.name, spec.label)


_TEXT_KNOBS: dict[str, Callable[[str, str], nuke.Knob]] = {
    "str": nuke.String_Knob,
    "hidden": nuke.String_Knob,
    "text": nuke.Multiline_Eval_String_Knob,
    "bool": nuke.Boolean_Knob,
    "file": nuke.File_Knob,
}


def _set(knob: nuke.Knob, spec: KnobSpec, value: Any) -> None:
    if value is None or spec.kind in ("button", "status"):
        return
    if spec.kind == "choice" and value not in spec.choices:
        return
    knob.setValue(value)


def _button_command(name: str) -> str:
    # Stored in the script with the knob: keep it to this one stable call.
    return f"import cvgen_nuke.nuke_adapter\ncvgen_nuke.nuke_adapter.on_button(nuke.thisNode(), {name!r})"


def on_button(node: nuke.Node, name: str) -> None:
    """A button of the node was pressed: run it, and show what went wrong in the GUI."""
    actions: dict[str, Callable[[nuke.Node], Any]] = {
        knobs.RENDER: render, knobs.CANCEL: cancel, knobs.REFRESH: refresh, knobs.FARM_SUBMIT: submit_to_farm}
    try:
        actions[name](node)
    except CvgenError as exc:
        if not nuke.GUI:
            raise
        if not isinstance(exc, RenderCancelled):
            nuke.message(f"cvgen: {exc}")


# -- buttons ---------------------------------------------------------------------------------

def render(node: nuke.Node) -> JobProgress:
    """Render the node: write its inputs, send the job, follow it, load the results.

    Raises `SetupError`, `RenderFailed` or `RenderCancelled` (all `CvgenError`) when the render
    does not finish; the status line says the same.
    """
    node = _cvgen_node(node)
    try:
        info = ServerInfo.from_json(node[knobs.OPS].value())
        values = _values(node, info)
        plan = jobbuild.plan_render(values, info, _connected(node, info, values), _frame_range(node, values),
                                    paths.next_version(_output_folder(node, values)), node.name())
        _status(node, "asking the server")
        submission = jobbuild.submission(plan, _wait_for_server(plan.address, plan.keys))
        _status(node, "rendering the inputs")
        _write_inputs(node, plan, info)
        _load_results(node, plan)
        progress = _follow(node, plan, submission)
    except CvgenError as exc:
        _status(node, f"{'cancelled' if isinstance(exc, RenderCancelled) else 'failed'}: {exc}")
        raise
    status = progress.status(plan.job.output or "")
    _status(node, status)
    if progress.outcome is not None and progress.outcome.state == CANCELLED:
        raise RenderCancelled(status)
    if progress.outcome is not None and progress.outcome.state != DONE:
        raise RenderFailed(status)
    return progress


def submit_to_farm(node: nuke.Node) -> farm.FarmResult | None:
    """Write the node's inputs as Render does, then hand its job to the farm through `cvgen farm`.

    The farm reads the inputs and writes the results in a new version folder of the output
    folder, which must be on storage its nodes see. In the GUI `cvgen farm` runs in the
    background (a Cuebot may take up to `farm.TIMEOUT_S` to answer): this returns None once the
    inputs are written, the status line follows the submission, and a message box says how it
    ended. A second press while the node's submission runs is refused. Under `nuke -t` it waits,
    prints the report and returns the result. Raises `SetupError` or `RenderFailed` (both
    `CvgenError`) when the job could not be handed over.
    """
    node = _cvgen_node(node)
    _FARM.claim(node.name())
    try:
        plan, settings = _prepare_farm(node)
    except BaseException:
        _FARM.release(node.name())
        raise
    if nuke.GUI:
        _FARM.start(node.name(), plan, settings, lambda update: nuke.executeInMainThread(_show_farm, (node, update)))
        return None
    _FARM.release(node.name())
    try:
        result = farm.submit(plan, settings)
    except CvgenError as exc:
        _status(node, f"farm submission failed: {exc}")
        raise
    _status(node, result.status)
    print(result.message)
    return result


def _prepare_farm(node: nuke.Group) -> tuple[jobbuild.RenderPlan, farm.FarmSettings]:
    """The node's job and Farm tab, checked, with its inputs written (on this thread: Nuke renders them)."""
    try:
        info = ServerInfo.from_json(node[knobs.OPS].value())
        values = _values(node, info)
        settings = farm.settings(values)
        plan = jobbuild.plan_render(values, info, _connected(node, info, values), _frame_range(node, values),
                                    paths.next_version(_output_folder(node, values)), node.name())
        _status(node, "rendering the inputs for the farm")
        _write_inputs(node, plan, info)
        _load_results(node, plan)
    except CvgenError as exc:
        _status(node, f"farm submission failed: {exc}")
        raise
    return plan, settings


def _show_farm(node: nuke.Node, update: farm.FarmUpdate) -> None:
    """On the main thread: a background submission's update on its node, and at the end a message box."""
    try:
        _status(node, update.status)
    except ValueError:  # the node was deleted while its job went to the farm: the message box still tells
        pass
    if update.result is not None:
        nuke.message(update.result.message)
    elif update.error is not None:
        nuke.message(f"cvgen: {update.error}")


def cancel(node: nuke.Node) -> None:
    """Cancel the node's last job on the server (a render left running, or one from before)."""
    node = _cvgen_node(node)
    address, _, job_id = node[knobs.LAST_JOB].value().partition(" ")
    if not job_id:
        raise SetupError("this node has not sent a job yet, so there is nothing to cancel")
    keys = _key_files(node)
    reply = _wait(session.in_worker(session.cancel_job, address, job_id, session.TIMEOUT_S, keys),
                  f"cancelling job {job_id}")
    _status(node, f"job {job_id}: {reply.get('state', 'unknown')}")


def refresh(node: nuke.Node) -> None:
    """Ask the server for its ops again and rebuild the parameter knobs, keeping set values."""
    node = _cvgen_node(node)
    old = ServerInfo.from_json(node[knobs.OPS].value())
    info = from_hello(_wait_for_server(node[knobs.SERVER].value(), _key_files(node)))
    kept: dict[str, Any] = {}
    # The Farm tab comes after the parameters: take it off and put it back after them.
    for spec in [*knobs.param_knobs(old), *knobs.farm_knobs()]:
        knob = node.knob(spec.name)
        if knob is not None:
            if spec.kind in knobs.VALUE_KINDS:
                kept[spec.name] = knob.value()
            node.removeKnob(knob)
    for spec in [*knobs.param_knobs(info), *knobs.farm_knobs()]:
        knob = _make_knob(spec)
        node.addKnob(knob)
        _set(knob, spec, kept.get(spec.name))
    for spec in knobs.fixed_knobs(info, _project_range(), {}):
        if spec.kind == "choice":
            knob = cast(nuke.Enumeration_Knob, node[spec.name])
            current = knob.value()
            knob.setValues(list(spec.choices))
            _set(knob, spec, current if current in spec.choices else spec.default)
            knob.setTooltip(spec.tooltip)
    node[knobs.OPS].setValue(info.to_json())
    _store_input_roles(node, _input_roles(node, info))
    _apply_visibility(node)
    _status(node, f"{len(info.ops)} ops from {node[knobs.SERVER].value()}")


# -- render steps ----------------------------------------------------------------------------

def _values(node: nuke.Node, info: ServerInfo) -> dict[str, Any]:
    """Knob values by name; the output folder with its TCL expanded, as Nuke's own paths are."""
    values: dict[str, Any] = {}
    for spec in knobs.panel(info):
        knob = node.knob(spec.name)
        if knob is not None and spec.kind in knobs.VALUE_KINDS:
            values[spec.name] = (cast(nuke.File_Knob, knob).evaluate() or "") if spec.kind == "file" else knob.value()
    return values


def _key_files(node: nuke.Node) -> jobbuild.KeyFiles:
    """The node's key files: its key knobs (absent on a node made before they existed), else the environment."""
    return jobbuild.key_files(_values(node, ServerInfo.from_json(node[knobs.OPS].value())), os.environ)


def _connected(node: nuke.Node, info: ServerInfo, values: dict[str, Any]) -> list[str]:
    """The roles of the selected op whose inputs are connected."""
    connected = [node.input(i) is not None for i in range(node.maxInputs())]
    return inputs.connected_roles(info.op(str(values[knobs.OP])), _input_roles(node, info), connected)


def _input_roles(node: nuke.Node, info: ServerInfo) -> tuple[str, ...]:
    """The role of each input: those the node stored, then the roles of `info` new to it."""
    knob = node.knob(knobs.INPUT_ROLES)
    return inputs.assign(inputs.from_json(knob.value() if knob is not None else ""), info)


def _store_input_roles(node: nuke.Node, roles: tuple[str, ...]) -> None:
    """Keep the roles' inputs for the next refresh (a node made before roles were stored gets the knob)."""
    knob = node.knob(knobs.INPUT_ROLES)
    if knob is None:
        knob = _make_knob(KnobSpec(knobs.INPUT_ROLES, "hidden"))
        node.addKnob(knob)
    knob.setValue(inputs.to_json(roles))


def _frame_range(node: nuke.Node, values: dict[str, Any]) -> tuple[int, int]:
    plate = node.input(0)
    return frames.resolve(
        str(values[knobs.FRAME_RANGE]),
        (int(values[knobs.FIRST]), int(values[knobs.LAST])),
        (plate.firstFrame(), plate.lastFrame()) if plate is not None else None,
        _project_range(),
    )


def _output_folder(node: nuke.Node, values: dict[str, Any]) -> str:
    return paths.output_folder(str(values[knobs.OUTPUT]), nuke.root()["name"].value(), node.name())


def _write_inputs(node: nuke.Group, plan: jobbuild.RenderPlan, info: ServerInfo) -> None:
    """Render each input the job uses through its Write node (EXR, half, zip, the channels the op
    reads) for the frame range; an `image` role as its one file, at its chosen frame."""
    paths.make_folders(plan.job.inputs.values())
    op = info.op(plan.job.op)
    roles = _input_roles(node, info)
    for role, path in plan.job.inputs.items():
        index = roles.index(role)
        # Nodes made before roles were stored name their Write nodes by role.
        write = node.node(f"write_{index}") or _inner(node, f"write_{role}")
        write["file"].setValue(path)
        write["channels"].setValue(inputs.write_channels(op, role))
        first, last = (plan.image_frames[role],) * 2 if role in plan.image_frames else plan.job.frames
        label = inputs.label_of(role, (op,))
        write["disable"].setValue(False)
        try:
            nuke.execute(write, first, last)
        except RuntimeError as exc:
            if "cancel" in str(exc).lower():
                raise RenderCancelled(f"cancelled while rendering the {label} input") from None
            raise SetupError(f"the {label} input could not be rendered: {exc}") from None
        finally:
            write["disable"].setValue(True)


def _load_results(node: nuke.Group, plan: jobbuild.RenderPlan) -> None:
    read = _inner(node, RESULT_READ)
    first, last = plan.job.frames
    read["file"].setValue(plan.results)
    for name, value in (("first", first), ("last", last), ("origfirst", first), ("origlast", last)):
        read[name].setValue(value)


def _follow(node: nuke.Group, plan: jobbuild.RenderPlan, submission: jobbuild.Submission) -> JobProgress:
    """Run the job in a worker and follow it here, in a progress window whose Cancel cancels it."""
    task = nuke.ProgressTask(f"cvgen {plan.job.op}")
    try:
        return session.drive(session.RenderSession(submission), _TaskView(node, task, plan), plan.job.frames)
    finally:
        del task  # closes the progress window


class _TaskView:
    """`session.ProgressView` on Nuke: a ProgressTask, the node's status line, its Read node."""

    def __init__(self, node: nuke.Group, task: nuke.ProgressTask, plan: jobbuild.RenderPlan) -> None:
        self.node = node
        self.task = task
        self.plan = plan
        self.read = _inner(node, RESULT_READ)
        self.shown = ""

    def cancel_requested(self) -> bool:
        return bool(self.task.isCancelled())

    def show(self, progress: JobProgress) -> None:
        self.task.setProgress(progress.percent)
        self.task.setMessage(progress.message)
        status = progress.status(self.plan.job.output or "")
        if status != self.shown:  # every knob change marks the script modified
            self.shown = status
            _status(self.node, status)
            if progress.job_id:
                self.node[knobs.LAST_JOB].setValue(f"{self.plan.address} {progress.job_id}")

    def frame_ready(self, frame: int, path: str) -> None:
        cast(nuke.Script_Knob, self.read["reload"]).execute()


# -- helpers ---------------------------------------------------------------------------------

def _wait_for_server(address: str, keys: jobbuild.KeyFiles) -> dict[str, Any]:
    return _wait(session.in_worker(session.hello, address, HELLO_TIMEOUT_S, keys),
                 f"asking the cvgen server at {address}")


def _wait(future: concurrent.futures.Future[T], message: str) -> T:
    """Wait for a worker's result with a progress window whose Cancel stops the waiting."""
    task = nuke.ProgressTask("cvgen")
    task.setMessage(message)
    try:
        return session.wait(future, task.isCancelled)
    finally:
        del task


def _apply_visibility(node: nuke.Node) -> None:
    info = ServerInfo.from_json(node[knobs.OPS].value())
    engine = node.knob(knobs.FARM_ENGINE)
    shown = knobs.visibility(info, str(node[knobs.OP].value()), str(node[knobs.FRAME_RANGE].value()),
                             str(engine.value()) if engine is not None else knobs.FARM_ENGINES[0])
    for name, visible in shown.items():
        knob = node.knob(name)
        if knob is not None:
            knob.setVisible(visible)
    if isinstance(node, nuke.Group):
        _label_inputs(node, info)


def _label_inputs(node: nuke.Group, info: ServerInfo) -> None:
    """Name the Input nodes, whose names Nuke shows on the node's input arrows, after the roles."""
    by_number = {int(n["number"].value()): n for n in node.nodes() if n.Class() == "Input"}
    names = inputs.node_names(_input_roles(node, info), info, str(node[knobs.OP].value()), len(by_number))
    renamed = {i: names[i] for i in by_number if i < len(names) and by_number[i].name() != names[i]}
    for index in renamed:  # through unique names first: two inputs may swap names
        by_number[index].setName(f"cvgen_input_{index}")
    for index, name in renamed.items():
        by_number[index].setName(name)


def _cvgen_node(node: nuke.Node) -> nuke.Group:
    """The node as a cvgen node, or a message naming the node that is not one."""
    if not isinstance(node, nuke.Group) or node.knob(knobs.OPS) is None:
        raise SetupError(f"{node.name()} is not a cvgen node")
    return node


def _inner(node: nuke.Group, name: str) -> nuke.Node:
    inner = node.node(name)
    if inner is None:
        raise SetupError(f"the node {node.name()} has lost its inner node {name!r}; create a new cvgen node")
    return inner


def _status(node: nuke.Node, text: str) -> None:
    node[knobs.STATUS].setValue(text)


def _tell(message: str) -> None:
    if nuke.GUI:
        nuke.message(message)


def _project_range() -> tuple[int, int]:
    root = nuke.root()
    return root.firstFrame(), root.lastFrame()
