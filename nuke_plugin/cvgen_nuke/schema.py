"""The ops a server offers, as the plugin keeps them: parsed from `hello`, stored in the node.

The node stores this (as JSON, in a hidden knob) so that a script opened later, or rendered on
a farm, knows which knob holds which parameter without asking a server first. The op schemas
themselves, and how they are parsed, are `cvgen.protocol.schema`'s: unknown fields are
ignored, and a parameter of a type the protocol copy does not know is left out, so the server
applies its default rather than the plugin sending a value of the wrong kind.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from cvgen.protocol import DEFAULT_COLORSPACE, ProtocolError
from cvgen.protocol.schema import OpSchema, parse_ops


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
        """The hello shape of the ops, so `from_json` reads it with the protocol's own parser."""
        return json.dumps({"ops": [op.describe() for op in self.ops], "colorspaces": list(self.colorspaces)},
                          sort_keys=True)

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
        try:
            return from_hello(data)
        except ProtocolError as exc:
            raise ProtocolError(f"the node's stored op list is damaged ({exc}); press Refresh ops") from None


def from_hello(reply: dict[str, Any]) -> ServerInfo:
    """The ops and colour spaces of a `hello` reply."""
    colorspaces = tuple(str(c) for c in reply.get("colorspaces") or []) or (DEFAULT_COLORSPACE,)
    return ServerInfo(parse_ops(reply), colorspaces)
