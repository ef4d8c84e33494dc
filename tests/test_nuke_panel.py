"""The cvgen node's panel without Nuke: op schemas from the real ops, knob specs, visibility."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "nuke_plugin"))

from cvgen_nuke import knobs  # noqa: E402
from cvgen_nuke.schema import ServerInfo, from_hello  # noqa: E402

from cvgen.protocol import DEFAULT_COLORSPACE, ProtocolError  # noqa: E402
from cvgen.server.ops import all_ops  # noqa: E402


@pytest.fixture(scope="module")
def info() -> ServerInfo:
    """What a real server's `hello` says about its ops (the same schemas `on_hello` sends)."""
    return from_hello({"ops": [op.schema() for op in all_ops().values()],
                       "colorspaces": ["ACEScg", DEFAULT_COLORSPACE], "future_field": 1})


def by_name(specs: list[knobs.KnobSpec]) -> dict[str, knobs.KnobSpec]:
    return {s.name: s for s in specs}


def test_parameters_get_knobs_with_the_schema_defaults_ranges_and_help(info):
    specs = by_name(knobs.panel(info))
    strength = specs["colormatch__strength"]
    assert (strength.kind, strength.default, strength.min, strength.max) == ("float", 1.0, 0.0, 1.0)
    assert "(0 to 1)" in strength.tooltip and "match" in strength.tooltip
    steps = specs["harmonize__steps"]
    assert (steps.kind, steps.default, steps.min, steps.max) == ("int", 20, 1, 200)
    assert specs["harmonize__replace_background"].kind == "bool"
    # Same name, different defaults per op: one knob each.
    assert specs["colormatch__feather"].default == 2.0 and specs["harmonize__feather"].default == 3.0


def test_text_parameters_share_one_knob_and_prompts_are_multiline(info):
    specs = by_name(knobs.panel(info))
    assert specs["text__prompt"].kind == "text" and specs["text__negative_prompt"].kind == "text"
    assert specs["text__model"].kind == "str"
    assert not any(name.startswith("harmonize__prompt") for name in specs)


def test_fixed_knobs_come_first_then_parameters_then_the_farm_tab(info):
    names = [s.name for s in knobs.panel(info, project=(1, 50), environ={"CVGEN_SERVER": "tcp://farm:5555"})]
    assert names[:6] == ["cvgen", knobs.SERVER, knobs.REFRESH, knobs.SERVER_KEY, knobs.CLIENT_KEY, knobs.OP]
    assert names.index(knobs.RENDER) < names.index(knobs.STATUS) < names.index("params_divider")
    assert all("__" in n for n in names[names.index("params_divider") + 1:names.index(knobs.FARM_TAB)])
    assert names[names.index(knobs.FARM_TAB):] == [s.name for s in knobs.farm_knobs()]
    assert names[-1] == knobs.FARM_SUBMIT
    specs = by_name(knobs.panel(info, project=(1, 50), environ={"CVGEN_SERVER": "tcp://farm:5555"}))
    assert specs[knobs.SERVER].default == "tcp://farm:5555"
    assert (specs[knobs.FIRST].default, specs[knobs.LAST].default) == (1, 50)
    assert specs[knobs.OP].choices == ("colormatch", "harmonize", "restyle", "propagate", "smooth")
    assert specs[knobs.OP].default == "colormatch"
    assert specs[knobs.COLORSPACE].choices == ("ACEScg", DEFAULT_COLORSPACE)
    assert specs[knobs.COLORSPACE].default == DEFAULT_COLORSPACE
    assert ServerInfo.from_json(specs[knobs.OPS].default) == info


def test_key_knobs_are_empty_file_knobs_that_name_their_environment_variables(info):
    """A secret key belongs to the workstation: a new node stores no key path unless one is typed in."""
    specs = by_name(knobs.panel(info, environ={"CVGEN_SERVER_KEY": "/keys/server.key"}))
    server_key, client_key = specs[knobs.SERVER_KEY], specs[knobs.CLIENT_KEY]
    assert (server_key.kind, server_key.default, client_key.kind, client_key.default) == ("file", "", "file", "")
    assert "$CVGEN_SERVER_KEY" in server_key.tooltip and "server.key" in server_key.tooltip
    assert "$CVGEN_CLIENT_KEY" in client_key.tooltip and "NAME.key_secret" in client_key.tooltip


def test_default_server_without_the_environment_variable():
    assert knobs.default_address({}) == "tcp://127.0.0.1:5555"


def test_visibility_follows_the_op_and_the_frame_range(info):
    shown = knobs.visibility(info, "colormatch", "input")
    assert shown["colormatch__strength"] and not shown["harmonize__strength"]
    assert not shown["text__prompt"] and not shown[knobs.FIRST]
    shown = knobs.visibility(info, "harmonize", "custom")
    assert shown["text__prompt"] and shown["harmonize__tau"] and not shown["colormatch__temporal"]
    assert shown[knobs.FIRST] and shown[knobs.LAST]
    assert not shown[knobs.FARM_SHOW] and not shown[knobs.FARM_SPEC_ONLY]
    shown = knobs.visibility(info, "harmonize", "custom", "OpenCue")
    assert shown[knobs.FARM_SHOW] and shown[knobs.FARM_SHOT] and shown[knobs.FARM_SPEC_ONLY]


def test_a_node_without_a_server_has_no_ops_and_says_what_to_do():
    info = ServerInfo.from_json("")
    specs = by_name(knobs.panel(info))
    assert info.ops == () and specs[knobs.OP].choices == ()
    assert "Refresh ops" in specs[knobs.STATUS].default
    with pytest.raises(ProtocolError, match="offers no ops"):
        info.op("colormatch")


def test_unknown_parameter_types_and_fields_are_left_out_not_sent():
    info = from_hello({"ops": [{"name": "future", "params": [
        {"name": "curve", "type": "spline", "default": []},
        {"name": "mode", "type": "choice", "default": "a", "choices": ["a", "b"], "unit": "x"},
    ]}]})
    assert [p.name for p in info.op("future").params] == ["mode"]
    assert info.colorspaces == (DEFAULT_COLORSPACE,)
    with pytest.raises(ProtocolError, match="offers future"):
        info.op("colormatch")


@pytest.mark.parametrize("stored", ["{not json", "[1, 2]"])
def test_a_damaged_stored_op_list_says_to_refresh(stored):
    with pytest.raises(ProtocolError, match="Refresh ops"):
        ServerInfo.from_json(stored)
