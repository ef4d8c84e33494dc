"""The ops a server offers, as the plugin keeps them: parsed from `hello`, stored in the node.

The node stores this (as JSON, in a hidden knob) so that a script opened later, or rendered on
a farm, knows which knob holds which parameter without asking a server first. Parsing is
forgiving in the protocol's spirit: unknown fields are ignored, and a parameter of a type this
plugin does not know is left out, so the server applies its default rather than the plugin
sending a value of the wrong kind.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from cvgen.protocol import DEFAULT_COLORSPACE, ProtocolError

#: Parameter types of protocol 1.0 (PROTOCOL.md, `hello`).
PARAM_TYPES = ("float", "int", "bool", "str", "choice")


@dataclass(frozen=True)
class ParamSchema:
    """One op parameter: what its knob shows and which values the server accepts."""

    name: str
    type: str
    default: Any
    help: str = ""
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class OpSchema:
    name: str
    summary: str = ""
    inputs: tuple[str, ...] = ()
    optional_inputs: tuple[str, ...] = ()
    params: tuple[ParamSchema, ...] = ()


@dataclass(frozen=True)
class ServerInfo:
    """What the node needs to know about a server's offer: its ops and colour spaces."""

    ops: tuple[OpSchema, ...] = ()
    colorspaces: tuple[str, ...] = (DEFAULT_COLORSPACE,)

    def op(self, name: str) -> OpSchema:
        """The named op; the error lists what the server offers, for the status line."""
        for op in self.ops:
            if op.name == name:
                return op
        offered = ", ".join(o.name for o in self.ops) or "no ops (press Refresh ops)"
        raise ProtocolError(f"op {name!r} is not offered by this server; it offers {offered}")

    @property
    def op_names(self) -> tuple[str, ...]:
        return tuple(op.name for op in self.ops)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ServerInfo":
        """Read what `to_json` stored; an empty knob (a node never connected) means no ops."""
        if not text.strip():
            return cls()
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ProtocolError(f"the node's stored op list is damaged ({exc}); press Refresh ops") from None
        if not isinstance(data, dict):
            raise ProtocolError("the node's stored op list is damaged (not a JSON object); press Refresh ops")
        return from_hello(data)


def from_hello(reply: dict[str, Any]) -> ServerInfo:
    """The ops and colour spaces of a `hello` reply."""
    ops = tuple(_op(o) for o in reply.get("ops") or [] if isinstance(o, dict) and o.get("name"))
    colorspaces = tuple(str(c) for c in reply.get("colorspaces") or []) or (DEFAULT_COLORSPACE,)
    return ServerInfo(ops, colorspaces)


def _op(data: dict[str, Any]) -> OpSchema:
    params = tuple(
        _param(p) for p in data.get("params") or [] if isinstance(p, dict) and p.get("type") in PARAM_TYPES
    )
    return OpSchema(
        name=str(data["name"]),
        summary=str(data.get("summary", "")),
        inputs=tuple(str(r) for r in data.get("inputs") or []),
        optional_inputs=tuple(str(r) for r in data.get("optional_inputs") or []),
        params=params,
    )


def _param(data: dict[str, Any]) -> ParamSchema:
    return ParamSchema(
        name=str(data["name"]),
        type=str(data["type"]),
        default=data.get("default"),
        help=str(data.get("help", "")),
        min=data.get("min"),
        max=data.get("max"),
        choices=tuple(str(c) for c in data.get("choices") or []),
    )
