"""Op parameters as the panel holds them, built from the schemas the server sends in `hello`.

The panel stores every op's parameters as generic name/kind/value items, so an op the server
learns tomorrow shows its fields without a change to the add-on. Values the artist set survive
a refresh of the schema (or a switch to another op and back) as long as they still fit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from . import SetupError

KINDS = ("float", "int", "bool", "str", "choice")


@dataclass
class ParamValue:
    """One parameter's current value, with what the panel needs to draw it."""

    name: str
    kind: str
    value: Any
    help: str = ""
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class OpSchema:
    """What `hello` says about one op."""

    name: str
    summary: str = ""
    inputs: tuple[str, ...] = ()
    optional_inputs: tuple[str, ...] = ()
    params: tuple[dict[str, Any], ...] = field(default_factory=tuple)

    @classmethod
    def from_hello(cls, op: dict[str, Any]) -> OpSchema:
        return cls(
            str(op["name"]),
            str(op.get("summary", "")),
            tuple(str(r) for r in op.get("inputs", ())),
            tuple(str(r) for r in op.get("optional_inputs", ())),
            tuple(p for p in op.get("params", ()) if isinstance(p, dict) and p.get("type") in KINDS),
        )

    @property
    def roles(self) -> tuple[str, ...]:
        return self.inputs + self.optional_inputs


def ops_from_hello(hello: dict[str, Any]) -> dict[str, OpSchema]:
    return {str(op["name"]): OpSchema.from_hello(op) for op in hello.get("ops", ())}


def find_op(ops: dict[str, OpSchema], name: str) -> OpSchema:
    if name not in ops:
        offered = ", ".join(sorted(ops)) or "none"
        raise SetupError(f"the server has no op {name!r}; it offers {offered}")
    return ops[name]


def fits(kind: str, value: Any, choices: tuple[str, ...] = ()) -> bool:
    """Whether `value` is a valid value of a parameter of `kind` (bools are not numbers here)."""
    if kind == "bool":
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if kind == "float":
        return isinstance(value, (int, float)) and math.isfinite(value)
    if kind == "int":
        return isinstance(value, int)
    if kind == "choice":
        return value in choices
    return kind == "str" and isinstance(value, str)


def from_schema(op: OpSchema, current: dict[str, Any]) -> list[ParamValue]:
    """The op's parameters in schema order: the artist's `current` values where they still fit,
    the server's defaults elsewhere."""
    out = []
    for p in op.params:
        kind = str(p["type"])
        choices = tuple(str(c) for c in p.get("choices", ()))
        value = current.get(p["name"], p.get("default"))
        if not fits(kind, value, choices):
            value = p.get("default")
        out.append(ParamValue(str(p["name"]), kind, value, str(p.get("help", "")), choices))
    return out


def job_params(op: OpSchema, values: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The parameters to send, and a warning for each stored one this op no longer has.

    Every value is sent, defaults too, so the job file records exactly what the artist saw;
    floats as the decimal the artist saw, not Blender's single-precision neighbour of it
    (0.01, not 0.009999999776482582).
    """
    kinds = {str(p["name"]): p["type"] for p in op.params}
    stale = sorted(set(values) - set(kinds))
    warnings = [f"{op.name} has no parameter {name!r} any more; it was not sent" for name in stale]
    params = {k: float(f"{v:.7g}") if kinds[k] == "float" else v for k, v in values.items() if k in kinds}
    return params, warnings
