"""restyle on the built-in tiny models: agreement with diffusers' ControlNet pipeline (with and
without an IP-Adapter reference), omega's mix of frame-local and cross-frame predictions and what it
does to a shot, and strength's start from the plate's cached inversion."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionControlNetPipeline
from PIL import Image as PILImage
from support import make_shot

from cvgen.protocol import JobSpec
from cvgen.protocol.images import Image
from cvgen.server.core.attention import self_attention_processors
from cvgen.server.core.inversion import sampling_timesteps
from cvgen.server.core.latents import Padding
from cvgen.server.core.models import ModelCache, ModelRegistry
from cvgen.server.core.models.ip_adapter import applied
from cvgen.server.io.exr import read_exr, write_exr
from cvgen.server.jobs.runner import run_job
from cvgen.server.ops.restyle import OP, Restyler, control_image

FAST = {"steps": 4, "prompt": "a red car", "negative_prompt": "blurry"}
SIZE = (32, 48)  # a 4x6 latent
NO_PADDING = Padding(0, 0, 0, 0)
#: Both sides run the same float32 operations in the same order on the CPU: 0.0 is what they give.
TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def models() -> ModelCache:
    return ModelCache(ModelRegistry.load())


@pytest.fixture(scope="module")
def sd(models):
    return models.get("tiny")


@pytest.fixture(scope="module")
def controlnet(models):
    return models.get("tiny-controlnet", "controlnet")


def params(**overrides) -> dict:
    return OP.resolve_params({**FAST, **overrides})


def inverse_depth(size: tuple[int, int] = SIZE, shift: float = 0.0) -> np.ndarray:
    """A normalised inverse depth with structure in both directions; `shift` moves it sideways."""
    h, w = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.clip(0.1 + 0.7 * (x + shift) / w + 0.15 * np.sin(y / 4), 0, 1).astype(np.float32)


def controlnet_pipeline(sd, controlnet, components: dict | None = None) -> StableDiffusionControlNetPipeline:
    """diffusers' pipeline around the same parts restyle uses (or an applied adapter's `components`)."""
    parts = components or {
        "vae": sd.vae, "text_encoder": sd.text_encoder, "tokenizer": sd.tokenizer, "unet": sd.unet,
        "scheduler": DDIMScheduler.from_config(sd.scheduler.config), "safety_checker": None,
        "feature_extractor": None, "requires_safety_checker": False,
    }
    pipe = StableDiffusionControlNetPipeline(**parts, controlnet=controlnet.model)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def diffusers_latents(pipe, p: dict, control, noise, **extra) -> torch.Tensor:
    return pipe(p["prompt"], negative_prompt=p["negative_prompt"], image=control, latents=noise.clone(),
                output_type="latent", controlnet_conditioning_scale=p["structure_scale"],
                num_inference_steps=p["steps"], guidance_scale=p["guidance"], height=SIZE[0], width=SIZE[1],
                **extra).images


def no_steps(i: int, n: int) -> None:
    return None


# Agreement with diffusers ------------------------------------------------------------------------


@pytest.mark.parametrize(("guidance", "structure_scale"), [(1.0, 1.0), (7.5, 0.6)])
def test_generation_equals_diffusers_controlnet_pipeline(sd, controlnet, guidance, structure_scale):
    """At omega 0 without a reference, a frame is exactly what StableDiffusionControlNetPipeline makes."""
    p = params(guidance=guidance, structure_scale=structure_scale, omega=0.0)
    r = Restyler(sd, controlnet, p)
    control = control_image(inverse_depth(), p, NO_PADDING, sd.device, sd.dtype)
    noise = r.noise((1, 4, SIZE[0] // 8, SIZE[1] // 8), 3)
    with torch.no_grad():
        ours = r.generate(noise.clone(), control, no_steps)
    theirs = diffusers_latents(controlnet_pipeline(sd, controlnet), p, control, noise)
    diff = (ours - theirs).abs().max().item()
    print(f"max |ours - diffusers| = {diff:.3g} (guidance {guidance}, structure_scale {structure_scale})")
    assert diff <= TOLERANCE
    with torch.no_grad():
        inverted = r.generate(noise.clone(), 1 - control, no_steps)
    # The tiny ControlNet answers its conditioning image weakly, but far above the tolerance.
    assert (ours - inverted).abs().max() > 10 * TOLERANCE


@pytest.mark.parametrize("guidance", [1.0, 7.5])
def test_reference_equals_diffusers_pipeline_with_ip_adapter_image(models, sd, controlnet, guidance):
    """With a reference, a frame is what the pipeline with the adapter loaded makes from `ip_adapter_image`."""
    adapter = models.get("tiny-ip-adapter", "ip_adapter")
    p = params(guidance=guidance, structure_scale=0.8, reference_scale=0.7, omega=0.0)
    reference = PILImage.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8))
    r = Restyler(sd, controlnet, p)
    control = control_image(inverse_depth(), p, NO_PADDING, sd.device, sd.dtype)
    noise = r.noise((1, 4, SIZE[0] // 8, SIZE[1] // 8), 5)
    with torch.no_grad():
        without = r.generate(noise.clone(), control, no_steps)
        with applied(sd, adapter, p["reference_scale"]) as active:
            r.image_embeds = active.image_embeds(reference, guidance > 1)
            ours = r.generate(noise.clone(), control, no_steps)
            pipe = controlnet_pipeline(sd, controlnet, active.pipe.components)
            theirs = diffusers_latents(pipe, p, control, noise, ip_adapter_image=reference)
    diff = (ours - theirs).abs().max().item()
    print(f"max |ours - diffusers with ip_adapter_image| = {diff:.3g} (guidance {guidance})")
    assert diff <= TOLERANCE
    assert (ours - without).abs().max() > 1e-3  # the reference changes the frame


# omega ---------------------------------------------------------------------------------------


def write_shot(folder: Path, count: int, static: bool = False) -> dict[str, str]:
    """Plate and Z-depth (distance) sequences 1..count; `static`: every frame the same as frame 1."""
    shot = make_shot(folder, range(1, count + 1), SIZE)
    first = read_exr(folder / "plate.0001.exr")
    for f in range(1, count + 1):
        if static:
            write_exr(folder / f"plate.{f:04d}.exr", first)
        distance = 1.0 / (0.05 + inverse_depth(shift=0.0 if static else 3.0 * f))
        write_exr(folder / f"depth.{f:04d}.exr", Image(distance[..., None].astype(np.float32), ("Z",)))
    return {"plate": shot["plate"], "depth": str(folder / "depth.####.exr")}


def render(inputs: dict[str, str], out: Path, models, count: int, name: str, **overrides) -> dict[int, np.ndarray]:
    spec = JobSpec("restyle", (1, count), inputs, params={**FAST, **overrides}, name=name, seed=11)
    run_job(spec, out / name, models=models)
    return {f: read_exr(out / name / f"{name}.{f:04d}.exr").pixels.astype(np.float32) for f in range(1, count + 1)}


def test_a_static_shot_stays_still_at_omega_1(models, sd, controlnet, tmp_path):
    """Every frame of a still shot attends to copies of its own keys and values: nothing moves."""
    frames = render(write_shot(tmp_path / "shot", 5, static=True), tmp_path, models, 5, "still", omega=1.0,
                    guidance=1.0)
    worst_pixel = max(float((np.abs(frames[f] - frames[1]) / np.maximum(np.abs(frames[1]), 1.0)).max())
                      for f in range(2, 6))

    p = params(omega=1.0, guidance=1.0)
    r = Restyler(sd, controlnet, p)
    control = control_image(inverse_depth(), p, NO_PADDING, sd.device, sd.dtype)
    noise = r.noise((1, 4, SIZE[0] // 8, SIZE[1] // 8), 11)
    with torch.no_grad(), \
            self_attention_processors(sd.unet, r.xfa.processor), \
            self_attention_processors(controlnet.model, lambda n: r.xfa.processor("controlnet." + n)):
        # the anchor, a frame after the anchor alone, a frame after the anchor and a previous frame
        latents = [r.generate(noise.clone(), control, no_steps) for _ in range(3)]
    worst_latent = max((z - latents[0]).abs().max().item() for z in latents[1:])
    scale = latents[0].abs().max().item()
    print(f"still shot: max |frame - frame 1| relative in output pixels {worst_pixel:.3g}, in latents "
          f"{worst_latent:.3g} (latents up to {scale:.3g})")
    assert worst_latent <= 1e-5 * scale  # float32 rounding of softmax over copies of the same keys
    assert worst_pixel <= 2**-10  # one step of the output EXR's half floats


def test_omega_mixes_the_frame_local_and_cross_frame_predictions(models, sd, controlnet):
    """Per step e = e_img + omega (e_vid - e_img) under guidance and a reference, from one model call."""
    adapter = models.get("tiny-ip-adapter", "ip_adapter")
    p = params(omega=0.5)
    r = Restyler(sd, controlnet, p)
    control = control_image(inverse_depth(), p, NO_PADDING, sd.device, sd.dtype)
    noise = r.noise((1, 4, SIZE[0] // 8, SIZE[1] // 8), 1)
    later = noise + 0.5 * torch.randn(noise.shape, generator=torch.Generator().manual_seed(2))
    t = sampling_timesteps(sd.scheduler, p["steps"])[0]
    reference = PILImage.fromarray(np.random.default_rng(3).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    xfa = r.xfa
    with torch.no_grad(), applied(sd, adapter, p["reference_scale"]) as active, \
            self_attention_processors(sd.unet, xfa.processor), \
            self_attention_processors(controlnet.model, lambda n: xfa.processor("controlnet." + n)):
        r.image_embeds = active.image_embeds(reference, True)
        alone = r.eps(control)(later, t)  # before the anchor: frame-local attention only
        r.generate(noise.clone(), control, no_steps)
        xfa.begin_frame(r.k)
        xfa.set_step(0)
        predictions = {}
        for omega in (0.0, 0.5, 1.0):
            r.omega = omega
            predictions[omega] = r.eps(control)(later, t)
        xfa.end_frame()
    scale = alone.abs().max().item()
    local_diff = (predictions[0.0] - alone).abs().max().item()
    mix_diff = (predictions[0.5] - (predictions[0.0] + predictions[1.0]) / 2).abs().max().item()
    print(f"omega 0 vs frame-local call {local_diff:.3g}; omega 0.5 vs the mean of omega 0 and 1 {mix_diff:.3g} "
          f"(predictions up to {scale:.3g})")
    # float32 rounding only: the batch differs (4 rows against 2) and guidance amplifies it
    assert local_diff <= 1e-5 * scale and mix_diff <= 1e-5 * scale
    assert (predictions[1.0] - predictions[0.0]).abs().max() > 1e-3


def test_omega_changes_the_frames_after_the_first_and_not_the_first(models, tmp_path):
    """From the plates' inversions (which differ frame to frame; the tiny ControlNet barely tells
    the depths apart), omega decides how much each later frame takes from the first and previous."""
    inputs = write_shot(tmp_path / "shot", 3)
    by_omega = {omega: render(inputs, tmp_path, models, 3, f"omega{omega}", omega=omega, strength=0.5)
                for omega in (0.0, 0.5, 1.0)}
    for omega in (0.5, 1.0):
        assert np.array_equal(by_omega[omega][1], by_omega[0.0][1])
    changes = {(f, a, b): float(np.abs(by_omega[a][f] - by_omega[b][f]).max())
               for f in (2, 3) for a, b in ((0.0, 0.5), (0.5, 1.0), (0.0, 1.0))}
    print(f"largest pixel change between omegas (frame, omega, omega): {changes}")
    assert min(changes.values()) > 1e-2


# strength < 1 --------------------------------------------------------------------------------


def test_strength_starts_from_the_plates_cached_inversion(models, tmp_path, monkeypatch):
    monkeypatch.setenv("CVGEN_CACHE", str(tmp_path / "cache"))
    inputs = write_shot(tmp_path / "shot", 2)
    full = render(inputs, tmp_path, models, 2, "full", strength=1.0, omega=0.0)
    first = render(inputs, tmp_path, models, 2, "first", strength=0.5, omega=0.0)
    entries = sorted(p.name for p in (tmp_path / "cache" / "inversion").iterdir())
    assert len(entries) == 2  # one per frame
    stamps = {name: (tmp_path / "cache" / "inversion" / name).stat().st_mtime_ns for name in entries}
    again = render(inputs, tmp_path, models, 2, "again", strength=0.5, omega=0.0)
    assert sorted(p.name for p in (tmp_path / "cache" / "inversion").iterdir()) == entries
    assert {name: (tmp_path / "cache" / "inversion" / name).stat().st_mtime_ns for name in entries} == stamps
    for f in (1, 2):
        assert np.abs(first[f] - full[f]).max() > 1e-3
        assert np.array_equal(again[f], first[f])
