"""From knob values to the job the server runs: checked here, before any frame is written.

Checking parameters on the host (types, ranges, choices, inputs connected) costs nothing and
saves a compositor from waiting for the inputs to render only to read the same refusal from
the server. The server checks again; this is for the message, not for safety.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from cvgen.protocol import JobSpec, ProtocolError
from cvgen.protocol.schema import OpSchema, ParamSchema, RoleSchema

from . import frames, knobs, paths, transfer
from .errors import SetupError
from .schema import ServerInfo

@dataclass(frozen=True)
class KeyFiles:
    """The CurveZMQ key files a client uses: both (a server on the network) or neither."""

    server_key: str = ""
    client_key: str = ""


#: No key files: an unencrypted connection, for a server on this machine.
NO_KEYS = KeyFiles()


def key_files(values: Mapping[str, Any], environ: Mapping[str, str]) -> KeyFiles:
    """The node's key knobs, each falling back to its environment variable when empty.

    One file without the other is refused here, naming the missing one.
    """
    server_key = str(values.get(knobs.SERVER_KEY) or "").strip() or environ.get(knobs.SERVER_KEY_VARIABLE, "").strip()
    client_key = str(values.get(knobs.CLIENT_KEY) or "").strip() or environ.get(knobs.CLIENT_KEY_VARIABLE, "").strip()
    both = ("`cvgen keys generate` makes the server's server.key and this workstation's clients/NAME.key_secret; "
            "set both, or neither for a server on this machine")
    if server_key and not client_key:
        raise SetupError(f"the server key is set but no client key (the client key knob, or "
                         f"${knobs.CLIENT_KEY_VARIABLE}): {both}")
    if client_key and not server_key:
        raise SetupError(f"the client key is set but no server key (the server key knob, or "
                         f"${knobs.SERVER_KEY_VARIABLE}): {both}")
    return KeyFiles(server_key, client_key)


@dataclass(frozen=True)
class RenderPlan:
    """A render the node is about to do: the job, and where its files go on this machine.

    `job.inputs` are the sequences the node's Write nodes render, and for each `image` role in
    `image_frames` (role -> frame) the one file its Write node renders at that frame; `results`
    is the sequence the node's Read node loads.
    """

    job: JobSpec
    address: str
    transfer: str
    results: str
    keys: KeyFiles = NO_KEYS
    image_frames: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Submission:
    """What the render session sends: the job, and which inputs go as pixels.

    With `inline_inputs` (role -> local sequence) those frames travel in the message and the
    job names no path for them; with `deliver_to` the result pixels come back in the replies
    and are written to that local sequence, for a server that cannot write where we read.
    Inline `image` roles (in `image_frames`) are one file, sent as one frame.
    """

    address: str
    job: JobSpec
    inline_inputs: Mapping[str, str]
    deliver_to: str | None
    limits: Mapping[str, int]
    keys: KeyFiles = NO_KEYS
    image_frames: Mapping[str, int] = field(default_factory=dict)


def plan_render(values: Mapping[str, Any], info: ServerInfo, connected: Sequence[str],
                frame_range: tuple[int, int], version_dir: str, name: str,
                environ: Mapping[str, str] = os.environ) -> RenderPlan:
    """The job for the node's knob `values`, its connected input roles and frame range; the key
    files from its key knobs, else from `environ`."""
    op = info.op(str(values[knobs.OP]))
    _check_roles(op, connected)
    roles = [r for r in op.role_schemas if r.name in connected]
    address = str(values[knobs.SERVER]).strip()
    if not address:
        raise SetupError("the server knob is empty: give the address of `cvgen serve`, e.g. tcp://127.0.0.1:5555")
    job = JobSpec(
        op=op.name,
        frames=frame_range,
        inputs={r.name: _input_path(version_dir, r) for r in roles},
        params=params_from_values(op, values),
        colorspace=str(values[knobs.COLORSPACE]),
        seed=int(values[knobs.SEED]),
        name=name,
        output=version_dir,
    )
    image_frames = {r.name: _image_frame(values, r, frame_range[0]) for r in roles if r.kind == "image"}
    return RenderPlan(job, address, str(values[knobs.TRANSFER]), paths.result_sequence(version_dir, name),
                      key_files(values, environ), image_frames)


def params_from_values(op: OpSchema, values: Mapping[str, Any]) -> dict[str, Any]:
    """The op's parameters from their knobs, typed and checked against the op's schema."""
    return {p.name: _checked(op.name, p, values[knobs.param_knob(op.name, p)])
            for p in op.params if knobs.param_knob(op.name, p) in values}


def submission(plan: RenderPlan, hello: Mapping[str, Any]) -> Submission:
    """The plan as sent to a server that answered `hello` so: paths or pixels, checked limits."""
    limits = {str(k): int(v) for k, v in (hello.get("limits") or {}).items()}
    frames.check_count(plan.job.frames, limits.get("max_frames_per_job"))
    if transfer.choose(plan.transfer, plan.address, str(hello.get("jobs_dir", ""))) == "paths":
        return Submission(plan.address, plan.job, {}, None, limits, plan.keys)
    job = JobSpec(plan.job.op, plan.job.frames, {}, plan.job.params, plan.job.colorspace, plan.job.seed,
                  plan.job.name)
    return Submission(plan.address, job, dict(plan.job.inputs), plan.results, limits, plan.keys, plan.image_frames)


def _check_roles(op: OpSchema, connected: Sequence[str]) -> None:
    """Refuse an op with an input of a kind this plugin cannot send, or a required input not connected."""
    for role in op.role_schemas:
        if not role.known:
            raise SetupError(f"{op.name}'s {role.label} input is of a kind this cvgen plugin does not know "
                             f"({role.kind!r}): update the plugin to use {op.name}")
    required = [r.label for r in op.role_schemas if r.required]
    missing = [r.label for r in op.role_schemas if r.required and r.name not in connected]
    if missing:
        raise SetupError(f"{op.name} needs the {' and '.join(required)} inputs; connect {', '.join(missing)}")


def _input_path(version_dir: str, role: RoleSchema) -> str:
    if role.kind == "image":
        return paths.input_image(version_dir, role.name)
    return paths.input_sequence(version_dir, role.name)


def _image_frame(values: Mapping[str, Any], role: RoleSchema, first: int) -> int:
    """The frame an `image` role takes from its input: its frame knob, empty for `first`."""
    text = str(values.get(knobs.image_frame_knob(role.name)) or "").strip()
    if not text:
        return first
    try:
        return int(text)
    except ValueError:
        raise SetupError(f"the {role.label} frame must be a frame number, or empty for the first frame of "
                         f"the range, not {text!r}") from None


def _checked(op: str, param: ParamSchema, value: Any) -> Any:
    try:
        return param.check(value, f"{op} {param.name.replace('_', ' ')}")
    except ProtocolError as exc:
        raise SetupError(str(exc)) from None
