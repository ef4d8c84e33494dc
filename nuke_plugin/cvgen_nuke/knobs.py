"""The node's panel as data: which knobs, in which order, with which defaults and ranges.

The adapter turns each `KnobSpec` into the Nuke knob of its kind and nothing more; what the
panel shows, built from the server's op schemas, is decided here where it runs without Nuke.

Layout: connection and op first, then frames, output and the Render button with the status
line, then the op's parameters, then the Farm tab. Nuke appends new knobs at the end of a
panel, and a knob belongs to the tab added before it, so Refresh ops rebuilds the parameters
and then the Farm tab after them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping

from cvgen.protocol import DEFAULT_COLORSPACE
from cvgen.protocol.client import DEFAULT_ADDRESS
from cvgen.protocol.farm import DEFAULT_CHUNK
from cvgen.protocol.schema import ParamSchema

from . import inputs
from .frames import RANGE_MODES
from .schema import ServerInfo

# Names of the fixed knobs; other modules read the knob values by these names.
SERVER = "server"
REFRESH = "refresh"
SERVER_KEY = "server_key"
CLIENT_KEY = "client_key"
OP = "op"
FRAME_RANGE = "frame_range"
FIRST = "first_frame"
LAST = "last_frame"
OUTPUT = "output"
TRANSFER = "transfer"
COLORSPACE = "colorspace"
SEED = "seed"
RENDER = "render"
CANCEL = "cancel"
STATUS = "status"
# The Farm tab.
FARM_TAB = "farm_tab"
FARM_ENGINE = "farm_engine"
FARM_CHUNK = "farm_chunk"
FARM_SHOW = "farm_show"
FARM_SHOT = "farm_shot"
FARM_SPEC_ONLY = "farm_spec_only"
FARM_CVGEN = "farm_cvgen"
FARM_SUBMIT = "farm_submit"
#: The farm engine choice as the artist sees it; `farm.ENGINES` maps it to `cvgen farm`'s names.
FARM_ENGINES = ("OpenJD", "OpenCue")
#: Hidden: the server's ops as JSON (`ServerInfo`); its presence marks a node as a cvgen node.
OPS = "cvgen_ops"
#: Hidden: "ADDRESS JOB_ID" of the node's last job, for the Cancel button.
LAST_JOB = "cvgen_last_job"
#: Hidden: the role each input of the node carries, as JSON (`inputs`).
INPUT_ROLES = "cvgen_input_roles"

#: How input frames reach the server: decided from the server's answer, or forced.
TRANSFERS = ("auto", "paths", "inline")

#: Kinds whose knob holds a value the render reads (the others are layout or buttons).
VALUE_KINDS = ("str", "text", "float", "int", "bool", "choice", "file")

_PARAM_KINDS = {"float": "float", "int": "int", "bool": "bool", "str": "str", "choice": "choice"}


@dataclass(frozen=True)
class KnobSpec:
    """One knob: `kind` picks the Nuke knob class (tab, divider, str, text, float, int, bool,
    choice, file, button, status, hidden)."""

    name: str
    kind: str
    label: str = ""
    default: Any = None
    tooltip: str = ""
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] = ()
    same_line: bool = False


#: Where the CurveZMQ key files come from when the node's key knobs are empty: a secret key
#: belongs to a workstation, not to a script that travels between artists.
SERVER_KEY_VARIABLE = "CVGEN_SERVER_KEY"
CLIENT_KEY_VARIABLE = "CVGEN_CLIENT_KEY"


def default_address(environ: Mapping[str, str]) -> str:
    """The server a new node talks to: $CVGEN_SERVER, else the server's own default address."""
    return environ.get("CVGEN_SERVER") or DEFAULT_ADDRESS


def param_knob(op: str, param: ParamSchema) -> str:
    """The knob holding an op parameter.

    Text parameters share one knob per name across ops, so a prompt carries over when the op
    changes; the others get one knob per op, because their defaults and ranges differ. The
    double underscore keeps these names apart from the fixed knobs' names.
    """
    return f"text__{param.name}" if param.type == "str" else f"{op}__{param.name}"


def image_frame_knob(role: str) -> str:
    """The knob holding the frame an `image` role takes from its input, shared by role name
    across ops so the frame chosen for a reference stays when the op changes."""
    return f"frame__{role}"


def panel(info: ServerInfo, project: tuple[int, int] = (1001, 1100),
          environ: Mapping[str, str] = os.environ) -> list[KnobSpec]:
    """Every knob of a node for this server offer, in panel order."""
    return [*fixed_knobs(info, project, environ), *param_knobs(info), *farm_knobs()]


def fixed_knobs(info: ServerInfo, project: tuple[int, int], environ: Mapping[str, str]) -> list[KnobSpec]:
    """The knobs every cvgen node has, whatever the server offers."""
    colorspaces = info.colorspaces if DEFAULT_COLORSPACE in info.colorspaces else (DEFAULT_COLORSPACE, *info.colorspaces)
    return [
        KnobSpec("cvgen", "tab", "cvgen"),
        KnobSpec(SERVER, "str", "server", default_address(environ),
                 "address of the cvgen server (`cvgen serve`); $CVGEN_SERVER sets the default"),
        KnobSpec(REFRESH, "button", "Refresh ops", tooltip="ask the server again for its ops and parameters",
                 same_line=True),
        KnobSpec(SERVER_KEY, "file", "server key", "",
                 "the server's public key file (server.key from `cvgen keys generate`), for a server on the "
                 f"network; empty: ${SERVER_KEY_VARIABLE}. Leave it and the client key empty for a server on "
                 "this machine"),
        KnobSpec(CLIENT_KEY, "file", "client key", "",
                 "this workstation's secret key file (clients/NAME.key_secret from `cvgen keys generate`), "
                 f"whose public half is in the server's authorized/ folder; empty: ${CLIENT_KEY_VARIABLE}"),
        KnobSpec(OP, "choice", "op", info.op_names[0] if info.ops else "", _op_tooltip(info),
                 choices=info.op_names),
        KnobSpec("frames_divider", "divider"),
        KnobSpec(FRAME_RANGE, "choice", "frame range", RANGE_MODES[0],
                 "input: the plate's frames; project: the script's frame range; custom: the frames below",
                 choices=RANGE_MODES),
        KnobSpec(FIRST, "int", "first", project[0], same_line=True),
        KnobSpec(LAST, "int", "last", project[1], same_line=True),
        KnobSpec(OUTPUT, "file", "output folder", "",
                 "each Render writes a new version folder here (v001, v002, ...) with the inputs it sent "
                 "and the results; empty: cvgen/<node name> beside the script"),
        KnobSpec(TRANSFER, "choice", "send frames as", TRANSFERS[0],
                 "paths: the server reads the frames from the shared file system; inline: they travel as "
                 "pixels (a server on another machine); auto: paths when the server is on this machine or "
                 "its jobs folder is visible here", choices=TRANSFERS),
        KnobSpec(COLORSPACE, "choice", "colour space", DEFAULT_COLORSPACE,
                 "the scene-linear space of the script's working space (the inputs are written raw)",
                 choices=colorspaces),
        KnobSpec(SEED, "int", "seed", 0, "random seed of the op"),
        KnobSpec("render_divider", "divider"),
        KnobSpec(RENDER, "button", "Render", tooltip="send the job to the server and load its frames"),
        KnobSpec(CANCEL, "button", "Cancel job", tooltip="cancel the node's last job on the server",
                 same_line=True),
        KnobSpec(STATUS, "status", "status", "not rendered yet" if info.ops else
                 "no ops: start `cvgen serve` and press Refresh ops"),
        KnobSpec(OPS, "hidden", default=info.to_json()),
        KnobSpec(LAST_JOB, "hidden", default=""),
        KnobSpec(INPUT_ROLES, "hidden", default=inputs.to_json(inputs.assign((), info))),
        KnobSpec("params_divider", "divider", "parameters"),
    ]


def param_knobs(info: ServerInfo) -> list[KnobSpec]:
    """One knob per op parameter (text parameters shared by name), in the server's order, each
    op's after the frame knobs of its `image` roles."""
    specs: dict[str, KnobSpec] = {}
    for op in info.ops:
        for role in op.role_schemas:
            if role.kind == "image" and image_frame_knob(role.name) not in specs:
                specs[image_frame_knob(role.name)] = _image_frame_spec(role.label, role.name)
        for param in op.params:
            name = param_knob(op.name, param)
            if name not in specs:
                specs[name] = _param_spec(name, param)
    return list(specs.values())


def farm_knobs() -> list[KnobSpec]:
    """The Farm tab: how "Submit to farm" hands the node's job to `cvgen farm`."""
    return [
        KnobSpec(FARM_TAB, "tab", "Farm"),
        KnobSpec(FARM_ENGINE, "choice", "engine", FARM_ENGINES[0],
                 "OpenJD: write an Open Job Description bundle (submit it with Deadline's own tools); "
                 "OpenCue: launch the job on the Cuebot named by $CUEBOT_HOSTS", choices=FARM_ENGINES),
        KnobSpec(FARM_CHUNK, "int", "chunk size", DEFAULT_CHUNK, "frames per farm task (1 or more)", 1, 100),
        KnobSpec(FARM_SHOW, "str", "show", "", "OpenCue show (empty: $SHOW or OpenCue's default)"),
        KnobSpec(FARM_SHOT, "str", "shot", "", "OpenCue shot (empty: $SHOT or OpenCue's default)", same_line=True),
        KnobSpec(FARM_SPEC_ONLY, "bool", "spec only", False,
                 "write the OpenCue job spec (XML) beside the job file instead of submitting it"),
        KnobSpec(FARM_CVGEN, "str", "cvgen executable", "cvgen",
                 "the cvgen command on this machine that writes the farm job (default: cvgen on PATH)"),
        KnobSpec(FARM_SUBMIT, "button", "Submit to farm",
                 tooltip="render the inputs into a new version folder and hand the job to the farm; "
                         "the inputs and results must be on storage the farm's nodes see"),
    ]


def visibility(info: ServerInfo, op: str, frame_range: str, engine: str = FARM_ENGINES[0]) -> dict[str, bool]:
    """Which knobs to show: the chosen op's parameters and the frames of its image inputs,
    first/last for a custom range, and the OpenCue-only farm knobs for OpenCue."""
    chosen = next((o for o in info.ops if o.name == op), None)
    wanted: set[str] = set()
    if chosen is not None:
        wanted = {param_knob(op, p) for p in chosen.params}
        wanted |= {image_frame_knob(r.name) for r in chosen.role_schemas if r.kind == "image"}
    shown = {spec.name: spec.name in wanted for spec in param_knobs(info)}
    shown[FIRST] = shown[LAST] = frame_range == "custom"
    shown[FARM_SHOW] = shown[FARM_SHOT] = shown[FARM_SPEC_ONLY] = engine == "OpenCue"
    return shown


def _param_spec(name: str, param: ParamSchema) -> KnobSpec:
    # Prompts get a multi-line box; other text (a model name, say) a single line.
    kind = "text" if param.type == "str" and param.name.endswith("prompt") else _PARAM_KINDS[param.type]
    limits = f" ({param.min:g} to {param.max:g})" if param.min is not None and param.max is not None else ""
    return KnobSpec(name, kind, param.name.replace("_", " "), param.default, param.help + limits,
                    param.min, param.max, param.choices)


def _image_frame_spec(label: str, role: str) -> KnobSpec:
    # Text, not a number: empty must mean "the first frame", whatever frame numbers a shot uses.
    return KnobSpec(image_frame_knob(role), "str", f"{label} frame", "",
                    f"the frame of the {label} input sent as its one image for the whole shot; "
                    "empty: the first frame of the range")


def _op_tooltip(info: ServerInfo) -> str:
    return "\n".join(f"{op.name}: {op.summary}" for op in info.ops) or "press Refresh ops to list the server's ops"
