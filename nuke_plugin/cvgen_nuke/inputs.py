"""The node's inputs: which input carries which role of the server's ops, and their labels.

A Nuke node's inputs are made once, when the node is created, while ops come and go with the
server. So a node has `MAX_INPUTS` inputs and remembers (in a hidden knob) the role each one
carries: a role keeps its input when the op changes or the ops are refreshed, so what the
compositor connected stays on the same role, and a role the server adds takes the next free
input. The graph labels each input with the selected op's label for its role (a Group's input
arrows show its Input nodes' names); inputs the op does not read say so.
"""

from __future__ import annotations

import json
import re
from typing import Sequence

from cvgen.protocol.schema import OpSchema, role_label

from .errors import SetupError
from .schema import ServerInfo

#: Inputs of a new node: enough for the roles of every op a server offers today, with room.
MAX_INPUTS = 6
#: The roles of inputs 0-3 of nodes made before nodes remembered their roles.
LEGACY_ROLES = ("plate", "fg", "matte", "depth")
#: Nuke channel sets by the channels a role reads, for the input's Write node.
_CHANNEL_SETS = {("R", "G", "B"): "rgb", ("R", "G", "B", "A"): "rgba", ("A",): "alpha", ("Z",): "depth"}
#: Channel sets of the protocol 1.0-1.2 roles, whose `hello` does not say which channels they read.
_LEGACY_CHANNELS = {"plate": "rgb", "fg": "rgba", "matte": "alpha", "depth": "depth"}


def assign(previous: Sequence[str], info: ServerInfo) -> tuple[str, ...]:
    """The role of each input: `previous` roles keep theirs, roles new to the node follow in the
    server's order. There may be more roles than inputs; `connected_roles` names the casualty."""
    roles = list(previous)
    for op in info.ops:
        roles.extend(r for r in op.roles if r not in roles)
    return tuple(roles)


def to_json(roles: Sequence[str]) -> str:
    """The hidden knob's text for `roles`."""
    return json.dumps(list(roles))


def from_json(text: str) -> tuple[str, ...]:
    """The roles stored in the hidden knob; a node made before it existed has the legacy four."""
    if not text.strip():
        return LEGACY_ROLES
    try:
        roles = json.loads(text)
    except ValueError:
        roles = None
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise SetupError("the node's stored input roles are damaged; create a new cvgen node")
    return tuple(roles)


def node_names(roles: Sequence[str], info: ServerInfo, op_name: str, count: int) -> list[str]:
    """Names of the node's `count` Input nodes, which Nuke shows on its input arrows: the selected
    op's label for each role it reads, "LABEL_unused" for a role it does not, and `inputN` for an
    input no op of the server uses."""
    op = next((o for o in info.ops if o.name == op_name), None)
    names: list[str] = []
    for index in range(count):
        role = roles[index] if index < len(roles) else ""
        names.append(_unique(_node_name(_label(role, op, info), index), names, index))
    return names


def connected_roles(op: OpSchema, roles: Sequence[str], connected: Sequence[bool]) -> list[str]:
    """The roles of `op` whose input is connected (`connected`: one flag per input of the node).

    An op role without an input on this node is refused, naming it: a server whose ops together
    take more roles than the node has inputs, or a node made before the role existed.
    """
    count = len(connected)
    for role in op.role_schemas:
        if role.name not in roles[:count]:
            taken = ", ".join(label_of(r, (op,)) for r in roles[:count])
            remedy = (f"a new cvgen node has {MAX_INPUTS} inputs" if count < MAX_INPUTS else
                      f"this server's ops take more than the {MAX_INPUTS} different inputs a cvgen node has")
            raise SetupError(f"{op.name}'s {role.label} input has no input on this node, whose {count} "
                             f"inputs carry {taken}: {remedy}")
    return [r for i, r in enumerate(roles[:count]) if connected[i] and op.role(r) is not None]


def write_channels(op: OpSchema, role: str) -> str:
    """The Nuke channel set the role's Write node writes: the channels the op reads from it."""
    schema = op.role(role)
    if schema is not None and schema.channels:
        return _CHANNEL_SETS.get(tuple(schema.channels), "all")
    return _LEGACY_CHANNELS.get(role, "all")


def _label(role: str, op: OpSchema | None, info: ServerInfo) -> str:
    if not role:
        return ""
    schema = op.role(role) if op is not None else None
    if schema is not None:
        return schema.label
    return f"{label_of(role, info.ops)} unused"


def label_of(role: str, ops: Sequence[OpSchema]) -> str:
    """The label some op of the server gives `role`, else the protocol's label for its name."""
    schema = next((s for o in ops for s in o.role_schemas if s.name == role), None)
    return schema.label if schema is not None else role_label(role)


def _node_name(label: str, index: int) -> str:
    name = re.sub(r"[^A-Za-z0-9_]+", "_", label).strip("_")
    return name if name and not name[0].isdigit() else f"input{index + 1}{'_' + name if name else ''}"


def _unique(name: str, taken: list[str], index: int) -> str:
    return name if name not in taken else f"{name}_{index + 1}"
