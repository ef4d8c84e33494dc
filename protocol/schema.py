"""Op schemas as a host reads them from a `hello` reply (PROTOCOL.md, "hello"), and the check of
a value against its parameter (the Nuke plugin runs it before sending; the Blender add-on to
keep only the artist's values that still fit after a schema refresh).

Standard library only, and Python 3.9 at runtime (Nuke 14 loads this module): annotations stay
strings (`from __future__ import annotations`), so `X | None` may appear in them and nowhere else.

Parsing follows the protocol's rule for what it does not know: unknown fields are ignored, and a
parameter of a type this version does not know is left out, so a host sends no value for it and
the server applies its default. What cannot be read (an op or parameter that is not a map, a
missing name, a field of the wrong kind) is a `ProtocolError` that names the entry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .errors import ProtocolError

#: Parameter types of protocol 1.0 (the server's ops declare theirs with `ParamSchema` too).
PARAM_TYPES = ("float", "int", "bool", "str", "choice")


@dataclass(frozen=True)
class ParamSchema:
    """One op parameter: its type, default, one-line help, and the values the server accepts."""

    name: str
    type: str
    default: Any
    help: str = ""
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] = ()
    #: For a text parameter that names a model: the kind of model it takes (added in 1.3).
    model_kind: str | None = None

    def describe(self) -> dict[str, Any]:
        """The parameter as `hello` sends it (`parse_ops` reads it back to an equal schema)."""
        out: dict[str, Any] = {"name": self.name, "type": self.type, "default": self.default, "help": self.help}
        if self.min is not None:
            out["min"] = self.min
        if self.max is not None:
            out["max"] = self.max
        if self.choices:
            out["choices"] = list(self.choices)
        if self.model_kind:
            out["model_kind"] = self.model_kind
        return out

    def check(self, value: Any, label: str = "") -> Any:
        """`value` as the wire value of this parameter, or a `ProtocolError` saying what is wrong
        (`label` names the parameter in it, the parameter's name by default).

        Numbers may come as either kind (a whole float for an int, an int for a float), as host
        widgets give them; bools are never numbers, and text is never converted.
        """
        where = label or self.name
        if self.type == "bool":
            if not isinstance(value, bool):
                raise ProtocolError(f"{where} must be on or off (a bool), not {value!r}")
            return value
        if self.type in ("str", "choice"):
            if not isinstance(value, str):
                raise ProtocolError(f"{where} must be text, not {value!r}")
            if self.type == "choice" and value not in self.choices:
                raise ProtocolError(f"{where} must be one of {', '.join(self.choices)}, not {value!r}")
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ProtocolError(f"{where} must be a number, not {value!r}")
        number: int | float = float(value)
        if self.type == "int":
            if number != int(number):
                raise ProtocolError(f"{where} must be a whole number, not {value!r}")
            number = int(number)
        low = self.min is not None and number < self.min
        if low or self.max is not None and number > self.max:
            if self.min is not None and self.max is not None:
                bounds = f"between {self.min:g} and {self.max:g}"
            else:
                bounds = f"at least {self.min:g}" if low else f"at most {self.max:g}"
            raise ProtocolError(f"{where} must be {bounds}; it is {number:g}")
        return number


@dataclass(frozen=True)
class OpSchema:
    """What `hello` says about one op: its inputs by role, and its parameters in order."""

    name: str
    summary: str = ""
    inputs: tuple[str, ...] = ()
    optional_inputs: tuple[str, ...] = ()
    params: tuple[ParamSchema, ...] = ()

    @property
    def roles(self) -> tuple[str, ...]:
        """Every input role the op takes, required ones first."""
        return self.inputs + self.optional_inputs


def parse_ops(hello: dict[str, Any]) -> tuple[OpSchema, ...]:
    """The ops of a `hello` reply (its `ops` field; none when it has no such field)."""
    if not isinstance(hello, dict):
        raise ProtocolError(f"a hello reply must be a map, not {type(hello).__name__}")
    ops = hello.get("ops")
    if ops is None:
        return ()
    return tuple(parse_op(op, f"op {i}") for i, op in enumerate(_list(ops, "hello's ops")))


def parse_op(data: Any, where: str = "op") -> OpSchema:
    """One entry of `hello`'s `ops`; `where` names it in errors until its name is known."""
    if not isinstance(data, dict):
        raise ProtocolError(f"{where} of hello must be a map, not {type(data).__name__}")
    name = _name(data, f"{where} of hello")
    where = f"op {name!r}"
    params = tuple(_param(p, i, where) for i, p in enumerate(_list(data.get("params"), f"the params of {where}")))
    return OpSchema(
        name=name,
        summary=_text(data.get("summary", ""), f"the summary of {where}"),
        inputs=_texts(data.get("inputs"), f"the inputs of {where}"),
        optional_inputs=_texts(data.get("optional_inputs"), f"the optional_inputs of {where}"),
        params=tuple(p for p in params if p is not None),
    )


def _param(data: Any, index: int, op: str) -> ParamSchema | None:
    if not isinstance(data, dict):
        raise ProtocolError(f"parameter {index} of {op} must be a map, not {type(data).__name__}")
    name = _name(data, f"parameter {index} of {op}")
    where = f"parameter {name!r} of {op}"
    kind = _text(data.get("type"), f"the type of {where}")
    if kind not in PARAM_TYPES:
        return None  # a type of a later protocol version: the server applies its default
    choices = _texts(data.get("choices"), f"the choices of {where}")
    if kind == "choice" and not choices:
        raise ProtocolError(f"{where} is a choice without choices")
    return ParamSchema(
        name=name,
        type=kind,
        default=data.get("default"),
        help=_text(data.get("help", ""), f"the help of {where}"),
        min=_limit(data.get("min"), f"the min of {where}"),
        max=_limit(data.get("max"), f"the max of {where}"),
        choices=choices,
        model_kind=_text(data["model_kind"], f"the model_kind of {where}") if data.get("model_kind") else None,
    )


def _name(data: dict[str, Any], where: str) -> str:
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise ProtocolError(f"{where} has no name")
    return name


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ProtocolError(f"{where} must be text, not {value!r}")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        raise ProtocolError(f"{where} must be a list, not {type(value).__name__}")
    return list(value)


def _texts(value: Any, where: str) -> tuple[str, ...]:
    return tuple(_text(v, f"an entry of {where}") for v in _list(value, where))


def _limit(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ProtocolError(f"{where} must be a number, not {value!r}")
    return value
