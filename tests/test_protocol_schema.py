"""`cvgen.protocol.schema`: op schemas parsed from a real server's `hello`, malformed entries
refused by name, and the check of a value against its parameter that the hosts share."""

from __future__ import annotations

import ast
import math
from pathlib import Path
from typing import Any

import pytest
from cvgen.protocol import ProtocolError
from cvgen.protocol.client import Client
from cvgen.protocol.schema import OpSchema, ParamSchema, RoleSchema, parse_op, parse_ops
from cvgen.server.ops import all_ops
from support import ServerProcess

SCHEMA_PY = Path(__file__).resolve().parents[1] / "protocol" / "schema.py"


def test_a_real_servers_hello_parses_into_its_ops(server: ServerProcess) -> None:
    with Client(server.endpoint, timeout=10) as client:
        hello = client.hello()
    ops = {op.name: op for op in parse_ops(hello)}
    assert set(ops) == set(all_ops()) == {"colormatch", "harmonize", "propagate", "restyle", "smooth"}
    for name, op in all_ops().items():
        parsed = ops[name]
        assert (parsed.summary, parsed.inputs, parsed.optional_inputs) == (op.summary, op.inputs, op.optional_inputs)
        assert parsed.params == op.params  # the server declares with the schema hosts read: one check
    colormatch = ops["colormatch"]
    assert colormatch.roles == ("plate", "fg", "matte")
    assert colormatch.params[0] == ParamSchema("strength", "float", 1.0, colormatch.params[0].help, 0.0, 1.0)
    # Every default the server announces passes the check a host runs before sending it.
    assert all(p.check(p.default) == p.default for op in ops.values() for p in op.params)


def test_a_real_servers_hello_describes_each_input_role(server: ServerProcess) -> None:
    with Client(server.endpoint, timeout=10) as client:
        ops = {op.name: op for op in parse_ops(client.hello())}
    for name, op in all_ops().items():
        assert ops[name].role_schemas == op.roles  # label, kind, required, channels and help, as declared
        assert (ops[name].inputs, ops[name].optional_inputs) == (op.inputs, op.optional_inputs)
    plate, fg, matte = ops["harmonize"].role_schemas
    assert [r.label for r in (plate, fg, matte)] == ["Plate", "Foreground", "Matte"]
    assert {r.kind for r in (plate, fg, matte)} == {"sequence"} and (plate.required, matte.required) == (True, False)
    assert plate.channels == ("R", "G", "B") and matte.channels == ("A",) and all(r.help for r in (plate, fg, matte))
    assert ops["colormatch"].role("fg").label == "Foreground" and ops["colormatch"].role("depth") is None


def test_a_hello_without_roles_gives_sequence_roles_named_by_their_inputs() -> None:
    # A 1.1/1.2 server names its inputs only.
    (op,) = parse_ops({"ops": [{"name": "grade", "inputs": ["plate", "fg"],
                                "optional_inputs": ["matte", "depth", "clean_plate"]}]})
    assert op.role_schemas == (
        RoleSchema("plate", "Plate", "sequence", True), RoleSchema("fg", "Foreground", "sequence", True),
        RoleSchema("matte", "Matte", "sequence", False), RoleSchema("depth", "Depth", "sequence", False),
        RoleSchema("clean_plate", "Clean plate", "sequence", False),
    )
    assert op.roles == ("plate", "fg", "matte", "depth", "clean_plate")
    assert OpSchema("grade", inputs=("plate",)).role_schemas == (RoleSchema("plate", "Plate"),)


def test_roles_are_read_back_as_described_and_a_later_kind_is_kept() -> None:
    ref = RoleSchema("ref", "Reference", "image", False, ("R", "G", "B"), "a still the look is taken from")
    later = RoleSchema("cloud", "Point cloud", "points", True)
    (op,) = parse_ops({"ops": [{"name": "look", "inputs": ["stale"], "roles": [
        {**RoleSchema("plate", "Plate").describe(), "added_later": 1}, ref.describe(), later.describe()]}]})
    assert op.role_schemas == (RoleSchema("plate", "Plate"), ref, later)
    assert (op.inputs, op.optional_inputs) == (("plate", "cloud"), ("ref",))  # the roles, not the stale names
    assert [r.known for r in op.role_schemas] == [True, True, False]
    assert parse_op({"name": "x", "roles": [{"name": "clean_plate"}]}).role_schemas == (
        RoleSchema("clean_plate", "Clean plate", "sequence", True),)  # fields left out take their defaults


@pytest.mark.parametrize(("roles", "words"), [
    ({"name": "plate"}, "the roles of op 'a' must be a list, not dict"),
    (["plate"], "role 0 of op 'a' must be a map, not str"),
    ([{"name": "plate"}, {"kind": "image"}], "role 1 of op 'a' has no name"),
    ([{"name": "plate", "label": 3}], "the label of role 'plate' of op 'a' must be text, not 3"),
    ([{"name": "ref", "kind": None}], "the kind of role 'ref' of op 'a' must be text, not None"),
    ([{"name": "ref", "kind": ""}], "the kind of role 'ref' of op 'a' is empty"),
    ([{"name": "ref", "required": "yes"}], "the required of role 'ref' of op 'a' must be true or false, not 'yes'"),
    ([{"name": "ref", "channels": "RGB"}], "the channels of role 'ref' of op 'a' must be a list, not str"),
    ([{"name": "ref", "channels": ["R", 1]}], "an entry of the channels of role 'ref' of op 'a' must be text, not 1"),
    ([{"name": "ref", "help": ["x"]}], "the help of role 'ref' of op 'a' must be text"),
    ([{"name": "ref"}, {"name": "ref", "kind": "image"}], "the roles of op 'a' name 'ref' more than once"),
])
def test_malformed_roles_are_refused_with_the_entry_named(roles: Any, words: str) -> None:
    with pytest.raises(ProtocolError, match=words.replace("(", r"\(")):
        parse_ops({"ops": [{"name": "a", "roles": roles}]})


def test_unknown_fields_and_parameter_types_are_left_out() -> None:
    (op,) = parse_ops({"ops": [{
        "name": "grade", "inputs": ["plate"], "added_in_1_1": {"x": 1},
        "params": [
            {"name": "look", "type": "choice", "default": "warm", "help": "", "choices": ["warm", "cool"], "unit": "-"},
            {"name": "lut", "type": "tensor", "default": None, "help": "a type of a later protocol version"},
        ],
    }], "models": [], "future_field": 1})
    assert op == OpSchema("grade", "", ("plate",), (), (ParamSchema("look", "choice", "warm", "", None, None,
                                                                    ("warm", "cool")),))
    assert parse_ops({}) == () and parse_ops({"ops": None}) == ()
    assert parse_op({"name": "blur"}) == OpSchema("blur")


@pytest.mark.parametrize(("hello", "words"), [
    ([], "a hello reply must be a map, not list"),
    ({"ops": {"name": "grade"}}, "hello's ops must be a list, not dict"),
    ({"ops": ["grade"]}, "op 0 of hello must be a map, not str"),
    ({"ops": [{"name": "a"}, {"summary": "no name"}]}, "op 1 of hello has no name"),
    ({"ops": [{"name": ""}]}, "op 0 of hello has no name"),
    ({"ops": [{"name": "a", "summary": 3}]}, "the summary of op 'a' must be text, not 3"),
    ({"ops": [{"name": "a", "inputs": "plate"}]}, "the inputs of op 'a' must be a list, not str"),
    ({"ops": [{"name": "a", "optional_inputs": [1]}]}, "an entry of the optional_inputs of op 'a' must be text"),
    ({"ops": [{"name": "a", "params": {"x": 1}}]}, "the params of op 'a' must be a list, not dict"),
    ({"ops": [{"name": "a", "params": [1.5]}]}, "parameter 0 of op 'a' must be a map, not float"),
    ({"ops": [{"name": "a", "params": [{"type": "float"}]}]}, "parameter 0 of op 'a' has no name"),
    ({"ops": [{"name": "a", "params": [{"name": "x"}]}]}, "the type of parameter 'x' of op 'a' must be text, not None"),
    ({"ops": [{"name": "a", "params": [{"name": "x", "type": "float", "min": "0"}]}]},
     "the min of parameter 'x' of op 'a' must be a number, not '0'"),
    ({"ops": [{"name": "a", "params": [{"name": "x", "type": "int", "max": True}]}]},
     "the max of parameter 'x' of op 'a' must be a number, not True"),
    ({"ops": [{"name": "a", "params": [{"name": "x", "type": "choice", "default": "a"}]}]},
     "parameter 'x' of op 'a' is a choice without choices"),
])
def test_malformed_entries_are_refused_with_the_entry_named(hello: Any, words: str) -> None:
    with pytest.raises(ProtocolError, match=words.replace("(", r"\(")):
        parse_ops(hello)


STRENGTH = ParamSchema("strength", "float", 1.0, "", 0.0, 1.0)
STEPS = ParamSchema("steps", "int", 20, "", 1, 200)
LOOK = ParamSchema("look", "choice", "warm", "", choices=("warm", "cool"))


@pytest.mark.parametrize(("param", "value", "sent"), [
    (STRENGTH, 1, 1.0), (STRENGTH, 0.25, 0.25), (STEPS, 12.0, 12), (STEPS, 7, 7),
    (ParamSchema("on", "bool", True), False, False), (ParamSchema("p", "str", ""), "", ""), (LOOK, "cool", "cool"),
])
def test_check_gives_the_wire_value(param: ParamSchema, value: Any, sent: Any) -> None:
    checked = param.check(value)
    assert checked == sent and type(checked) is type(sent)


@pytest.mark.parametrize(("param", "value", "words"), [
    (STRENGTH, 1.5, "strength must be between 0 and 1; it is 1.5"),
    (STRENGTH, -0.5, "strength must be between 0 and 1; it is -0.5"),
    (STRENGTH, math.nan, "strength must be a number, not nan"),
    (STRENGTH, True, "strength must be a number, not True"),
    (STRENGTH, "0.5", "strength must be a number, not '0.5'"),
    (STEPS, 2.5, "steps must be a whole number, not 2.5"),
    (ParamSchema("on", "bool", True), 0, "on must be on or off"),
    (ParamSchema("p", "str", ""), 3, "p must be text, not 3"),
    (LOOK, "sepia", "look must be one of warm, cool, not 'sepia'"),
])
def test_check_refuses_what_the_server_would_refuse(param: ParamSchema, value: Any, words: str) -> None:
    with pytest.raises(ProtocolError, match=words):
        param.check(value)
    with pytest.raises(ProtocolError, match=f"^grade {words}"):
        param.check(value, f"grade {param.name}")


def test_the_module_is_python_3_9_syntax_for_nuke() -> None:
    # Nuke 14 loads it; annotations stay strings (`from __future__ import annotations`).
    source = SCHEMA_PY.read_text()
    ast.parse(source, feature_version=(3, 9))
    assert "from __future__ import annotations" in source


@pytest.mark.parametrize("value, words", [(4.0, None), (2.5, "harmonize steps must be a whole number, not 2.5"),
                                          (0, "harmonize steps must be between 1 and 200; it is 0"),
                                          (True, "harmonize steps must be a number, not True")])
def test_the_server_and_the_hosts_check_a_value_alike(server: ServerProcess, value: Any, words: str | None) -> None:
    """One check: what a host lets through, the server takes, and what it refuses, both word alike
    (the server used to refuse a whole float for an int that hosts' widgets send)."""
    from cvgen.server.ops import get_op

    with Client(server.endpoint, timeout=10) as client:
        steps = next(p for op in parse_ops(client.hello()) if op.name == "harmonize" for p in op.params
                     if p.name == "steps")
    if words is None:
        assert steps.check(value, "harmonize steps") == get_op("harmonize").resolve_params({"steps": value})["steps"] == 4
        return
    with pytest.raises(ProtocolError) as host:
        steps.check(value, "harmonize steps")
    with pytest.raises(ProtocolError) as on_server:
        get_op("harmonize").resolve_params({"steps": value})
    assert str(host.value) == str(on_server.value) == words
