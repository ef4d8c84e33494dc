"""Op parameters as the panel holds them, built from the schemas the server sends in `hello`.

The schemas, their parsing and the check of a value against a parameter are the protocol's
(`cvgen.protocol.schema`); this module keeps what the panel makes of them. The panel stores
every op's parameters as generic name/kind/value items, so an op the server learns tomorrow
shows its fields without a change to the add-on. Values the artist set survive a refresh of the
schema (or a switch to another op and back) as long as they still fit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import SetupError
from .protocol import protocol, schema


@dataclass
class ParamValue:
    """One parameter's current value, with what the panel needs to draw it."""

    name: str
    kind: str
    value: Any
    help: str = ""
    choices: tuple[str, ...] = ()
    min: float | None = None
    max: float | None = None


def ops_from_hello(hello: dict[str, Any]) -> dict[str, Any]:
    """The `OpSchema`s of a `hello` reply by name; a malformed one is a `ProtocolError`."""
    return {op.name: op for op in schema.parse_ops(hello)}


def find_op(ops: dict[str, Any], name: str) -> Any:
    if name not in ops:
        offered = ", ".join(sorted(ops)) or "none"
        raise SetupError(f"the server has no op {name!r}; it offers {offered}")
    return ops[name]


def from_schema(op: Any, current: dict[str, Any]) -> list[ParamValue]:
    """The op's parameters in schema order: the artist's `current` values where they still fit
    (converted to the parameter's type: a whole float for an int), the server's defaults elsewhere."""
    out = []
    for p in op.params:
        try:
            value = p.check(current[p.name]) if p.name in current else p.default
        except protocol.ProtocolError:
            value = p.default
        out.append(ParamValue(p.name, p.type, value, p.help, p.choices, p.min, p.max))
    return out


def param_label(name: str) -> str:
    """A parameter's label in the panel and in its errors: `max_gain` -> "Max gain"."""
    return name.replace("_", " ").capitalize()


def check_params(op: Any, values: dict[str, Any]) -> None:
    """Refuse a value the op's schema does not allow, in the protocol's shared wording under the panel's
    label ("Count must be between 1 and 8; it is 99"), before anything is converted or sent."""
    for p in op.params:
        if p.name in values:
            try:
                p.check(values[p.name], param_label(p.name))
            except protocol.ProtocolError as exc:
                raise SetupError(str(exc)) from None


def job_params(op: Any, values: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The parameters to send, and a warning for each stored one this op no longer has.

    Every value is sent, defaults too, so the job file records exactly what the artist saw;
    floats as the decimal the artist saw, not Blender's single-precision neighbour of it
    (0.01, not 0.009999999776482582).
    """
    types = {p.name: p.type for p in op.params}
    stale = sorted(set(values) - set(types))
    warnings = [f"{op.name} has no parameter {name!r} any more; it was not sent" for name in stale]
    params = {k: float(f"{v:.7g}") if types[k] == "float" else v for k, v in values.items() if k in types}
    return params, warnings
