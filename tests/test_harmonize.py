"""harmonize on the built-in tiny model: agreement with diffusers, exact invariants, caching, cancel."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from support import ServerProcess, make_shot

from cvgen.protocol import JobSpec, ProtocolError, ServerError, frame_path
from cvgen.protocol.client import Client, Done
from cvgen.server.core.models import ModelCache, ModelRegistry
from cvgen.server.core.sampling import steps_for
from cvgen.server.errors import Cancelled, InputError
from cvgen.protocol.images import Image
from cvgen.server.io.exr import read_exr, write_exr
from cvgen.server.jobs.runner import run_job
from cvgen.server.ops.harmonize import OP, Harmonizer, frames_to_render

FAST = {"steps": 4, "strength": 0.5, "guidance": 5.0}


@pytest.fixture(scope="module")
def models() -> ModelCache:
    return ModelCache(ModelRegistry.load())


def params(**overrides) -> dict:
    return OP.resolve_params({**FAST, **overrides})


class Calls:
    """Counts UNet forward calls."""

    def __init__(self, unet: torch.nn.Module) -> None:
        self.count = 0
        self.handle = unet.register_forward_pre_hook(self._hook)

    def _hook(self, *args) -> None:
        self.count += 1

    def close(self) -> None:
        self.handle.remove()


@pytest.mark.parametrize("guidance", [1.0, 5.0])
def test_generation_equals_diffusers_pipeline(models, tmp_path, guidance):
    model = models.get("tiny")
    h = Harmonizer(model, params(strength=1.0, tau=0.0, tau_b=0.0, guidance=guidance, prompt="a red car",
                                 negative_prompt="blurry"), None)
    start = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(0))
    ours = h.generate(start, lambda i, n: None)
    pipe = StableDiffusionPipeline(vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer,
                                   unet=model.unet, scheduler=model.scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(prompt_embeds=h.cond, negative_prompt_embeds=h.uncond, latents=start.clone(),
                  num_inference_steps=FAST["steps"], guidance_scale=guidance, output_type="latent",
                  height=64, width=64).images
    diff = (ours - theirs).abs().max().item()
    print(f"max |ours - diffusers| = {diff:.3g} (guidance {guidance})")
    assert diff < 1e-5


def test_knobs_off_guide_is_plain_generation(models):
    model = models.get("tiny")
    h = Harmonizer(model, params(tau=0.0, tau_b=0.0), None)
    start = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(1))
    from cvgen.server.ops.harmonize import FrameGuide

    guide = FrameGuide(torch.zeros_like(start), [torch.zeros_like(start)] * h.k, torch.ones((1, 1, 8, 8)))
    assert torch.equal(h.generate(start, lambda i, n: None), h.generate(start, lambda i, n: None, guide))


def render(shot, tmp_path, models, name="out", frames=(1, 3), **overrides):
    spec = JobSpec("harmonize", frames, shot, params={**FAST, **overrides}, name=name)
    out = tmp_path / name
    run_job(spec, out, models=models)
    return {f: read_exr(out / f"{name}.{f:04d}.exr") for f in range(frames[0], frames[1] + 1)}


def test_pixels_outside_the_matte_are_the_plates_bit_for_bit(models, tmp_path):
    shot = make_shot(tmp_path / "shot", range(1, 4))
    frames = render(shot, tmp_path, models)
    for f, out in frames.items():
        plate = read_exr(frame_path(shot["plate"], f))
        alpha = read_exr(frame_path(shot["fg"], f)).channel("A")
        outside = alpha == 0
        assert outside.any() and (alpha > 0).any()
        bits = out.pixels.view(np.uint16)[outside]
        assert np.array_equal(bits, plate.pixels.view(np.uint16)[outside])
        assert out.pixels[0, 0, 0] == 40.0  # the plate's HDR highlight, outside the matte
        assert not np.array_equal(out.pixels.view(np.uint16)[~outside], plate.pixels.view(np.uint16)[~outside])
        assert out.display == plate.display and out.channels == plate.channels


def test_ifa_leaves_frame_0_alone_and_changes_later_frames(models, tmp_path):
    shot = make_shot(tmp_path / "shot", range(1, 4))
    with_ifa = render(shot, tmp_path, models, name="ifa", tau=0.6)
    without = render(shot, tmp_path, models, name="plain", tau=0.0)
    assert np.array_equal(with_ifa[1].pixels, without[1].pixels)
    for f in (2, 3):
        assert not np.array_equal(with_ifa[f].pixels, without[f].pixels)


def test_a_new_prompt_reuses_the_inversion(models, tmp_path, monkeypatch):
    monkeypatch.setenv("CVGEN_CACHE", str(tmp_path / "cache"))
    shot = make_shot(tmp_path / "shot", range(1, 4))
    calls = Calls(models.get("tiny").unet)
    try:
        render(shot, tmp_path, models, name="first", prompt="a statue")
        first = calls.count
        calls.count = 0
        render(shot, tmp_path, models, name="second", prompt="a statue at dusk")
        second = calls.count
    finally:
        calls.close()
    k = steps_for(FAST["strength"], FAST["steps"])
    generation = 3 * k  # one guided (batched) call per step and frame
    print(f"UNet calls: first render {first}, second render with a new prompt {second}")
    assert second == generation
    assert first == generation + 2 * k  # frames inverted in two batches (2 + 1 on the CPU)


def test_cancel_stops_within_a_step_and_leaves_no_partial_frame(models, tmp_path, monkeypatch):
    unet = models.get("tiny").unet  # built into the session's cache before the job's own cache is set
    monkeypatch.setenv("CVGEN_CACHE", str(tmp_path / "cache"))  # no cached inversions: a known step count
    shot = make_shot(tmp_path / "shot", range(1, 4))
    calls = Calls(unet)
    state = {"steps": 0, "calls_at_cancel": None}

    def on_progress(p):
        state["steps"] += 1

    def is_cancelled():
        # steps so far: frames 1-2 inverted (2), frame 1 generated (2), frame 2's first step (1)
        if state["steps"] >= 5 and state["calls_at_cancel"] is None:
            state["calls_at_cancel"] = calls.count
        return state["calls_at_cancel"] is not None

    out = tmp_path / "cancelled"
    try:
        with pytest.raises(Cancelled):
            run_job(JobSpec("harmonize", (1, 3), shot, params=FAST, name="c"), out, models=models,
                    on_progress=on_progress, is_cancelled=is_cancelled)
    finally:
        calls.close()
    assert calls.count - state["calls_at_cancel"] <= 1
    written = sorted(p.name for p in out.iterdir())
    assert written == ["c.0001.exr"]  # frame 1 finished before the cancel; nothing else, no temp file
    read_exr(out / "c.0001.exr")


def test_bad_parameters_are_refused_before_work(models, tmp_path):
    with pytest.raises(ProtocolError, match="harmonize strength must be between 0 and 1; it is 1.5"):
        OP.resolve_params({"strength": 1.5})
    shot = make_shot(tmp_path / "shot", range(1, 2))
    with pytest.raises(InputError, match="regenerates no step"):
        run_job(JobSpec("harmonize", (1, 1), shot, params={"strength": 0.01, "steps": 4}), tmp_path / "o",
                models=models)


def test_harmonize_through_the_server_matches_render_and_unknown_models_are_refused(tmp_path, monkeypatch, models):
    shot = make_shot(tmp_path / "shot", range(1, 3))
    server = ServerProcess(tmp_path / "jobs").start()
    try:
        with Client(server.endpoint, timeout=60) as client:
            ops = {o["name"]: o for o in client.hello()["ops"]}
            assert {p["name"] for p in ops["harmonize"]["params"]} >= {"prompt", "strength", "tau", "tau_b"}
            with pytest.raises(ServerError) as err:
                list(client.submit(JobSpec("harmonize", (1, 2), shot, params={"model": "nope"})))
            assert err.value.code == "model_not_found" and "nope" in str(err.value)
            done = list(client.submit(JobSpec("harmonize", (1, 2), shot, params=FAST, name="h")))[-1]
            assert isinstance(done, Done)
    finally:
        server.stop()
    local = render(shot, tmp_path, models, name="h", frames=(1, 2))
    for f, path in done.frames.items():
        assert np.array_equal(read_exr(path).pixels.view(np.uint16), local[f].pixels.view(np.uint16))


def test_a_render_from_cached_inversions_is_bit_identical_to_the_first(models, tmp_path, monkeypatch):
    monkeypatch.setenv("CVGEN_CACHE", str(tmp_path / "cache"))
    shot = make_shot(tmp_path / "shot", range(1, 4))
    first = render(shot, tmp_path, models, name="fresh")
    again = render(shot, tmp_path, models, name="cached")
    assert any((tmp_path / "cache" / "inversion").iterdir())
    for f in first:
        assert np.array_equal(first[f].pixels.view(np.uint16), again[f].pixels.view(np.uint16))


def test_warm_up_comes_before_every_run_of_missing_frames():
    class Shot:
        frames = range(1, 11)

    order = frames_to_render(Shot(), [1, 5, 6, 9], params(tau=0.6), warmup=2)
    assert order == [1, 3, 4, 5, 6, 7, 8, 9]
    assert frames_to_render(Shot(), [1, 5, 6, 9], params(tau=0.0), warmup=2) == [1, 5, 6, 9]


def test_a_resume_with_gaps_equals_a_full_run(models, tmp_path, monkeypatch):
    """Frame 2 on disk, frames 1 and 3 missing: frame 3 must attend to frame 2, as in a full run."""
    # one frame per VAE batch, so that batching (which moves the encoder's float rounding) is alike in every run
    monkeypatch.setattr("cvgen.server.ops.harmonize._batch_size", lambda device: 1)
    shot = make_shot(tmp_path / "shot", range(1, 6))
    spec = JobSpec("harmonize", (1, 5), shot, params=FAST, name="h", job_id="j1")
    run_job(spec, tmp_path / "h", models=models)
    full = {f: read_exr(tmp_path / "h" / f"h.{f:04d}.exr") for f in range(1, 6)}
    gapped = tmp_path / "gapped"
    gapped.mkdir()
    (gapped / "h.0002.exr").write_bytes((tmp_path / "h" / "h.0002.exr").read_bytes())
    assert run_job(spec, gapped, models=models, frames=range(1, 4)) == [1, 3]
    for f in (1, 3):
        assert np.array_equal(read_exr(gapped / f"h.{f:04d}.exr").pixels.view(np.uint16),
                              full[f].pixels.view(np.uint16)), f"frame {f}"
    # a run that resumes further on warms up from a clean start, whatever else it renders
    wide_gap = tmp_path / "wide_gap"
    wide_gap.mkdir()
    for f in (2, 3, 4):
        (wide_gap / f"h.{f:04d}.exr").write_bytes((tmp_path / "h" / f"h.{f:04d}.exr").read_bytes())
    alone = tmp_path / "alone"
    run_job(spec, alone, models=models, frames=[5])
    assert run_job(spec, wide_gap, models=models) == [1, 5]
    assert np.array_equal(read_exr(wide_gap / "h.0005.exr").pixels.view(np.uint16),
                          read_exr(alone / "h.0005.exr").pixels.view(np.uint16))


@pytest.mark.parametrize("steps, strength", [(10, 0.5), (20, 0.5), (7, 1.0), (3, 1.0)])
def test_tau_and_tau_b_round_a_fraction_of_the_steps_alike(models, monkeypatch, steps, strength):
    """At k = 5, tau = tau_b = 0.5 must gate the same number of steps (once 3 and 2)."""
    from cvgen.server.ops.harmonize import FrameGuide

    counts = []

    def fake_sample(eps, scheduler, start, timesteps, on_step=None, after_step=None, *, steps=None):
        ifa, blend = 0, 0
        for i in range(len(timesteps)):
            on_step(i, len(timesteps))
            ifa += h.ifa._active()
            blend += bool(torch.equal(after_step(i, torch.ones(1, 4, 8, 8)), torch.zeros(1, 4, 8, 8)))
        counts.append((ifa, blend))
        return start

    monkeypatch.setattr("cvgen.server.core.sampling.ddim_sample", fake_sample)
    for fraction in [i / 10 for i in range(11)]:
        h = Harmonizer(models.get("tiny"), params(steps=steps, strength=strength, tau=fraction, tau_b=fraction), None)
        zeros = torch.zeros(1, 4, 8, 8)
        h.generate(zeros, lambda i, n: None, FrameGuide(zeros, [zeros] * h.k, torch.zeros(1, 1, 8, 8)))
        ifa, blend = counts[-1]
        assert ifa == blend == int(h.k * fraction), (h.k, fraction, ifa, blend)


def test_every_form_of_the_foreground_harmonizes_alike(models, tmp_path):
    """A premultiplied RGBA fg with a separate matte (what the Nuke node sends), the same fg
    alone, and its straight RGB with the matte are one foreground: the results are identical."""
    shot = make_shot(tmp_path / "shot", range(1, 3))
    for f in (1, 2):
        fg = read_exr(frame_path(shot["fg"], f))
        alpha = fg.channel("A").astype(np.float32)
        rgb = fg.stack(("R", "G", "B"))
        straight = np.where(alpha[..., None] > 0, rgb / np.where(alpha > 0, alpha, 1)[..., None], 0)
        write_exr(tmp_path / "shot" / f"straight.{f:04d}.exr", Image(straight.astype(np.float32), ("R", "G", "B")))
        write_exr(tmp_path / "shot" / f"matte.{f:04d}.exr", Image(fg.channel("A"), ("A",)))
    matte = str(tmp_path / "shot" / "matte.####.exr")
    forms = {
        "rgba": shot,
        "rgba_matte": {**shot, "matte": matte},
        "straight_matte": {"plate": shot["plate"], "fg": str(tmp_path / "shot" / "straight.####.exr"), "matte": matte},
    }
    results = {name: render(inputs, tmp_path, models, name=name, frames=(1, 2)) for name, inputs in forms.items()}
    for f in (1, 2):
        reference = results["rgba"][f].pixels
        for name in ("rgba_matte", "straight_matte"):
            assert np.array_equal(results[name][f].pixels, reference), f"{name} differs on frame {f}"
