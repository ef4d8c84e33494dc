"""propagate on the built-in tiny SVD model: agreement with diffusers, exact inversion, statistics,
windows, seams, the matte, errors, cancel, chunks and resume."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableVideoDiffusionPipeline
from PIL import Image as PILImage
from support import make_shot

from cvgen.protocol import JobSpec
from cvgen.protocol.farm import FarmSubmission, write_job_file
from cvgen.protocol.images import Image
from cvgen.server.core.euler import c_out, c_skip, euler_step, invert, inverse_euler_step, sample, schedule
from cvgen.server.core.models import ModelCache, ModelRegistry
from cvgen.server.errors import Cancelled, InputError
from cvgen.server.farm.model import farm_job
from cvgen.server.io.exr import read_exr, write_exr
from cvgen.server.jobs.runner import run_job
from cvgen.server.ops.base import OpContext
from cvgen.server.core.sampling import strength_steps
from cvgen.server.ops.propagate import OP, Propagator, run

FAST = {"model": "tiny-svd", "steps": 4, "strength": 0.5}
SIZE = (24, 40)  # a 5:3 plate: scaled to 14x24 inside the tiny model's 16x24, padded, cropped back


@pytest.fixture(scope="module")
def models() -> ModelCache:
    return ModelCache(ModelRegistry.load())


@pytest.fixture(scope="module")
def svd(models):
    return models.get("tiny-svd", "svd")


def params(**overrides) -> dict:
    return OP.resolve_params({**FAST, **overrides})


def shot_files(folder: Path, count: int, size=SIZE, edit_size=None) -> dict[str, str]:
    """Plate frames 1..count (with HDR and a drifting bright square), an edit of frame 1, a matte."""
    inputs = make_shot(folder, range(1, count + 1), size)
    h, w = size
    for f in range(1, count + 1):
        plate = read_exr(folder / f"plate.{f:04d}.exr")
        px = plate.pixels.astype(np.float32)
        px[4:10, 2 + 2 * f : 8 + 2 * f, :3] = 0.9
        write_exr(folder / f"plate.{f:04d}.exr", Image(px.astype(np.float16), plate.channels))
        matte = np.zeros((h, w, 1), np.float32)
        matte[2:14, 4:30] = 1.0
        write_exr(folder / f"matte.{f:04d}.exr", Image(matte, ("A",)))
    eh, ew = edit_size or size
    edit = read_exr(folder / "plate.0001.exr").pixels[:eh, :ew].astype(np.float32)
    edit[6:12, 10:20, :3] = (3.0, 0.2, 0.1)
    write_exr(folder / "edit.exr", Image(edit.astype(np.float16), ("R", "G", "B", "A")))
    return {"plate": inputs["plate"], "edit": str(folder / "edit.exr"), "matte": str(folder / "matte.####.exr")}


def render(inputs, out: Path, models, frames=None, count=None, name="p", **overrides) -> dict[int, Image]:
    count = count or 8
    spec = JobSpec("propagate", (1, count), inputs, params={**FAST, **overrides}, name=name, seed=7, job_id="j1")
    run_job(spec, out, models=models, frames=frames)
    return {f: read_exr(p) for f in range(1, count + 1) if (p := out / f"{name}.{f:04d}.exr").exists()}


# The Euler step and its inverse ----------------------------------------------------------------


def test_inverse_step_undoes_the_schedulers_euler_step_at_every_sigma(svd):
    sched = copy.deepcopy(svd.scheduler)
    sched.set_timesteps(25)
    ours = schedule(svd.scheduler, 25)
    rng = torch.Generator().manual_seed(0)
    worst = 0.0
    for i, t in enumerate(sched.timesteps):
        x_t = torch.randn(1, 3, 4, 8, 8, generator=rng) * float(ours.sigmas[i])
        v = torch.randn(1, 3, 4, 8, 8, generator=rng)
        sched.scale_model_input(x_t, t)  # as a pipeline does before every step
        x_c = sched.step(v, t, x_t, return_dict=False)[0]
        assert torch.equal(x_c, euler_step(x_t, v, ours.sigmas[i], ours.sigmas[i + 1]))  # the same arithmetic
        back = inverse_euler_step(x_c, v, ours.sigmas[i + 1], ours.sigmas[i])
        worst = max(worst, ((back - x_t).norm() / x_t.norm()).item())
    print(f"inverse Euler step: worst relative error {worst:.2g} over {len(sched.timesteps)} sigmas")
    assert worst < 1e-6


@pytest.mark.parametrize("strength", [0.55, 1.0])
def test_inversion_then_sampling_returns_the_start_latent_with_an_analytic_model(svd, strength):
    """The exact v-prediction model of a one-point data set (its denoiser always answers x0):
    the probability-flow paths are straight lines, Euler is exact on them, and so is the inversion."""
    sched = schedule(svd.scheduler, 25)
    sched = type(sched)(sched.sigmas.double(), sched.timesteps.double())
    rng = torch.Generator().manual_seed(1)
    x0 = torch.randn(1, 5, 4, 6, 6, generator=rng, dtype=torch.float64)
    noise = torch.randn(x0.shape, generator=rng, dtype=torch.float64)

    def v(x, i):
        sigma = sched.sigmas[i]
        return (x0 - c_skip(sigma) * x) / c_out(sigma)

    k = strength_steps({"steps": 25, "strength": strength})
    back = sample(v, invert(v, x0, sched, k, noise), sched, 25 - k)
    err = (back - x0).abs().max().item()
    print(f"round trip at strength {strength} ({k} steps): max error {err:.2g}")
    assert err < 1e-10


# Generation and statistics ----------------------------------------------------------------------


def test_generation_equals_diffusers_pipeline(svd):
    p = Propagator(svd, params(steps=3, guidance=4.0, fps=9, motion_bucket=60, noise_aug=0.1))
    pixels = np.random.default_rng(2).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    edit = torch.from_numpy(pixels.astype(np.float32) / 255.0).permute(2, 0, 1)[None] * 2 - 1
    latents = torch.randn((1, 3, 4, 8, 8), generator=torch.Generator().manual_seed(3))
    sched = copy.deepcopy(svd.scheduler)
    sched.set_timesteps(3)
    with torch.no_grad():
        ours = p.generate(latents * sched.init_noise_sigma, edit, torch.Generator().manual_seed(4),
                          lambda i, n: None, start=0)
    pipe = StableVideoDiffusionPipeline(vae=svd.vae, image_encoder=svd.image_encoder, unet=svd.unet,
                                        scheduler=copy.deepcopy(svd.scheduler), feature_extractor=svd.feature_extractor)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(PILImage.fromarray(pixels), height=16, width=16, num_frames=3, num_inference_steps=3,
                  min_guidance_scale=4.0, max_guidance_scale=4.0, fps=9, motion_bucket_id=60, noise_aug_strength=0.1,
                  generator=torch.Generator().manual_seed(4), latents=latents.clone(), output_type="latent").frames
    diff = (ours - theirs).abs().max().item()
    print(f"max |ours - StableVideoDiffusionPipeline| = {diff:.3g}")
    assert diff < 1e-5


def test_statistics_are_the_ones_methods_md_names(svd):
    p = Propagator(svd, params())
    rng = torch.Generator().manual_seed(5)
    video = torch.rand(3, 3, 16, 16, generator=rng) * 2 - 1
    with torch.no_grad():
        x0 = p.normalised_latents(video)[0]  # step 1: per frame over (C, H, W), unbiased std, + 1e-6
        raw = p.scale * p.encode_mode(video)
        for frame, r in zip(x0, raw):
            torch.testing.assert_close(frame, (r - r.mean()) / (r.std() + 1e-6))
            assert abs(frame.mean().item()) < 1e-5 and abs(frame.std().item() - 1) < 1e-3
        assert x0[:, 0].std(dim=(-2, -1)).sub(1).abs().max() > 1e-3  # not per channel
        latent = p.inversion_latent(video[:1], torch.Generator().manual_seed(6))  # step 2: whole latent, / s
        assert abs(latent.mean().item()) < 1e-6 and abs(latent.std().item() * p.scale - 1) < 1e-5
        edit = video[:1]
        y = torch.randn(1, 3, 4, 8, 8, generator=rng) * 3 + 1
        out = p.rescale(y, edit)  # step 5: per channel, from frame 0 of y and the edit's clean latent
        e = p.scale * p.encode_mode(edit)
    torch.testing.assert_close(out[0, 0].mean(dim=(-2, -1)), e[0].mean(dim=(-2, -1)), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[0, 0].std(dim=(-2, -1)), e[0].std(dim=(-2, -1)), atol=1e-5, rtol=1e-5)
    a = e[0].std(dim=(-2, -1)) / y[0, 0].std(dim=(-2, -1))  # frame 1 goes through frame 0's map
    expected = ((y[0, 1] - y[0, 0].mean(dim=(-2, -1))[:, None, None]) * a[:, None, None]
                + e[0].mean(dim=(-2, -1))[:, None, None])
    torch.testing.assert_close(out[0, 1], expected, atol=1e-5, rtol=1e-5)


def test_plates_of_any_size_run_at_the_models_area_keeping_their_aspect():
    from cvgen.server.core.fit import fit

    assert fit(1080, 1920, 1024 * 576, 64).scaled == fit(2160, 3840, 1024 * 576, 64).scaled == (576, 1024)
    assert fit(1080, 1920, 1024 * 576, 64).size == (576, 1024)
    for height, width in ((858, 2048), (1556, 2048), (1080, 1080), (37, 1999)):
        f = fit(height, width, 1024 * 576, 64)
        assert f.size[0] % 64 == 0 and f.size[1] % 64 == 0 and f.scaled[0] <= f.size[0] and f.scaled[1] <= f.size[1]
        assert abs(f.scaled[1] / f.scaled[0] - width / height) < 2 * width / height / min(f.scaled)
        assert 0.75 < f.size[0] * f.size[1] / (1024 * 576) < 1.5
        image = torch.rand(1, 3, height, width)
        assert f.from_model(f.to_model(image)).shape == image.shape


# Windows ----------------------------------------------------------------------------------------------


class MemoryShot:
    """A shot read from disk that records reads of plate frames."""

    def __init__(self, inputs, count):
        from cvgen.server.jobs.shot import FileShot

        self.shot = FileShot(inputs, range(1, count + 1), image_roles=OP.image_roles)
        self.frames = self.shot.frames
        self.log: list[tuple[str, int]] = []

    def has(self, role):
        return self.shot.has(role)

    def read(self, role, frame):
        if role == "plate":
            self.log.append(("read", frame))
        return self.shot.read(role, frame)


def context(models, todo, **kw) -> OpContext:
    lease = models.lease()
    return OpContext(todo=list(todo), colorspace="ACEScg", seed=7, load_model=lease.get, **kw)


def frame_change(frames: dict[int, Image]) -> list[float]:
    keys = sorted(frames)
    rgb = [frames[f].pixels[..., :3].astype(np.float64) for f in keys]
    return [float(np.abs(b - a).mean()) for a, b in zip(rgb, rgb[1:])]


def test_windows_render_every_frame_once_streaming_with_a_steady_seam(models, tmp_path):
    """9 frames in 4-frame windows sharing a frame: [1-4], [4-7], [7-9]."""
    inputs = shot_files(tmp_path / "shot", 9)
    del inputs["matte"]
    shot = MemoryShot(inputs, 9)
    out = {}
    for frame, image in run(shot, params(), context(models, range(1, 10))):
        assert frame not in out
        out[frame] = image
        shot.log.append(("yield", frame))
    assert sorted(out) == list(range(1, 10))
    held, most = set(), 0
    for what, frame in shot.log:
        held = held | {frame} if what == "read" else held - {frame}
        most = max(most, len(held))
    assert most <= 4  # one window's frames at a time, whatever the length
    change = frame_change(out)
    boundary = [change[i] for i in (3, 6)]  # 4->5 and 7->8: the first frame of the next window's own
    inside = [c for i, c in enumerate(change) if i not in (3, 6)]
    print(f"mean frame-to-frame change: inside windows {np.mean(inside):.4g}, "
          f"across boundaries {np.mean(boundary):.4g}")
    assert np.mean(boundary) < 1.5 * np.mean(inside)


# Mattes, errors, cancel ---------------------------------------------------------------------------------


def test_outside_the_matte_the_plate_comes_back_bit_exact(models, tmp_path):
    inputs = shot_files(tmp_path / "shot", 3)
    for f in range(1, 4):
        plate = read_exr(tmp_path / "shot" / f"plate.{f:04d}.exr")
        px = plate.pixels.astype(np.float32)
        px[20, 36, 0], px[21, 37, 1], px[22, 38, 2], px[0, 0, 0] = np.nan, np.inf, -np.inf, 1000.0
        write_exr(tmp_path / "shot" / f"plate.{f:04d}.exr", Image(px, plate.channels))
    out = render(inputs, tmp_path / "out", models, count=3)
    matte = read_exr(tmp_path / "shot" / "matte.0001.exr").pixels[..., 0] > 0
    for f, image in out.items():
        plate = read_exr(tmp_path / "shot" / f"plate.{f:04d}.exr").pixels
        assert np.array_equal(image.pixels[~matte].view(np.uint32), plate[~matte].view(np.uint32))
        assert not np.array_equal(image.pixels[matte], plate[matte])


def test_a_wrong_sized_edit_and_a_one_frame_shot_are_refused_in_one_sentence(models, tmp_path):
    inputs = shot_files(tmp_path / "shot", 2, edit_size=(20, 40))
    with pytest.raises(InputError, match=r"^the edit image is 40x20 but the plate is 40x24; paint the edit on the "
                                         r"plate's first frame at its full size$"):
        render(inputs, tmp_path / "a", models, count=2)
    with pytest.raises(InputError, match=r"^propagate needs a shot of at least 2 frames to carry the edit through, "
                                         r"not 1$"):
        render(shot_files(tmp_path / "one", 1), tmp_path / "b", models, count=1)
    with pytest.raises(InputError, match=r"^a window of 1 frame cannot hand the edit on to the next; use 2 or more "):
        render(shot_files(tmp_path / "two", 2), tmp_path / "c", models, count=2, window=1)


def test_cancel_stops_within_a_step_and_leaves_no_partial_frame(models, svd, tmp_path):
    inputs = shot_files(tmp_path / "shot", 6)
    calls = {"n": 0, "at_cancel": None}
    handle = svd.unet.register_forward_pre_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
    steps = {"n": 0}

    def is_cancelled():
        # window 1 (frames 1-4) takes 2k = 4 steps; cancel at the 2nd step of window 2
        if steps["n"] >= 6 and calls["at_cancel"] is None:
            calls["at_cancel"] = calls["n"]
        return calls["at_cancel"] is not None

    out = tmp_path / "out"
    try:
        with pytest.raises(Cancelled):
            run_job(JobSpec("propagate", (1, 6), inputs, params=FAST, name="c"), out, models=models,
                    on_progress=lambda p: steps.__setitem__("n", steps["n"] + 1), is_cancelled=is_cancelled)
    finally:
        handle.remove()
    assert calls["n"] - calls["at_cancel"] <= 1
    assert sorted(p.name for p in out.iterdir()) == [f"c.{f:04d}.exr" for f in range(1, 5)]


# Farm, chunks, resume --------------------------------------------------------------------------------------


def test_chunks_and_resumes_equal_the_full_render_and_the_farm_runs_one_task(models, svd, tmp_path, monkeypatch):
    monkeypatch.setenv("CVGEN_CACHE", str(tmp_path / "cache"))
    inputs = shot_files(tmp_path / "shot", 8)
    full = render(inputs, tmp_path / "full", models)
    chunk = render(inputs, tmp_path / "chunk", models, frames=range(5, 7))  # from the chain's start
    chunk.update(render(inputs, tmp_path / "chunk", models, frames=range(1, 2)))
    assert sorted(chunk) == [1, 5, 6]
    for f in chunk:
        assert np.array_equal(chunk[f].pixels, full[f].pixels)
    resumed = tmp_path / "full"
    for f in range(6, 9):
        (resumed / f"p.{f:04d}.exr").unlink()
    calls = []
    handle = svd.unet.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        again = render(inputs, resumed, models)
    finally:
        handle.remove()
    for f in range(1, 9):
        assert np.array_equal(again[f].pixels, full[f].pixels)
    # windows [1-4] [4-7] [7-8]: frame 6 lies in the second, so two windows of 2k = 4 UNet calls run
    assert len(calls) == 2 * 4
    job = write_job_file(FarmSubmission(JobSpec("propagate", (1, 8), inputs, params=FAST), chunk=2),
                         tmp_path / "job.json")
    from cvgen.protocol.farm import read_job_file

    assert farm_job(job, read_job_file(job)).chunks() == [(1, 8)]
