"""From knob values to a job without Nuke: frame ranges, paths, parameters, paths or pixels."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "nuke_plugin"))

from cvgen_nuke import frames, jobbuild, knobs, paths, transfer  # noqa: E402
from cvgen_nuke.errors import SetupError  # noqa: E402
from cvgen_nuke.schema import from_hello  # noqa: E402

from cvgen.protocol import CvgenError, Image, frame_path  # noqa: E402
from cvgen.server.io.exr import write_exr  # noqa: E402
from cvgen.server.ops import all_ops  # noqa: E402

INFO = from_hello({"ops": [op.schema() for op in all_ops().values()]})
HELLO = {"limits": {"max_frames_per_job": 100, "max_buffer_bytes": 1000, "max_message_bytes": 2500},
         "jobs_dir": "/nowhere/cvgen-jobs"}


def values(**changes: object) -> dict[str, object]:
    """Knob values of a fresh node, as the adapter reads them, with a compositor's changes."""
    out = {s.name: s.default for s in knobs.panel(INFO) if s.kind in knobs.VALUE_KINDS}
    out.update(changes)
    return out


# -- frame ranges ------------------------------------------------------------------------------

def test_frame_range_follows_the_plate_by_default_or_the_project_or_custom_values():
    assert frames.resolve("input", (1, 2), (1001, 1048), (1, 100)) == (1001, 1048)
    assert frames.resolve("project", (1, 2), (1001, 1048), (1, 100)) == (1, 100)
    assert frames.resolve("custom", (1010, 1012), (1001, 1048), (1, 100)) == (1010, 1012)


@pytest.mark.parametrize("mode, custom, plate, words", [
    ("input", (1, 2), None, "no plate is connected"),
    ("custom", (1012, 1010), (1, 2), "1012-1010 is empty"),
    ("sometimes", (1, 2), (1, 2), "not one of input, project, custom"),
])
def test_bad_frame_ranges_are_explained(mode, custom, plate, words):
    with pytest.raises(SetupError, match=words):
        frames.resolve(mode, custom, plate, (1, 100))


def test_a_range_longer_than_the_server_takes_is_refused_before_work():
    frames.check_count((1, 100), 100)
    frames.check_count((1, 5000), None)
    with pytest.raises(SetupError, match="101 frames is more than this server takes in one job"):
        frames.check_count((1, 101), 100)


# -- paths -------------------------------------------------------------------------------------

def test_output_folder_from_the_knob_or_beside_the_saved_script():
    assert paths.output_folder("/shots/sh010/cvgen/", "", "cvgen1") == "/shots/sh010/cvgen"
    assert paths.output_folder("", "/shots/sh010/comp/sh010_v003.nk", "cvgen2") == "/shots/sh010/comp/cvgen/cvgen2"
    assert paths.output_folder("renders/cv", "/shots/sh010/comp/a.nk", "n") == "/shots/sh010/comp/renders/cv"
    assert paths.output_folder("~/cv", "", "n") == os.path.expanduser("~/cv").replace("\\", "/")


@pytest.mark.parametrize("knob, words", [("", "save the script first"), ("renders", "relative and the script is not saved")])
def test_output_folder_of_an_unsaved_script_needs_a_full_path(knob, words):
    with pytest.raises(SetupError, match=words):
        paths.output_folder(knob, "", "cvgen1")


def test_every_render_gets_a_new_version_folder(tmp_path):
    assert paths.next_version(str(tmp_path / "not-yet")) == f"{tmp_path}/not-yet/v001"
    for name in ("v001", "v007", "v12", "version9", "v008.txt"):
        (tmp_path / name).mkdir()
    assert paths.next_version(str(tmp_path)) == f"{tmp_path}/v008"


def test_input_and_result_sequences_number_frames_as_the_server_does(tmp_path):
    version = f"{tmp_path}/v002"
    assert frame_path(paths.input_sequence(version, "fg"), 1001) == f"{version}/inputs/fg.1001.exr"
    assert frame_path(paths.result_sequence(version, "cvgen1"), 7) == f"{version}/cvgen1.0007.exr"
    paths.make_folders([paths.input_sequence(version, "fg")])
    assert (tmp_path / "v002" / "inputs").is_dir()


# -- the job -----------------------------------------------------------------------------------

def test_plan_from_knob_values_uses_the_ops_inputs_and_typed_parameters(tmp_path):
    v = values(**{knobs.SEED: 7, "colormatch__strength": 0.5, "colormatch__feather": 0})
    plan = jobbuild.plan_render(v, INFO, ["plate", "fg", "matte", "depth"], (1001, 1003), f"{tmp_path}/v001", "cvgen1")
    job = plan.job
    assert (job.op, job.frames, job.seed, job.name, job.output) == ("colormatch", (1001, 1003), 7, "cvgen1", f"{tmp_path}/v001")
    assert sorted(job.inputs) == ["fg", "matte", "plate"]  # colormatch takes no depth
    assert job.inputs["matte"] == f"{tmp_path}/v001/inputs/matte.####.exr"
    assert job.params == {"strength": 0.5, "contrast": 0.25, "radius": 0.01, "feather": 0.0, "temporal": 3.0}
    assert isinstance(job.params["feather"], float)
    assert plan.results == f"{tmp_path}/v001/cvgen1.####.exr" and plan.address == "tcp://127.0.0.1:5555"


def test_harmonize_takes_the_shared_prompt_and_whole_step_counts(tmp_path):
    v = values(**{knobs.OP: "harmonize", "text__prompt": "dusk, warm rim light", "harmonize__steps": 12.0})
    params = jobbuild.plan_render(v, INFO, ["plate", "fg"], (1, 1), str(tmp_path), "n").job.params
    assert params["prompt"] == "dusk, warm rim light" and params["steps"] == 12 and isinstance(params["steps"], int)
    assert params["replace_background"] is True


@pytest.mark.parametrize("changes, words", [
    ({"colormatch__strength": 1.5}, "colormatch strength must be between 0 and 1; it is 1.5"),
    ({"colormatch__radius": 0.0}, "colormatch radius must be between 0.002 and 1; it is 0"),
    ({"colormatch__feather": float("nan")}, "colormatch feather must be a number"),
    ({knobs.OP: "harmonize", "harmonize__steps": 2.5}, "harmonize steps must be a whole number"),
    ({knobs.OP: "relight"}, "op 'relight' is not offered by this server; it offers colormatch, harmonize"),
    ({knobs.SERVER: "  "}, "the server knob is empty"),
])
def test_bad_knob_values_are_refused_with_the_knob_named(tmp_path, changes, words):
    with pytest.raises(CvgenError, match=words):
        jobbuild.plan_render(values(**changes), INFO, ["plate", "fg"], (1, 1), str(tmp_path), "n")


def test_missing_inputs_are_named(tmp_path):
    with pytest.raises(SetupError, match="colormatch needs the Plate and Foreground inputs; connect Foreground"):
        jobbuild.plan_render(values(), INFO, ["plate", "matte"], (1, 1), str(tmp_path), "n")


def test_a_server_on_this_machine_reads_paths_and_results_stay_where_it_writes_them(tmp_path):
    plan = jobbuild.plan_render(values(), INFO, ["plate", "fg"], (1, 3), str(tmp_path), "n")
    sub = jobbuild.submission(plan, HELLO)
    assert sub.job == plan.job and sub.inline_inputs == {} and sub.deliver_to is None
    assert sub.limits["max_frames_per_job"] == 100


def test_a_remote_server_gets_pixels_and_sends_pixels_back(tmp_path):
    plan = jobbuild.plan_render(values(**{knobs.SERVER: "tcp://10.1.2.3:5555"}), INFO, ["plate", "fg"], (1, 3),
                                str(tmp_path), "n")
    sub = jobbuild.submission(plan, HELLO)
    assert sub.job.inputs == {} and sub.job.output is None and sub.job.params == plan.job.params
    assert sub.inline_inputs == plan.job.inputs and sub.deliver_to == plan.results


def test_key_files_come_from_the_knobs_else_the_environment_and_go_with_the_job(tmp_path):
    environ = {"CVGEN_SERVER_KEY": "/studio/server.key", "CVGEN_CLIENT_KEY": "/home/me/me.key_secret"}
    assert jobbuild.key_files(values(), {}) == jobbuild.NO_KEYS
    assert jobbuild.key_files(values(), environ) == jobbuild.KeyFiles("/studio/server.key", "/home/me/me.key_secret")
    typed = values(**{knobs.SERVER_KEY: " /other/server.key ", knobs.CLIENT_KEY: ""})
    assert jobbuild.key_files(typed, environ) == jobbuild.KeyFiles("/other/server.key", "/home/me/me.key_secret")
    plan = jobbuild.plan_render(values(**{knobs.SERVER: "tcp://10.1.2.3:5555"}), INFO, ["plate", "fg"], (1, 3),
                                str(tmp_path), "n", environ)
    assert plan.keys == jobbuild.KeyFiles("/studio/server.key", "/home/me/me.key_secret")
    assert jobbuild.submission(plan, HELLO).keys == plan.keys


@pytest.mark.parametrize("changes, environ, words", [
    ({knobs.SERVER_KEY: "/studio/server.key"}, {}, r"the server key is set but no client key \(the client key "
                                                   r"knob, or \$CVGEN_CLIENT_KEY\)"),
    ({}, {"CVGEN_CLIENT_KEY": "/home/me/me.key_secret"}, r"the client key is set but no server key \(the server key "
                                                         r"knob, or \$CVGEN_SERVER_KEY\)"),
])
def test_one_key_file_without_the_other_is_refused_naming_the_missing_one(tmp_path, changes, environ, words):
    with pytest.raises(SetupError, match=words):
        jobbuild.plan_render(values(**changes), INFO, ["plate", "fg"], (1, 1), str(tmp_path), "n", environ)


def test_submission_checks_the_servers_frame_limit(tmp_path):
    plan = jobbuild.plan_render(values(), INFO, ["plate", "fg"], (1, 101), str(tmp_path), "n")
    with pytest.raises(SetupError, match="101 frames"):
        jobbuild.submission(plan, HELLO)


# -- paths or pixels ---------------------------------------------------------------------------

def test_auto_picks_paths_when_the_servers_jobs_folder_is_visible_here(tmp_path):
    remote = "tcp://gpu-box:5555"
    assert transfer.choose("auto", remote, str(tmp_path)) == "paths"
    assert transfer.choose("auto", remote, str(tmp_path / "absent")) == "inline"
    assert transfer.choose("auto", remote, "cvgen-jobs", is_dir=lambda p: True) == "inline"  # relative: unknowable
    assert transfer.choose("inline", "tcp://127.0.0.1:1", str(tmp_path)) == "inline"
    assert transfer.choose("paths", remote, "") == "paths"
    with pytest.raises(SetupError, match="not one of auto, paths, inline"):
        transfer.choose("carrier pigeon", remote, "")


def test_inline_frames_are_read_from_hash_and_printf_sequences(tmp_path):
    for f in (1, 2):
        write_exr(tmp_path / f"fg.{f:04d}.exr", Image(np.full((4, 6, 4), f, np.float16), ("R", "G", "B", "A")))
    loaded = transfer.load_inline({"fg": str(tmp_path / "fg.####.exr"), "also": str(tmp_path / "fg.%04d.exr")},
                                  range(1, 3))
    assert sorted(loaded) == ["also", "fg"] and sorted(loaded["fg"]) == [1, 2]
    assert loaded["fg"][2].pixels.dtype == np.float16 and float(loaded["fg"][2].channel("G")[0, 0]) == 2.0
