"""Image input roles (protocol 1.3): one file for the whole shot, read for every frame of a job,
run through the real job runner with a test op registered in the op registry."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from cvgen.protocol import ProtocolError
from cvgen.protocol.images import Image
from cvgen.protocol.jobs import JobSpec
from cvgen.protocol.schema import parse_op
from cvgen.server import ops
from cvgen.server.errors import InputError
from cvgen.server.intake import Submission, admit
from cvgen.server.io.exr import check_exr_header, read_exr, write_exr
from cvgen.server.jobs.runner import check_job, run_job
from cvgen.server.jobs import shot as shot_module
from cvgen.server.jobs.shot import FileShot
from cvgen.server.jobs.store import JobStore, output_name
from cvgen.server.ops.base import OpContext, OpSpec, Role, Shot
from support import make_shot

FRAMES = (1001, 1003)
REF_VALUE = 0.25


def _run(shot: Shot, params: dict[str, Any], ctx: OpContext) -> Iterator[tuple[int, Image]]:
    for frame in ctx.todo:
        plate = shot.read("plate", frame)
        ref = shot.read("ref", frame)
        READS.append((frame, float(ref.channel("R")[0, 0])))
        ctx.step(frame, 1, 1)
        rgb = plate.pixels[..., :3].astype(np.float32) + ref.channel("R")[0, 0].astype(np.float32)
        yield frame, Image(rgb, ("R", "G", "B"))


READS: list[tuple[int, float]] = []
STILL = OpSpec(
    name="still",
    summary="adds a reference still's red to every plate frame (a test op)",
    params=(),
    roles=(Role("plate", "Plate", "sequence", True, ("R", "G", "B"), "the shot"),
           Role("ref", "Reference", "image", True, ("R",), "one still for the whole shot")),
    run=_run,
)


@pytest.fixture(autouse=True)
def still_op(monkeypatch: pytest.MonkeyPatch) -> OpSpec:
    monkeypatch.setattr(ops, "_OPS", {**ops.all_ops(), STILL.name: STILL})
    READS.clear()
    return STILL


def _shot(tmp_path: Path) -> dict[str, str]:
    shot = make_shot(tmp_path / "in", range(FRAMES[0], FRAMES[1] + 1))
    ref = tmp_path / "in" / "ref.exr"
    write_exr(ref, Image(np.full((8, 8, 3), REF_VALUE, np.float32), ("R", "G", "B")))
    return {"plate": shot["plate"], "ref": str(ref)}


def test_the_op_declares_its_image_role_and_hello_describes_it() -> None:
    assert (STILL.inputs, STILL.optional_inputs, STILL.image_roles) == (("plate", "ref"), (), ("ref",))
    schema = STILL.schema()
    assert schema["inputs"] == ["plate", "ref"] and schema["roles"][1]["kind"] == "image"
    assert parse_op(schema).role_schemas == STILL.roles


def test_an_image_role_is_one_file_read_for_every_frame(tmp_path: Path) -> None:
    spec = JobSpec("still", FRAMES, _shot(tmp_path))
    written = run_job(spec, tmp_path / "out")
    assert written == [1001, 1002, 1003]
    assert READS == [(f, REF_VALUE) for f in written]
    for frame in written:
        out = read_exr(tmp_path / "out" / output_name(spec, frame))
        plate = read_exr(spec.inputs["plate"].replace("####", str(frame)))
        np.testing.assert_allclose(out.channel("R"), plate.channel("R").astype(np.float32) + REF_VALUE, rtol=1e-6)


def test_a_frame_sequence_path_for_an_image_role_is_refused_naming_the_role(tmp_path: Path) -> None:
    inputs = {**_shot(tmp_path), "ref": str(tmp_path / "in" / "ref.####.exr")}
    for ref in (inputs["ref"], str(tmp_path / "in" / "ref.%04d.exr")):
        spec = JobSpec("still", FRAMES, {**inputs, "ref": ref})
        with pytest.raises(ProtocolError, match="input ref is an image: it takes one file for the whole shot"):
            check_job(spec)
        with pytest.raises(ProtocolError, match="input ref is an image"):
            run_job(spec, tmp_path / "out")
    assert READS == [] and not (tmp_path / "out").exists()


def test_a_sequence_role_without_a_placeholder_keeps_its_error(tmp_path: Path) -> None:
    inputs = _shot(tmp_path)
    spec = JobSpec("still", FRAMES, {**inputs, "plate": inputs["plate"].replace("####", "1001")})
    with pytest.raises(ProtocolError, match="has no frame number placeholder"):
        run_job(spec, tmp_path / "out")


def test_a_missing_image_file_is_refused_before_work_naming_the_path(tmp_path: Path) -> None:
    missing = str(tmp_path / "in" / "gone.exr")
    spec = JobSpec("still", FRAMES, {**_shot(tmp_path), "ref": missing})
    with pytest.raises(InputError, match=f"the ref image is missing: {missing} does not exist"):
        run_job(spec, tmp_path / "out")
    assert READS == [] and not list((tmp_path / "out").glob("*.exr"))
    # At submit, too: the intake looks for it once, not once a frame.
    admission = admit(JobStore(tmp_path / "jobs"), Submission(b"", None, spec, {}, False))  # type: ignore[arg-type]
    assert admission.record is None and admission.code == "bad_request" and missing in admission.message


def test_an_image_files_header_is_checked_once_for_the_shot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inputs = _shot(tmp_path)
    opened: list[str] = []

    def header(path: str, fd: int | None, part: str | None) -> Any:
        opened.append(path)
        return check_exr_header(path, fd, part)

    monkeypatch.setattr(shot_module, "check_exr_header", header)
    seen: list[dict[str, tuple[str, ...]]] = []
    shot = FileShot(inputs, range(1001, 1004), image_roles=("ref",))
    shot.check_complete()
    shot.check_headers(seen.append)
    assert opened.count(inputs["ref"]) == 1 and len(opened) == 4  # the still once, the plate every frame
    assert len(seen) == 3 and all(sorted(c["ref"]) == ["B", "G", "R"] for c in seen)
    assert shot.path("ref", 1002) == inputs["ref"]


def test_an_inline_image_role_is_stored_as_one_file_and_read_for_every_frame(tmp_path: Path) -> None:
    inputs = _shot(tmp_path)
    still = Image(np.full((8, 8, 3), 0.5, np.float32), ("R", "G", "B"))
    spec = JobSpec("still", FRAMES, {"plate": inputs["plate"]}, name="inl")
    admission = admit(JobStore(tmp_path / "jobs"), Submission(b"", None, spec, {"ref": {FRAMES[0]: still}}, False))  # type: ignore[arg-type]
    assert admission.record is not None, admission.message
    stored = admission.record.spec.inputs["ref"]
    assert stored.endswith("inputs/ref.exr") and Path(stored).is_file()
    run_job(admission.record.spec, tmp_path / "out")
    assert READS == [(f, 0.5) for f in range(FRAMES[0], FRAMES[1] + 1)]
