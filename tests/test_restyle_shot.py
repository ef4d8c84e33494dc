"""restyle through real files and `run_job` on the built-in tiny models: depth inputs and their
scale, host channel layouts and sky, the missing-depth error, mattes, cancel, farm chunks and
warm-up, frame sizes, and `cvgen render`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cvgen.protocol import JobSpec
from cvgen.protocol.farm import write_job_file
from cvgen.protocol.images import Image
from cvgen.server.core.highlights import ModelColor
from cvgen.server.core.latents import pad_to_multiple
from cvgen.server.core.models import ModelCache, ModelRegistry
from cvgen.server.errors import Cancelled, InputError
from cvgen.server.io.exr import read_exr, write_exr
from cvgen.server.jobs.runner import run_job
from cvgen.server.jobs.shot import FileShot
from cvgen.server.ops.base import OpContext
from cvgen.server.ops.restyle import OP, control_image, shot_depth
from cvgen.server.ops.structure import STATS_SIZE, ShotDepth

FAST = {"steps": 2, "prompt": "a stone statue"}
SIZE = (32, 48)
#: Where the matte is solid; everything else is 0.
MATTE = (slice(8, 24), slice(12, 36))


@pytest.fixture(scope="module")
def models() -> ModelCache:
    return ModelCache(ModelRegistry.load())


def distances(frame: int, size: tuple[int, int] = SIZE) -> np.ndarray:
    """A scene's Z pass that moves 3 pixels a frame and recedes 0.5 a frame: each frame alone spans
    a different range, so only statistics over the whole shot normalise every chunk alike."""
    h, w = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    return 2.0 + 3.0 * ((x + 3 * frame) % w) / w + y / h + 0.5 * frame


def depth_image(z: np.ndarray, layout: str) -> Image:
    """`z` as a host writes its depth: Blender's `V`, Nuke's RGBA + `depth.Z`, a plain `Z`, or RGB only."""
    if layout in ("V", "Z"):
        return Image(z[..., None].astype(np.float32), (layout,))
    grey = np.repeat((0.1 * z)[..., None], 3, axis=-1)
    if layout == "depth.Z":
        return Image(np.dstack([grey, np.ones_like(z), z]).astype(np.float32), ("R", "G", "B", "A", "depth.Z"))
    return Image(grey.astype(np.float32), ("R", "G", "B"))


def write_shot(folder: Path, count: int, size: tuple[int, int] = SIZE, layout: str | None = "V", scale: float = 1.0,
               inverse: bool = False, matte: bool = False, sky: bool = False) -> dict[str, str]:
    """A shifting-gradient half plate (HDR 40.0, NaN and Inf in its top-left corner) and its depth:
    distances times `scale`, or their inverse; `sky` puts 0, inf and NaN distances in; `matte` adds
    a rectangle matte that leaves the corner out. `layout` None: no depth input."""
    h, w = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    inputs = {"plate": str(folder / "plate.####.exr")}
    for f in range(1, count + 1):
        g = ((x + 3 * f) % w) / w
        plate = np.dstack([0.05 + 0.8 * g, 0.6 - 0.5 * g, 0.2 + 0.3 * y / h, np.ones_like(g)])
        plate[0, 0, 0], plate[0, 1, 0], plate[0, 2, 1] = 40.0, np.nan, np.inf
        write_exr(folder / f"plate.{f:04d}.exr", Image(plate.astype(np.float16), ("R", "G", "B", "A")))
        if layout is not None:
            z = distances(f, size) * scale
            if sky:
                z[-4:, :8], z[-4:, 8:16], z[-4:, 16:24] = 0.0, np.inf, np.nan
            write_exr(folder / f"depth.{f:04d}.exr", depth_image(1.0 / z if inverse else z, layout))
            inputs["depth"] = str(folder / "depth.####.exr")
        if matte:
            alpha = np.zeros((h, w, 1), np.float32)
            alpha[MATTE] = 1.0
            write_exr(folder / f"matte.{f:04d}.exr", Image(alpha, ("A",)))
            inputs["matte"] = str(folder / "matte.####.exr")
    return inputs


def render(inputs: dict[str, str], out: Path, models: ModelCache, count: int, frames: range | None = None,
           warmup: int | None = None, name: str = "r", **overrides: object) -> dict[int, Image]:
    """Run the restyle job of shot frames 1..count (or its chunk `frames`) and read what it wrote."""
    spec = JobSpec("restyle", (1, count), inputs, params={**FAST, **overrides}, name=name, seed=11, job_id=name)
    run_job(spec, out, models=models, frames=frames, warmup=warmup)
    return {f: read_exr(p) for f in range(1, count + 1) if (p := out / f"{name}.{f:04d}.exr").exists()}


def bits(image: Image) -> np.ndarray:
    return image.pixels.view(np.uint16)


def same(a: dict[int, Image], b: dict[int, Image]) -> bool:
    """Whether two renders wrote the same frames, bit for bit (NaN included)."""
    return a.keys() == b.keys() and all(np.array_equal(bits(a[f]), bits(b[f])) for f in a)


# 1. Depth: scale, chunks, distance against inverse ---------------------------------------------


@pytest.mark.parametrize("inverse", [False, True])
def test_depth_in_other_units_gives_the_same_result(models, tmp_path, inverse):
    """The depth's unit does not matter: only the shot-wide normalised depth reaches the model. A
    binary scale (x4) is exact in floating point, so the frames are equal bit for bit; x100 (metres
    to centimetres) rounds the inverse depth by an ulp, which moves a result pixel by one half-float
    step at most."""
    kind = "inverse" if inverse else "distance"
    metres = render(write_shot(tmp_path / "m", 1, inverse=inverse), tmp_path / "mo", models, 1, depth_kind=kind)
    quarters = render(write_shot(tmp_path / "q", 1, scale=4.0, inverse=inverse), tmp_path / "qo", models, 1,
                      depth_kind=kind)
    centimetres = render(write_shot(tmp_path / "cm", 1, scale=100.0, inverse=inverse), tmp_path / "cmo", models, 1,
                         depth_kind=kind)
    assert same(metres, quarters)
    for f, image in metres.items():
        steps = np.abs(bits(image).astype(np.int32) - bits(centimetres[f]).astype(np.int32))
        assert steps.max() <= 1


def conditioning(inputs: dict[str, str], count: int, kind: str) -> list[torch.Tensor]:
    """Each frame's ControlNet conditioning image, as restyle builds it from the depth input."""
    params = OP.resolve_params({**FAST, "depth_kind": kind})
    shot = FileShot(inputs, range(1, count + 1))
    depth = shot_depth(shot, params, OpContext(todo=list(shot.frames), colorspace="ACEScg"),
                       ModelColor("ACEScg", params["highlights"]))
    padding = pad_to_multiple(torch.zeros((1, 3, *SIZE)), 8)[1]
    return [control_image(depth.normalised(f), params, padding, "cpu", torch.float32) for f in shot.frames]


def test_distance_and_inverse_of_one_scene_give_the_same_conditioning(tmp_path):
    distance = conditioning(write_shot(tmp_path / "z", 3), 3, "distance")
    inverse = conditioning(write_shot(tmp_path / "inv", 3, inverse=True), 3, "inverse")
    assert 0.95 < max(float(a.max()) for a in distance) and min(float(a.min()) for a in distance) < 0.05
    for a, b in zip(distance, inverse):
        assert a.shape == (1, 3, *SIZE) and torch.allclose(a, b, rtol=0, atol=1e-6)


# 2. Depth channels and sky ------------------------------------------------------------------------


def test_blender_nuke_and_plain_z_depth_give_the_same_result_and_sky_gives_no_nan(models, tmp_path):
    results = {layout: render(write_shot(tmp_path / layout, 2, layout=layout, sky=True), tmp_path / f"o-{layout}",
                              models, 2) for layout in ("V", "depth.Z", "Z")}
    assert same(results["V"], results["depth.Z"]) and same(results["V"], results["Z"])
    for image in results["V"].values():
        assert np.isfinite(image.pixels).all()


def test_a_depth_with_only_colour_channels_is_refused_naming_them(models, tmp_path):
    with pytest.raises(InputError, match="none of the channels Z, depth.Z, V .*R, G, B"):
        OP.check_channels({"plate": ("R", "G", "B", "A"), "depth": ("R", "G", "B")}, {"plate", "depth"})
    with pytest.raises(InputError, match="none of the channels Z, depth.Z, V .*R, G, B"):
        render(write_shot(tmp_path / "rgb", 2, layout="RGB"), tmp_path / "o", models, 2)
    assert not any((tmp_path / "o").iterdir())


# 3. No depth ---------------------------------------------------------------------------------------


def test_without_depth_or_a_depth_model_the_job_says_what_to_give(tmp_path, no_user_models):
    models = ModelCache(ModelRegistry.load())
    assert models.registry.source is None
    inputs = write_shot(tmp_path / "shot", 2, layout=None)
    with pytest.raises(InputError, match="give a depth input .* or configure a depth model"):
        render(inputs, tmp_path / "none", models, 2)
    assert not any((tmp_path / "none").iterdir())
    frames = render(inputs, tmp_path / "tiny", models, 2, depth_model="tiny-depth")
    assert sorted(frames) == [1, 2] and all(np.isfinite(f.pixels).all() for f in frames.values())


# 4. The matte ----------------------------------------------------------------------------------------


def test_outside_the_matte_the_output_is_the_plate_bit_for_bit(models, tmp_path):
    inputs = write_shot(tmp_path / "shot", 2, matte=True)
    frames = render(inputs, tmp_path / "o", models, 2)
    outside = np.ones(SIZE, bool)
    outside[MATTE] = False
    for f, out in frames.items():
        plate = read_exr(Path(inputs["plate"].replace("####", f"{f:04d}")))
        assert np.array_equal(bits(out)[outside], bits(plate)[outside])
        assert out.pixels[0, 0, 0] == 40.0 and np.isnan(out.pixels[0, 1, 0]) and np.isinf(out.pixels[0, 2, 1])
        inside = np.abs(out.pixels[MATTE][..., :3].astype(np.float32) - plate.pixels[MATTE][..., :3])
        assert inside.mean() > 0.01


# 5. Cancel -------------------------------------------------------------------------------------------


def test_cancel_during_frame_2_stops_within_a_step_and_writes_no_frame_2(models, tmp_path):
    unet = models.get("tiny").unet
    calls = {"unet": 0, "progress": 0}
    state: dict[str, int | None] = {"unet": None, "progress": None}
    handle = unet.register_forward_pre_hook(lambda *a: calls.__setitem__("unet", calls["unet"] + 1))

    def on_progress(p: dict) -> None:
        calls["progress"] += 1
        if p.get("frame") == 2 and state["unet"] is None:  # frame 2's first step is under way
            state["unet"], state["progress"] = calls["unet"], calls["progress"]

    spec = JobSpec("restyle", (1, 3), write_shot(tmp_path / "shot", 3), params={**FAST, "steps": 4}, name="c")
    out = tmp_path / "c"
    try:
        with pytest.raises(Cancelled):
            run_job(spec, out, models=models, on_progress=on_progress, is_cancelled=lambda: state["unet"] is not None)
    finally:
        handle.remove()
    assert calls["progress"] == state["progress"]  # no step reported after the flag
    assert calls["unet"] - state["unet"] <= 1  # the step under way finishes, no other starts
    assert sorted(p.name for p in out.iterdir()) == ["c.0001.exr"]


# 6. Farm chunks and warm-up --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def moving(tmp_path_factory, models) -> tuple[dict[str, str], dict[int, Image]]:
    """A 6-frame moving shot and its full render."""
    folder = tmp_path_factory.mktemp("moving")
    inputs = write_shot(folder / "shot", 6)
    return inputs, render(inputs, folder / "full", models, 6)


def test_chunks_whose_warm_up_reaches_the_shot_start_equal_the_full_render(models, moving, tmp_path):
    inputs, full = moving
    assert OP.warmup >= 2
    chunked: dict[int, Image] = {}
    for chunk in (range(1, 4), range(4, 7)):
        chunked.update(render(inputs, tmp_path / "chunks", models, 6, frames=chunk))
    assert same(full, chunked)
    middle = render(inputs, tmp_path / "middle", models, 6, frames=range(3, 5), warmup=1)
    assert same(middle, {f: full[f] for f in (3, 4)})


def test_a_chunk_without_warm_up_renders_the_anchor_first_and_lands_close_to_the_full_render(models, moving, tmp_path):
    inputs, full = moving
    spec = JobSpec("restyle", (1, 6), inputs, params=FAST, name="r", seed=11, job_id="r")
    reported: list[int] = []
    written = run_job(spec, tmp_path / "cold", models=models, frames=range(5, 7), warmup=0,
                      on_progress=lambda p: reported.append(p["frame"]) if "note" not in p else None)
    assert written == [5, 6] and list(dict.fromkeys(reported)) == [1, 5, 6]  # the anchor, discarded, then the chunk
    cold = {f: read_exr(tmp_path / "cold" / f"r.{f:04d}.exr") for f in written}
    assert not same(cold, {f: full[f] for f in cold})
    for f in written:  # relative: restored highlights (the plate peaks at 40) magnify a display difference
        a, b = (image.pixels[1:, 3:].astype(np.float32) for image in (cold[f], full[f]))
        assert float((np.abs(a - b) / np.maximum(np.abs(b), 1.0)).max()) < 0.05


# 7. Frame sizes ------------------------------------------------------------------------------------


def test_plate_frames_of_another_size_are_refused_naming_both(models, tmp_path):
    inputs = write_shot(tmp_path / "shot", 2)
    write_shot(tmp_path / "big", 2, size=(40, 64))
    for role in ("plate", "depth"):
        Path(inputs[role].replace("####", "0002")).write_bytes((tmp_path / "big" / f"{role}.0002.exr").read_bytes())
    with pytest.raises(InputError, match="plate frame 2 is 64x40 but frame 1 is 48x32"):
        render(inputs, tmp_path / "o", models, 2)


def test_depth_of_another_size_than_the_plate_is_refused_naming_both(models, tmp_path):
    inputs = write_shot(tmp_path / "shot", 2)
    inputs["depth"] = write_shot(tmp_path / "big", 2, size=(40, 64))["depth"]
    with pytest.raises(InputError, match="depth frame 1 is 64x40 but the plate is 48x32"):
        render(inputs, tmp_path / "o", models, 2)


# 8. The command line ---------------------------------------------------------------------------------


def test_cvgen_render_renders_a_restyle_job_file_like_the_server(moving, tmp_path):
    inputs, full = moving
    job = write_job_file(JobSpec("restyle", (1, 6), inputs, params=FAST, name="r", seed=11, job_id="r"),
                         tmp_path / "job.json")
    result = subprocess.run([sys.executable, "-m", "cvgen.server.cli", "render", str(job), "--frames", "1-2",
                             "--output", str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "rendered 2 frame(s)" in result.stdout
    assert same({f: read_exr(tmp_path / "out" / f"r.{f:04d}.exr") for f in (1, 2)}, {f: full[f] for f in (1, 2)})


def test_a_strip_of_depth_narrower_than_the_sampling_step_still_counts_in_the_shots_statistics():
    """A 2-pixel-high strip of a wide frame is sampled every few pixels along both sides: a grid that
    started half a step in would have taken no row at all and left the shot without statistics."""
    strip = np.tile(np.linspace(1.0, 9.0, 4 * STATS_SIZE, dtype=np.float32), (2, 1))
    depth = ShotDepth([1], lambda frame: strip)
    assert 1.0 <= depth.low < 1.2 and 8.8 < depth.high <= 9.0
