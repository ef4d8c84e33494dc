"""smooth on the built-in tiny models: agreement with diffusers, exact inversions, windows, LoRA, mattes, cancel."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers.pipelines.deprecated.text_to_video_synthesis import TextToVideoSDPipeline
from support import make_shot

from cvgen.protocol import JobSpec, frame_path
from cvgen.protocol.images import Image
from cvgen.server.core import windows as win
from cvgen.server.core.inversion import ddim_invert, unet_eps
from cvgen.server.core.models import ModelCache, ModelRegistry
from cvgen.server.errors import Cancelled, InputError, ModelNotFound
from cvgen.server.io.exr import read_exr, write_exr
from cvgen.server.jobs.runner import run_job
from cvgen.server.ops.smooth import OP, Smoother, from_video, mixed_inversion, to_video, video_stage

FAST = {"steps": 4, "window": 4, "overlap": 1}


@pytest.fixture(scope="module")
def models() -> ModelCache:
    return ModelCache(ModelRegistry.load())


def smoother(models, **overrides) -> Smoother:
    return Smoother(models.get("tiny"), models.get("tiny-t2v", "t2v"), OP.resolve_params({**FAST, **overrides}))


def plates_only(folder, frames: range, nonfinite: bool = False, size: tuple[int, int] = (48, 64)) -> dict[str, str]:
    """make_shot's plates (HDR 40.0 at a corner) and its fg alphas as the matte; NaN and Inf outside it too."""
    shot = make_shot(folder, frames, size)
    if nonfinite:
        for f in frames:
            plate = read_exr(frame_path(shot["plate"], f))
            pixels = plate.pixels.copy()
            pixels[0, 1, 0], pixels[0, 2, 1], pixels[1, 0, 2] = np.nan, np.inf, -np.inf
            write_exr(frame_path(shot["plate"], f), Image(pixels, plate.channels))
    return {"plate": shot["plate"], "matte": shot["fg"]}


def render(shot, tmp_path, models, name="out", frames=(1, 7), chunks=None, **overrides) -> dict[int, Image]:
    spec = JobSpec("smooth", frames, shot, params={**FAST, **overrides}, name=name, job_id=name)
    out = tmp_path / name
    for chunk in chunks or [None]:
        run_job(spec, out, models=models, frames=chunk)
    return {f: read_exr(out / f"{name}.{f:04d}.exr") for f in range(frames[0], frames[1] + 1)}


# The video stage and the inversions ------------------------------------------------------------


@pytest.mark.parametrize("guidance", [1.0, 7.5])
def test_video_stage_equals_diffusers_text_to_video_pipeline(models, guidance):
    s = smoother(models, strength=1.0, guidance=guidance, prompt="a red car", negative_prompt="blurry")
    video = s.video
    start = torch.randn((1, 4, 5, 8, 8), generator=torch.Generator().manual_seed(0))
    ours = to_video(s.sample(from_video(start), lambda i, n: None))
    pipe = TextToVideoSDPipeline(vae=video.vae, text_encoder=video.text_encoder, tokenizer=video.tokenizer,
                                 unet=video.unet, scheduler=video.scheduler)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(prompt_embeds=s.cond, negative_prompt_embeds=s.video_negative, latents=start.clone(),
                  num_inference_steps=FAST["steps"], guidance_scale=guidance, output_type="latent",
                  num_frames=5, height=64, width=64).frames
    diff = (ours - theirs).abs().max().item()
    print(f"max |ours - TextToVideoSDPipeline| = {diff:.3g} (guidance {guidance})")
    assert diff < 1e-5


def test_mix_1_is_the_image_inversion_and_mix_0_the_video_inversion(models):
    z0 = torch.randn((5, 4, 8, 8), generator=torch.Generator().manual_seed(1))
    s = smoother(models, negative_prompt="blurry")
    k = s.k
    image = ddim_invert(unet_eps(s.image.unet, s.image_negative), s.image.scheduler, z0, 4, k)[-1]
    video = from_video(ddim_invert(unet_eps(s.video.unet, s.video_negative), s.video.scheduler, to_video(z0), 4, k)[-1])
    assert torch.equal(smoother(models, negative_prompt="blurry", mix=1.0).invert(z0, lambda i, n: None), image)
    assert torch.equal(smoother(models, negative_prompt="blurry", mix=0.0).invert(z0, lambda i, n: None), video)
    mixed = smoother(models, negative_prompt="blurry", mix=0.25).invert(z0, lambda i, n: None)
    assert torch.allclose(mixed, 0.25 * image + 0.75 * video, atol=1e-6) and not torch.allclose(image, video)


@pytest.mark.parametrize("mix,strength", [(1.0, 1.0), (0.0, 1.0), (0.3, 1.0), (0.3, 0.6)])
def test_inversion_then_sampling_returns_z0_with_an_analytic_noise_model(models, mix, strength):
    scheduler = models.get("tiny-t2v", "t2v").scheduler

    def eps(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # depends on t only: the round trip is exact
        return torch.full_like(z, math.sin(0.01 * int(t)) * 0.7)

    steps = 10
    k = int(steps * strength)
    z0 = torch.randn((3, 4, 6, 6), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    z_t = mixed_inversion(eps, scheduler, eps, scheduler, z0, steps, k, mix, lambda i, n: None)
    back = video_stage(eps, scheduler, z_t, steps, k, lambda i, n: None)
    error = (back - z0).abs().max().item()
    print(f"round trip, mix {mix}, strength {strength}: max |z0' - z0| = {error:.3g}")
    assert back.dtype == torch.float64 and error < 1e-10 and (z_t - z0).abs().max() > 0.1


# Windows ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("count,size,overlap", [(1, 8, 2), (6, 8, 2), (8, 8, 2), (9, 8, 2), (23, 8, 2), (24, 8, 4), (11, 4, 1),
                                                (10, 4, 0), (7, 3, 1)])
def test_windows_cover_every_frame_once_and_cross_fade_weights_sum_to_1(count, size, overlap):
    windows = win.plan(count, size, overlap)
    weights = win.weights(windows)
    total = np.zeros(count)
    for w, wt in zip(windows, weights):
        assert 0 < len(w.frames) <= size and (w.stop == count or len(w.frames) == size)
        total[w.start : w.stop] += wt
    assert np.allclose(total, 1.0, rtol=0, atol=1e-12)
    owners = [win.owner(windows, p) for p in range(count)]
    assert all(p in o.frames for p, o in enumerate(owners))  # each frame has exactly one result
    for a, b in zip(windows, windows[1:]):
        assert a.stop - b.start == overlap and 0 < b.start - a.start  # neighbours overlap by `overlap`
    order = win.needed(windows, range(count))
    assert sorted(w.index for w in order) == list(range(len(windows)))
    for i, w in enumerate(order):  # a bridge comes after both its anchors
        assert w.anchor or all(n.index in {o.index for o in order[:i]}
                               for n in windows[max(0, w.index - 1) : w.index + 2] if n.anchor)
    with pytest.raises(ValueError, match="half the window"):
        win.plan(count, size, size // 2 + 1)


def test_the_cross_fade_holds_at_most_two_anchors_however_long_the_shot():
    """Memory stays flat: besides the window being sampled, only two anchors' overlap latents are kept."""
    for count in (8, 26, 200):
        windows = win.plan(count, 8, 2)
        fade = win.Crossfade(windows)
        held = []
        order = win.needed(windows, range(count))
        for n, window in enumerate(order):
            hook = fade.after_step(window)
            for step in range(3):
                hook(step, torch.zeros((len(window.frames), 4, 2, 2)))
            fade.release(order[n + 1 :])
            held.append(sum(len(path) for anchor in fade._paths.values() for path in anchor.values()))
        assert max(held) <= 2 * 2 * 2 * 3  # two anchors, two overlaps of 2 frames, 3 steps


def test_a_chunked_render_and_a_resume_equal_a_full_render(models, tmp_path):
    """Windows of frames 1-4 (anchor), 4-7 (bridge), 7-10 (anchor): chunks cut through the bridge."""
    shot = plates_only(tmp_path / "shot", range(1, 11), size=(32, 32))
    fast = {"steps": 2, "mix": 0.5}
    full = render(shot, tmp_path, models, "full", (1, 10), **fast)
    chunked = render(shot, tmp_path, models, "chunked", (1, 10), chunks=[range(1, 6), range(6, 11)], **fast)
    for f in full:
        assert np.array_equal(full[f].pixels.view(np.uint16), chunked[f].pixels.view(np.uint16)), f
    out = tmp_path / "full"
    for f in (4, 9):  # a bridge's frame, an anchor's
        (out / f"full.{f:04d}.exr").unlink()
    spec = JobSpec("smooth", (1, 10), shot, params={**FAST, **fast}, name="full", job_id="full")
    assert run_job(spec, out, models=models) == [4, 9]
    for f in full:
        assert np.array_equal(full[f].pixels.view(np.uint16), read_exr(out / f"full.{f:04d}.exr").pixels.view(np.uint16))


def panning_shot(folder, count: int) -> dict[str, str]:
    """One picture panning a pixel a frame: a shot whose change from frame to frame is even."""
    wide = read_exr(frame_path(make_shot(folder / "source", range(1, 2), (32, 32 + count), seed=3)["plate"], 1))
    for f in range(1, count + 1):
        write_exr(folder / f"plate.{f:04d}.exr", Image(wide.pixels[:, f : f + 32].copy(), wide.channels))
    return {"plate": str(folder / "plate.####.exr")}


def test_the_cross_fade_closes_the_seam_between_windows(models, tmp_path, monkeypatch):
    """Mean frame-to-frame change of the result latents across a window boundary against inside a window.

    The tiny models' weights are random, so the figures are small effects on noise; on them the
    cross-fade still takes the seam from above the inside change to below it."""
    count, size = 12, 4
    shot = panning_shot(tmp_path / "shot", count)
    decode = Smoother.decode
    seam = {}
    for overlap in (0, 1):
        latents: list[torch.Tensor] = []
        monkeypatch.setattr(Smoother, "decode", lambda self, z, pad: (latents.append(z[0].double()), decode(self, z, pad))[1])
        render(shot, tmp_path, models, f"o{overlap}", (1, count), window=size, overlap=overlap, mix=0.5)
        change = np.array([(b - a).abs().mean().item() for a, b in zip(latents, latents[1:])])
        windows = win.plan(count, size, overlap)
        owners = [win.owner(windows, p).index for p in range(count)]  # a boundary: the result's window changes
        across = change[[i for i in range(count - 1) if owners[i] != owners[i + 1]]].mean()
        inside = change[[i for i in range(count - 1) if owners[i] == owners[i + 1]]].mean()
        seam[overlap] = across / inside
        print(f"overlap {overlap}: mean latent change across a boundary {across:.4f}, inside a window {inside:.4f}, "
              f"ratio {seam[overlap]:.3f}")
    assert seam[1] < 1.0 < seam[0]


# LoRA, mattes, cancel ----------------------------------------------------------------------------


def test_a_lora_changes_the_result_and_leaves_the_video_model_as_it_was(models, tmp_path):
    shot = plates_only(tmp_path / "shot", range(1, 4), size=(32, 32))
    video = models.get("tiny-t2v", "t2v")
    probe = torch.randn((1, 4, 3, 8, 8), generator=torch.Generator().manual_seed(4))
    context = video.encode_prompt(["a probe"])
    with torch.no_grad():
        before = video.unet(probe, 500, encoder_hidden_states=context).sample
    plain = render(shot, tmp_path, models, "plain", (1, 3), steps=2)
    with_lora = render(shot, tmp_path, models, "lora", (1, 3), steps=2, lora="tiny-lora:0.8")
    with torch.no_grad():
        after = video.unet(probe, 500, encoder_hidden_states=context).sample
    assert torch.equal(before, after)
    assert all(not np.array_equal(plain[f].pixels, with_lora[f].pixels) for f in plain)
    with pytest.raises(ModelNotFound, match="No LoRA model named 'nope'"):
        render(shot, tmp_path, models, "missing", (1, 3), lora="tiny-lora, nope:0.5")
    with pytest.raises(InputError, match="scale that is not a number"):
        render(shot, tmp_path, models, "bad", (1, 3), lora="tiny-lora:lots")


def test_a_lora_for_image_models_or_no_lora_is_refused_before_the_job_is_queued(tmp_path):
    from cvgen.server.core.models import ensure_builtin
    from cvgen.server.jobs.runner import check_job

    lora = ensure_builtin("lora") / "lora.safetensors"
    (tmp_path / "models.toml").write_text(f'[models.still]\nkind = "lora"\npath = "{lora}"\napplies_to = "sd"\n')
    registry = ModelRegistry.load(tmp_path / "models.toml")
    shot = plates_only(tmp_path / "shot", range(1, 3))
    with pytest.raises(InputError, match="smooth lora 'still' is for sd models; .* applies_to = \"t2v\""):
        check_job(JobSpec("smooth", (1, 2), shot, params={"lora": "still:0.5"}), registry=registry)
    with pytest.raises(ModelNotFound, match="'tiny' is a Stable Diffusion model .* a LoRA model"):
        check_job(JobSpec("smooth", (1, 2), shot, params={"lora": "tiny"}), registry=registry)
    with pytest.raises(InputError, match="smooth lora 'still' is for sd models"):
        render(shot, tmp_path, ModelCache(registry), "o", (1, 2), lora="still:0.5")
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_pixels_outside_the_matte_are_the_plates_bit_for_bit(models, tmp_path):
    shot = plates_only(tmp_path / "shot", range(1, 4), nonfinite=True)
    frames = render(shot, tmp_path, models, "out", (1, 3))
    for f, out in frames.items():
        plate = read_exr(frame_path(shot["plate"], f))
        alpha = read_exr(frame_path(shot["matte"], f)).channel("A")
        outside = alpha == 0
        assert outside[0, :3].all() and outside[1, 0] and (alpha > 0).any()
        assert np.array_equal(out.pixels.view(np.uint16)[outside], plate.pixels.view(np.uint16)[outside])
        assert out.pixels[0, 0, 0] == 40.0 and np.isnan(out.pixels[0, 1, 0]) and np.isinf(out.pixels[0, 2, 1])
        assert not np.array_equal(out.pixels.view(np.uint16)[~outside], plate.pixels.view(np.uint16)[~outside])


def test_cancel_stops_within_a_step_and_leaves_no_partial_frame(models, tmp_path):
    shot = plates_only(tmp_path / "shot", range(1, 7))  # windows frames 1-4 (anchor) and 4-6 (bridge)
    unets = [models.get("tiny").unet, models.get("tiny-t2v", "t2v").unet]
    calls = {"n": 0}
    handles = [u.register_forward_pre_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1)) for u in unets]
    state = {"steps": 0, "calls_at_cancel": None}
    steps_per_window = 2 * FAST["steps"]  # image inversion and sampling at mix 1

    def on_progress(p):
        state["steps"] += 1

    def is_cancelled():  # the anchor done, the bridge one step into its inversion
        if state["steps"] >= steps_per_window + 1 and state["calls_at_cancel"] is None:
            state["calls_at_cancel"] = calls["n"]
        return state["calls_at_cancel"] is not None

    out = tmp_path / "cancelled"
    try:
        with pytest.raises(Cancelled):
            run_job(JobSpec("smooth", (1, 6), shot, params=FAST, name="c"), out, models=models,
                    on_progress=on_progress, is_cancelled=is_cancelled)
    finally:
        for h in handles:
            h.remove()
    assert calls["n"] - state["calls_at_cancel"] <= 1
    assert sorted(p.name for p in out.iterdir()) == ["c.0001.exr", "c.0002.exr", "c.0003.exr"]  # the anchor's own


def test_bad_parameters_are_refused_before_work(models, tmp_path):
    shot = plates_only(tmp_path / "shot", range(1, 3))
    with pytest.raises(InputError, match="overlap 3 is more than half the 4-frame window"):
        render(shot, tmp_path, models, "o", (1, 2), overlap=3)
    with pytest.raises(InputError, match="regenerates no step"):
        render(shot, tmp_path, models, "s", (1, 2), strength=0.1)
