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

#: Input role kinds of protocol 1.3: one frame per shot frame, or one image for the whole shot.
#: A kind a later version adds is kept as given, so a host can say the op needs a newer host.
ROLE_KINDS = ("sequence", "image")

#: Labels of the roles of protocol 1.0-1.2 servers, whose `hello` gives input names only.
ROLE_LABELS = {"plate": "Plate", "fg": "Foreground", "matte": "Matte", "depth": "Depth"}


def role_label(name: str) -> str:
    """The label of a role a 1.1/1.2 server names without one: `clean_plate` -> "Clean plate"."""
    return ROLE_LABELS.get(name) or name.replace("_", " ").capitalize()


@dataclass(frozen=True)
class RoleSchema:
    """One input of an op (added in 1.3): its label, whether it is a `sequence` (one frame per
    frame of the shot) or an `image` (one file for the whole shot), whether the op needs it, the
    channels it reads (empty: any), and one line of help."""

    name: str
    label: str = ""
    kind: str = "sequence"
    required: bool = True
    channels: tuple[str, ...] = ()
    help: str = ""

    @property
    def known(self) -> bool:
        """Whether this version knows the role's kind (else the op needs a newer host)."""
        return self.kind in ROLE_KINDS

    def describe(self) -> dict[str, Any]:
        """The role as `hello` sends it (`parse_op` reads it back to an equal schema)."""
        return {"name": self.name, "label": self.label, "kind": self.kind, "required": self.required,
                "channels": list(self.channels), "help": self.help}


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
    """What `hello` says about one op: its inputs by role, and its parameters in order.

    `role_schemas` describe each input (1.3); `inputs` and `optional_inputs` name them. Given only
    one of the two, the other is made from it (names only: sequence roles with the labels of
    `role_label`), so the two always agree.
    """

    name: str
    summary: str = ""
    inputs: tuple[str, ...] = ()
    optional_inputs: tuple[str, ...] = ()
    params: tuple[ParamSchema, ...] = ()
    role_schemas: tuple[RoleSchema, ...] = ()

    def __post_init__(self) -> None:
        if self.role_schemas and not (self.inputs or self.optional_inputs):
            object.__setattr__(self, "inputs", tuple(r.name for r in self.role_schemas if r.required))
            object.__setattr__(self, "optional_inputs", tuple(r.name for r in self.role_schemas if not r.required))
        elif not self.role_schemas:
            object.__setattr__(self, "role_schemas", sequence_roles(self.inputs, self.optional_inputs))

    @property
    def roles(self) -> tuple[str, ...]:
        """Every input role the op takes, required ones first."""
        return self.inputs + self.optional_inputs

    def role(self, name: str) -> RoleSchema | None:
        """The schema of input role `name`, None when the op takes no such input."""
        return next((r for r in self.role_schemas if r.name == name), None)

    def describe(self) -> dict[str, Any]:
        """The op as `hello` sends it (`parse_op` reads it back to an equal schema)."""
        return {
            "name": self.name,
            "summary": self.summary,
            "inputs": list(self.inputs),
            "optional_inputs": list(self.optional_inputs),
            "roles": [r.describe() for r in self.role_schemas],
            "params": [p.describe() for p in self.params],
        }


def sequence_roles(inputs: tuple[str, ...], optional_inputs: tuple[str, ...]) -> tuple[RoleSchema, ...]:
    """The roles of an op a 1.1/1.2 server describes by input names only: all sequences."""
    return tuple(RoleSchema(name, role_label(name), "sequence", name in inputs)
                 for name in inputs + tuple(n for n in optional_inputs if n not in inputs))


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
    inputs = _texts(data.get("inputs"), f"the inputs of {where}")
    optional = _texts(data.get("optional_inputs"), f"the optional_inputs of {where}")
    if data.get("roles") is None:  # a 1.1/1.2 server: names only
        roles = sequence_roles(inputs, optional)
    else:
        roles = tuple(_role(r, i, where) for i, r in enumerate(_list(data["roles"], f"the roles of {where}")))
        names = [r.name for r in roles]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ProtocolError(f"the roles of {where} name {', '.join(repr(n) for n in twice)} more than once")
        inputs = tuple(r.name for r in roles if r.required)
        optional = tuple(r.name for r in roles if not r.required)
    return OpSchema(
        name=name,
        summary=_text(data.get("summary", ""), f"the summary of {where}"),
        inputs=inputs,
        optional_inputs=optional,
        params=tuple(p for p in params if p is not None),
        role_schemas=roles,
    )


def _role(data: Any, index: int, op: str) -> RoleSchema:
    if not isinstance(data, dict):
        raise ProtocolError(f"role {index} of {op} must be a map, not {type(data).__name__}")
    name = _name(data, f"role {index} of {op}")
    where = f"role {name!r} of {op}"
    required = data.get("required", True)
    if not isinstance(required, bool):
        raise ProtocolError(f"the required of {where} must be true or false, not {required!r}")
    kind = _text(data.get("kind", "sequence"), f"the kind of {where}")
    if not kind:
        raise ProtocolError(f"the kind of {where} is empty")
    return RoleSchema(
        name=name,
        label=_text(data.get("label") or role_label(name), f"the label of {where}"),
        kind=kind,
        required=required,
        channels=_texts(data.get("channels"), f"the channels of {where}"),
        help=_text(data.get("help", ""), f"the help of {where}"),
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
