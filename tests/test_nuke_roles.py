"""The cvgen node follows the ops' schemas (protocol 1.3 roles), tested below the Nuke adapter.

An op the plugin has never seen (`still`: a plate sequence, a Reference image, an optional
Guide sequence, an int with a range and a choice) gets its knobs, input labels and a job whose
`image` role is one file or one inline frame, and that job runs through the server's own intake
and runner with the op registered there. A 1.2 server's `hello` (no `roles`) still works.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from support import make_shot

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "nuke_plugin"))

from cvgen_nuke import inputs, jobbuild, knobs, paths, transfer  # noqa: E402
from cvgen_nuke.errors import SetupError  # noqa: E402
from cvgen_nuke.schema import ServerInfo, from_hello  # noqa: E402

from cvgen.protocol import Image, frame_path  # noqa: E402
from cvgen.protocol.schema import parse_op  # noqa: E402
from cvgen.server import ops  # noqa: E402
from cvgen.server.core.models import ModelCache, ModelRegistry  # noqa: E402
from cvgen.server.intake import Submission as ServerSubmission, admit  # noqa: E402
from cvgen.server.io.exr import read_exr, write_exr  # noqa: E402
from cvgen.server.jobs.runner import run_job  # noqa: E402
from cvgen.server.jobs.store import JobStore, output_name  # noqa: E402
from cvgen.server.ops.base import OpContext, OpSpec, Shot  # noqa: E402

#: The op as a 1.3 server's `hello` describes it.
STILL = {
    "name": "still", "summary": "adds a reference still's red to every plate frame",
    "inputs": ["plate", "ref"], "optional_inputs": ["guide"],
    "roles": [
        {"name": "plate", "label": "Plate", "kind": "sequence", "required": True, "channels": ["R", "G", "B"],
         "help": "the shot"},
        {"name": "ref", "label": "Reference", "kind": "image", "required": True, "channels": ["R", "G", "B"],
         "help": "one still for the whole shot"},
        {"name": "guide", "label": "Guide", "kind": "sequence", "required": False, "channels": [],
         "help": "where to look"},
    ],
    "params": [
        {"name": "passes", "type": "int", "default": 2, "help": "times the still is added", "min": 1, "max": 8},
        {"name": "blend", "type": "choice", "default": "add", "help": "how", "choices": ["add", "max"]},
    ],
}
#: A server offering the two compositing ops, as a real one describes them.
SERVER_OPS = [ops.get_op(name).schema() for name in ("colormatch", "harmonize")]
INFO = from_hello({"ops": [*SERVER_OPS, STILL]})
FRAMES = (1001, 1003)


def values(**changes: object) -> dict[str, object]:
    """Knob values of a fresh node with `still` selected, with a compositor's changes."""
    out = {s.name: s.default for s in knobs.panel(INFO) if s.kind in knobs.VALUE_KINDS}
    out.update({knobs.OP: "still", **changes})
    return out


# -- knobs and inputs --------------------------------------------------------------------------

def test_an_op_never_seen_gets_knobs_with_its_ranges_choices_and_a_frame_for_its_image():
    specs = {s.name: s for s in knobs.panel(INFO)}
    passes, blend, frame = specs["still__passes"], specs["still__blend"], specs["frame__ref"]
    assert (passes.kind, passes.default, passes.min, passes.max) == ("int", 2, 1, 8) and "(1 to 8)" in passes.tooltip
    assert (blend.kind, blend.default, blend.choices) == ("choice", "add", ("add", "max"))
    assert (frame.kind, frame.label, frame.default) == ("str", "Reference frame", "")
    assert "empty: the first frame of the range" in frame.tooltip
    shown = knobs.visibility(INFO, "still", "input")
    assert shown["still__passes"] and shown["frame__ref"] and not shown["colormatch__strength"]
    shown = knobs.visibility(INFO, "colormatch", "input")
    assert not shown["still__passes"] and not shown["frame__ref"]


def test_inputs_are_labelled_for_the_selected_op_and_unused_ones_say_so():
    roles = inputs.assign((), INFO)
    assert roles == ("plate", "fg", "matte", "ref", "guide")
    stored = next(s for s in knobs.panel(INFO) if s.name == knobs.INPUT_ROLES)
    assert (stored.kind, inputs.from_json(stored.default)) == ("hidden", roles)
    assert inputs.node_names(roles, INFO, "still", inputs.MAX_INPUTS) == [
        "Plate", "Foreground_unused", "Matte_unused", "Reference", "Guide", "input6"]
    assert inputs.node_names(roles, INFO, "colormatch", inputs.MAX_INPUTS) == [
        "Plate", "Foreground", "Matte", "Reference_unused", "Guide_unused", "input6"]
    # What is connected stays on its role whatever the op: still reads the plate and the reference.
    assert inputs.connected_roles(INFO.op("still"), roles, [True, True, False, True, False, False]) == ["plate", "ref"]
    assert inputs.write_channels(INFO.op("still"), "ref") == "rgb"
    assert inputs.write_channels(INFO.op("still"), "guide") == "all"
    assert inputs.write_channels(INFO.op("colormatch"), "matte") == "alpha"


def test_a_refresh_keeps_each_roles_input_and_a_node_too_small_says_so():
    before = inputs.assign((), from_hello({"ops": SERVER_OPS}))
    later = from_hello({"ops": [STILL, *SERVER_OPS]})  # a server that lists its new op first
    assert inputs.assign(before, later) == ("plate", "fg", "matte", "ref", "guide")
    # A node made before nodes stored their roles has four inputs: plate, fg, matte, depth.
    legacy = inputs.assign(inputs.from_json(""), INFO)
    assert inputs.connected_roles(INFO.op("colormatch"), legacy, [True] * 4) == ["plate", "fg", "matte"]
    with pytest.raises(SetupError, match="still's Reference input has no input on this node, whose 4 inputs carry "
                                         "Plate, Foreground, Matte, Depth: a new cvgen node has 6 inputs"):
        inputs.connected_roles(INFO.op("still"), legacy, [True] * 4)
    wide = from_hello({"ops": [{"name": "wide", "inputs": [f"in{i}" for i in range(7)]}]})
    with pytest.raises(SetupError, match="wide's In6 input has no input.*more than the 6 different inputs"):
        inputs.connected_roles(wide.op("wide"), inputs.assign((), wide), [True] * inputs.MAX_INPUTS)


# -- the job -----------------------------------------------------------------------------------

def test_the_image_role_is_one_file_at_the_chosen_frame_and_values_are_checked(tmp_path):
    plan = jobbuild.plan_render(values(), INFO, ["plate", "ref"], FRAMES, f"{tmp_path}/v001", "sh010")
    assert plan.job.inputs == {"plate": f"{tmp_path}/v001/inputs/plate.####.exr",
                               "ref": f"{tmp_path}/v001/inputs/ref.exr"}
    assert plan.image_frames == {"ref": 1001} and plan.job.params == {"passes": 2, "blend": "add"}
    chosen = jobbuild.plan_render(values(frame__ref=" 1010 "), INFO, ["plate", "ref", "guide"], FRAMES,
                                  str(tmp_path), "n")
    assert chosen.image_frames == {"ref": 1010} and chosen.job.inputs["guide"].endswith("inputs/guide.####.exr")
    for changes, words in [({"still__passes": 9}, "still passes must be between 1 and 8; it is 9"),
                           ({"still__passes": 2.5}, "still passes must be a whole number"),
                           ({"still__blend": "multiply"}, "still blend must be one of add, max"),
                           ({"frame__ref": "first"}, "the Reference frame must be a frame number, or empty")]:
        with pytest.raises(SetupError, match=words):
            jobbuild.plan_render(values(**changes), INFO, ["plate", "ref"], FRAMES, str(tmp_path), "n")
    with pytest.raises(SetupError, match="still needs the Plate and Reference inputs; connect Reference"):
        jobbuild.plan_render(values(), INFO, ["plate", "guide"], FRAMES, str(tmp_path), "n")


def test_an_input_of_a_kind_the_plugin_does_not_know_asks_for_an_update(tmp_path):
    later = {**STILL, "roles": [*STILL["roles"], {"name": "cloud", "label": "Point cloud", "kind": "points"}]}
    info = from_hello({"ops": [later]})
    with pytest.raises(SetupError, match=r"still's Point cloud input is of a kind this cvgen plugin does not know "
                                         r"\('points'\): update the plugin to use still"):
        jobbuild.plan_render(values(), info, ["plate", "ref", "cloud"], FRAMES, str(tmp_path), "n")


def _run_still(shot: Shot, params: dict[str, Any], ctx: OpContext) -> Iterator[tuple[int, Image]]:
    for frame in ctx.todo:
        plate, ref = shot.read("plate", frame), shot.read("ref", frame)
        ctx.step(frame, 1, 1)
        yield frame, Image(plate.stack(("R", "G", "B"), "float32") + params["passes"] * ref.channel("R")[0, 0],
                           ("R", "G", "B"))


@pytest.fixture
def server_still(monkeypatch: pytest.MonkeyPatch) -> None:
    """The server with `still` registered, from the very schema the node was given."""
    schema = parse_op(STILL)
    spec = OpSpec(schema.name, schema.summary, schema.params, schema.role_schemas, _run_still)
    monkeypatch.setattr(ops, "_OPS", {**ops.all_ops(), spec.name: spec})


def _write_like_nuke(plan: jobbuild.RenderPlan, shot: dict[str, str], refs: str) -> None:
    """The node's Write nodes: the plate for the range, the reference at its frame as one file."""
    paths.make_folders(plan.job.inputs.values())
    for f in plan.job.frame_numbers:
        write_exr(frame_path(plan.job.inputs["plate"], f), read_exr(frame_path(shot["plate"], f)), dtype="half")
    write_exr(plan.job.inputs["ref"], read_exr(frame_path(refs, plan.image_frames["ref"])), dtype="half")


def test_the_server_runs_the_nodes_job_by_paths_and_inline(tmp_path, server_still):
    shot = make_shot(tmp_path / "shot", range(FRAMES[0], FRAMES[1] + 1))
    refs = str(tmp_path / "shot" / "ref.####.exr")
    for f in range(1001, 1005):  # a reference clip whose red says which frame it is
        write_exr(frame_path(refs, f), Image(np.full((8, 8, 3), (f - 1000) / 8, np.float16), ("R", "G", "B")))
    plan = jobbuild.plan_render(values(frame__ref="1004", still__passes=1), INFO, ["plate", "ref"], FRAMES,
                                f"{tmp_path}/out/v001", "sh010")
    _write_like_nuke(plan, shot, refs)
    assert run_job(plan.job, Path(plan.job.output or "")) == [1001, 1002, 1003]
    for f in plan.job.frame_numbers:
        result = read_exr(Path(plan.job.output or "") / output_name(plan.job, f)).channel("R")
        plate = read_exr(frame_path(shot["plate"], f)).channel("R").astype(np.float32)
        np.testing.assert_allclose(result, plate + 0.5, rtol=1e-3)  # frame 1004's red
    # A server elsewhere: the reference travels as one inline frame, the plate as every frame.
    remote = jobbuild.plan_render(values(frame__ref="1004", still__passes=1, **{knobs.SERVER: "tcp://10.1.2.3:5555"}),
                                  INFO, ["plate", "ref"], FRAMES, f"{tmp_path}/out/v001", "sh010")
    sub = jobbuild.submission(remote, {"jobs_dir": "/nowhere"})
    inline = transfer.load_inline(sub.inline_inputs, sub.job.frame_numbers, sub.image_frames)
    assert sorted(inline["ref"]) == [1004] and sorted(inline["plate"]) == [1001, 1002, 1003]
    admission = admit(JobStore(tmp_path / "jobs"), ServerSubmission(b"", None, sub.job, inline, False))  # type: ignore[arg-type]
    assert admission.record is not None, admission.message
    assert run_job(admission.record.spec, tmp_path / "inline") == [1001, 1002, 1003]
    assert np.allclose(read_exr(tmp_path / "inline" / output_name(sub.job, 1002)).channel("R"),
                       read_exr(Path(plan.job.output or "") / output_name(plan.job, 1002)).channel("R"))


#: restyle as a real server describes it: a plate sequence and a Reference image among its roles.
RESTYLE = from_hello({"ops": [ops.get_op("restyle").schema()]})


def test_the_nodes_restyle_job_sends_its_reference_as_one_frame_and_the_server_renders_it(tmp_path):
    """The node on a remote server: the plate travels as every frame, the Reference (a frame of the
    foreground clip) as the one frame chosen; the server's intake stores it and its runner restyles."""
    shot = make_shot(tmp_path / "shot", range(FRAMES[0], FRAMES[1] + 1))
    v = {s.name: s.default for s in knobs.panel(RESTYLE) if s.kind in knobs.VALUE_KINDS}
    v.update({knobs.OP: "restyle", knobs.SERVER: "tcp://10.1.2.3:5555", "frame__reference": "1002",
              "text__depth_model": "tiny-depth", "restyle__steps": 2, "text__prompt": "a watercolour"})
    plan = jobbuild.plan_render(v, RESTYLE, ["plate", "reference"], FRAMES, f"{tmp_path}/out/v001", "sh010")
    assert plan.image_frames == {"reference": 1002}
    assert plan.job.inputs["reference"] == f"{tmp_path}/out/v001/inputs/reference.exr"
    assert inputs.write_channels(RESTYLE.op("restyle"), "reference") == "rgb"
    paths.make_folders(plan.job.inputs.values())
    for f in plan.job.frame_numbers:
        write_exr(frame_path(plan.job.inputs["plate"], f), read_exr(frame_path(shot["plate"], f)), dtype="half")
    style = read_exr(frame_path(shot["fg"], 1002))
    write_exr(plan.job.inputs["reference"], Image(style.stack(("R", "G", "B")), ("R", "G", "B")), dtype="half")

    sub = jobbuild.submission(plan, {"jobs_dir": "/nowhere"})
    inline = transfer.load_inline(sub.inline_inputs, sub.job.frame_numbers, sub.image_frames)
    assert sorted(inline["reference"]) == [1002] and sorted(inline["plate"]) == [1001, 1002, 1003]
    admission = admit(JobStore(tmp_path / "jobs"), ServerSubmission(b"", None, sub.job, inline, False))  # type: ignore[arg-type]
    assert admission.record is not None, admission.message
    spec = admission.record.spec
    stored = read_exr(spec.inputs["reference"])
    assert np.array_equal(stored.stack(("R", "G", "B")), style.stack(("R", "G", "B"))), "the one frame, as sent"
    assert [spec.params[k] for k in ("depth_model", "steps", "prompt")] == ["tiny-depth", 2, "a watercolour"]

    out = tmp_path / "restyled"
    assert run_job(spec, out, models=ModelCache(ModelRegistry.load())) == [1001, 1002, 1003]
    for f in spec.frame_numbers:
        result, plate = read_exr(out / output_name(spec, f)), read_exr(frame_path(shot["plate"], f))
        assert result.attributes["cvgen:op"] == "restyle" and result.pixels.shape[:2] == plate.pixels.shape[:2]
        rgb = result.stack(("R", "G", "B"))
        assert np.isfinite(rgb).all() and not np.array_equal(rgb, plate.stack(("R", "G", "B")))


def test_a_1_2_server_without_roles_still_gets_labelled_sequence_inputs(tmp_path):
    old = from_hello({"ops": [{"name": "colormatch", "inputs": ["plate", "fg"], "optional_inputs": ["matte"],
                               "params": [{"name": "strength", "type": "float", "default": 1.0, "min": 0, "max": 1}]}]})
    roles = inputs.assign((), old)
    assert inputs.node_names(roles, old, "colormatch", 4) == ["Plate", "Foreground", "Matte", "input4"]
    assert [inputs.write_channels(old.op("colormatch"), r) for r in roles] == ["rgb", "rgba", "alpha"]
    v = {s.name: s.default for s in knobs.panel(old) if s.kind in knobs.VALUE_KINDS}
    plan = jobbuild.plan_render(v, old, ["plate", "fg"], FRAMES, str(tmp_path), "n")
    assert plan.job.inputs == {"plate": f"{tmp_path}/inputs/plate.####.exr", "fg": f"{tmp_path}/inputs/fg.####.exr"}
    assert plan.image_frames == {} and plan.job.params == {"strength": 1.0}
    assert ServerInfo.from_json(old.to_json()) == old
