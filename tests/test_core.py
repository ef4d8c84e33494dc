"""Diffusion building blocks: latents, DDIM inversion and sampling, mattes, attention processors.

Numerics are checked against diffusers itself (its pipelines and default attention processor) on
the built-in tiny model, and inversion against an analytic noise model where the round trip is
exact.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from cvgen.server.core.attention import (
    CrossFrameAttention,
    InterFrameAttention,
    self_attention_layers,
    self_attention_processors,
)
from cvgen.server.core.inversion import ddim_invert, sampling_timesteps, unet_eps
from cvgen.server.core.latents import Padding, crop, decode, encode, pad_to_multiple
from cvgen.server.core.mattes import binarize, dilate, latent_grid, to_grid
from cvgen.server.core.sampling import ddim_sample, frame_generator, guided_eps
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from diffusers.models.attention_processor import AttnProcessor2_0, IPAdapterAttnProcessor2_0

#: Stable Diffusion 1.x/2.x's DDIM configuration (the tiny model's too).
SD_DDIM = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
           "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1}


# -- fixtures ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def unet(tiny_model_path: Path) -> UNet2DConditionModel:
    return UNet2DConditionModel.from_pretrained(tiny_model_path, subfolder="unet", local_files_only=True).eval()


@pytest.fixture(scope="module")
def vae(tiny_model_path: Path) -> AutoencoderKL:
    return AutoencoderKL.from_pretrained(tiny_model_path, subfolder="vae", local_files_only=True).eval()


@pytest.fixture(scope="module")
def scheduler(tiny_model_path: Path) -> DDIMScheduler:
    return DDIMScheduler.from_pretrained(tiny_model_path, subfolder="scheduler", local_files_only=True)


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _embeddings(seed: int) -> torch.Tensor:
    return _randn(1, 77, 32, seed=seed)


# -- inversion with an analytic noise model -----------------------------------------------------

def _analytic(scheduler: DDIMScheduler, shape: tuple[int, ...], dtype: torch.dtype = torch.float32):
    """A noise model that depends on t only, as the scheduler's prediction_type expresses it."""
    base, wobble = _randn(*shape, seed=1).to(dtype), _randn(*shape, seed=2).to(dtype)
    alphas = scheduler.alphas_cumprod
    calls: list[int] = []

    def noise(t: int) -> torch.Tensor:
        return base * torch.sin(torch.tensor(t / 100.0, dtype=dtype)) + 0.3 * wobble * torch.cos(torch.tensor(t / 37.0, dtype=dtype))

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls.append(int(t))
        e = noise(int(t))
        if scheduler.config.prediction_type == "epsilon":
            return e
        a = alphas[int(t)]
        # v = sqrt(a) eps - sqrt(1 - a) x0 with x0 = (x - sqrt(1 - a) eps) / sqrt(a), i.e.
        # eps = sqrt(a) v + sqrt(1 - a) x (written with the scheduler's own roundings of the roots)
        return (e - (1 - a) ** 0.5 * x) / a**0.5

    return model, calls


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize(("steps", "k"), [(20, 20), (20, 1), (20, 10), (7, 3), (50, 35)])
def test_inversion_then_sampling_returns_z0_with_an_analytic_model(prediction_type, spacing, steps, k, dtype) -> None:
    sched = DDIMScheduler(**SD_DDIM, prediction_type=prediction_type, timestep_spacing=spacing)
    z0 = _randn(1, 4, 8, 8, seed=3).to(dtype)
    model, calls = _analytic(sched, z0.shape, dtype)
    timesteps = sampling_timesteps(sched, steps)

    path = ddim_invert(model, sched, z0, steps, k)

    assert len(path) == k
    assert calls == [int(t) for t in timesteps.flip(0)[:k]]  # the k smallest, ascending
    back = ddim_sample(model, sched, path[-1], timesteps[steps - k:])
    error = (back - z0).abs().max().item()
    assert back.dtype == dtype
    # Exact up to rounding: float32 rounding (measured up to 9e-6 at 50 of 50 steps); in float64
    # the eps round trip is exact to 1e-12, while DDIMScheduler's v-to-eps conversion uses float32
    # roots (sqrt(a)^2 + sqrt(1 - a)^2 != 1 in float32), which bounds v-models at ~1e-6.
    tolerance = 1e-12 if dtype == torch.float64 and prediction_type == "epsilon" else 1e-5
    assert error < tolerance, error
    assert sched.num_inference_steps is None  # the shared scheduler was not configured by us


def test_inversion_step_is_the_methods_formula() -> None:
    """One step from z0 (at final_alpha_cumprod) up to t_1, by METHODS.md's two equations."""
    sched = DDIMScheduler(**SD_DDIM)
    z0 = _randn(1, 4, 8, 8, seed=4)
    model, _ = _analytic(sched, z0.shape)
    t1 = int(sampling_timesteps(sched, 10)[-1])
    e = model(z0, torch.tensor(t1))
    a0, a1 = sched.final_alpha_cumprod, sched.alphas_cumprod[t1]
    expected = a1.sqrt() * (z0 - (1 - a0).sqrt() * e) / a0.sqrt() + (1 - a1).sqrt() * e
    (z1,) = ddim_invert(model, sched, z0, 10, 1)
    torch.testing.assert_close(z1, expected, rtol=0, atol=1e-6)


def test_inversion_reports_steps_and_can_be_cancelled() -> None:
    sched = DDIMScheduler(**SD_DDIM)
    z0 = _randn(1, 4, 8, 8)
    model, calls = _analytic(sched, z0.shape)
    seen: list[tuple[int, int]] = []
    ddim_invert(model, sched, z0, 10, 4, on_step=lambda i, n: seen.append((i, n)))
    assert seen == [(0, 4), (1, 4), (2, 4), (3, 4)]

    class Cancelled(Exception):
        pass

    def cancel(i: int, n: int) -> None:
        if i == 2:
            raise Cancelled

    calls.clear()
    with pytest.raises(Cancelled):
        ddim_invert(model, sched, z0, 10, 4, on_step=cancel)
    assert len(calls) == 2
    with pytest.raises(ValueError, match="k must be between 1 and steps"):
        ddim_invert(model, sched, z0, 10, 11)


# -- inversion and sampling with the tiny UNet --------------------------------------------------

def test_tiny_unet_inversion_round_trip(unet, scheduler) -> None:
    z0 = _randn(1, 4, 8, 8, seed=5)
    eps = unet_eps(unet, _embeddings(6))
    errors = {}
    for steps, k in [(10, 5), (40, 20)]:
        path = ddim_invert(eps, scheduler, z0, steps, k)
        back = ddim_sample(eps, scheduler, path[-1], sampling_timesteps(scheduler, steps)[steps - k:])
        errors[steps] = (back - z0).abs().max().item()
        print(f"tiny UNet round trip, strength 0.5 over {steps} steps: max abs error {errors[steps]:.2e}")
    # The only approximation is eps(z_lower, t) ~ eps(z_upper, t): first order in the step size.
    # The tiny model's random weights make eps depend on the latent more than a trained model's.
    assert errors[10] < 0.2 and errors[40] < 0.06
    assert errors[40] < errors[10] / 2


def test_full_inversion_matches_diffusers_inverse_scheduler(unet, scheduler) -> None:
    """For epsilon models diffusers 0.42's DDIMInverseScheduler takes the same steps as ours."""
    from diffusers import DDIMInverseScheduler

    z0, steps = _randn(1, 4, 8, 8, seed=14), 8
    eps = unet_eps(unet, _embeddings(15))
    inverse = DDIMInverseScheduler.from_config(scheduler.config)
    inverse.set_timesteps(steps)
    z, expected = z0, []
    for t in inverse.timesteps:
        z = inverse.step(eps(z, t), t, z, return_dict=False)[0]
        expected.append(z)
    got = ddim_invert(eps, scheduler, z0, steps, steps)
    diff = max((a - b).abs().max().item() for a, b in zip(got, expected))
    print(f"ddim_invert vs DDIMInverseScheduler: max abs diff {diff:.2e}")
    assert diff < 1e-5, diff


def test_ddim_sample_matches_stable_diffusion_pipeline(tiny_model_path) -> None:
    pipe = StableDiffusionPipeline.from_pretrained(tiny_model_path, local_files_only=True, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    cond, uncond = _embeddings(7), _embeddings(8)
    z_t = _randn(1, 4, 8, 8, seed=9)
    steps, guidance = 6, 5.0

    expected = pipe(prompt_embeds=cond, negative_prompt_embeds=uncond, latents=z_t.clone(), height=64, width=64,
                    num_inference_steps=steps, guidance_scale=guidance, output_type="latent").images
    got = ddim_sample(guided_eps(pipe.unet, cond, uncond, guidance), pipe.scheduler, z_t,
                      sampling_timesteps(pipe.scheduler, steps), steps=steps)

    diff = (got - expected).abs().max().item()
    print(f"ddim_sample vs StableDiffusionPipeline: max abs diff {diff:.2e}")
    assert diff < 1e-5, diff


def test_partial_sampling_matches_img2img_pipeline(tiny_model_path) -> None:
    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(tiny_model_path, local_files_only=True, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    cond, uncond = _embeddings(10), _embeddings(11)
    z0 = _randn(1, 4, 8, 8, seed=12)  # a 4-channel "image" is taken as latents by img2img
    steps, k, guidance = 10, 4, 3.0

    expected = pipe(prompt_embeds=cond, negative_prompt_embeds=uncond, image=z0.clone(), strength=k / steps,
                    num_inference_steps=steps, guidance_scale=guidance, output_type="latent",
                    generator=torch.Generator().manual_seed(13)).images
    timesteps = sampling_timesteps(pipe.scheduler, steps)[steps - k:]
    noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(13))
    start = pipe.scheduler.add_noise(z0, noise, timesteps[:1])
    got = ddim_sample(guided_eps(pipe.unet, cond, uncond, guidance), pipe.scheduler, start, timesteps)

    diff = (got - expected).abs().max().item()
    print(f"partial ddim_sample vs StableDiffusionImg2ImgPipeline: max abs diff {diff:.2e}")
    assert diff < 1e-5, diff


def test_ddim_sample_hooks_and_schedule_checks(unet, scheduler) -> None:
    z = _randn(1, 4, 8, 8)
    timesteps = sampling_timesteps(scheduler, 8)[4:]
    seen: list[tuple[int, int]] = []
    blended: list[int] = []

    def after(i: int, latents: torch.Tensor) -> torch.Tensor:
        blended.append(i)
        return torch.zeros_like(latents) if i == 3 else latents

    out = ddim_sample(unet_eps(unet, _embeddings(0)), scheduler, z, timesteps,
                      on_step=lambda i, n: seen.append((i, n)), after_step=after)
    assert seen == [(i, 4) for i in range(4)] and blended == [0, 1, 2, 3]
    assert torch.equal(out, torch.zeros_like(z))
    with pytest.raises(ValueError, match="not the last 4 of the 5-step schedule"):
        ddim_sample(unet_eps(unet, _embeddings(0)), scheduler, z, timesteps, steps=5)


def test_guided_eps_calls_the_unet_once_per_step(unet) -> None:
    calls: list[int] = []

    def counting(x, t, encoder_hidden_states, return_dict):
        calls.append(x.shape[0])
        assert encoder_hidden_states.shape[0] == x.shape[0]
        return unet(x, t, encoder_hidden_states=encoder_hidden_states, return_dict=return_dict)

    z, t = _randn(2, 4, 8, 8), torch.tensor(501)
    cond, uncond = _embeddings(1), _embeddings(2)
    plain = guided_eps(counting, cond, uncond, 1.0)(z, t)
    torch.testing.assert_close(plain, unet_eps(unet, cond)(z, t), rtol=0, atol=0)
    guided_eps(counting, cond, uncond, 7.5)(z, t)
    assert calls == [2, 4]


def test_frame_generator_is_per_frame_and_order_free() -> None:
    def noise(seed: int, frame: int) -> torch.Tensor:
        return torch.randn(4, generator=frame_generator(seed, frame, "cpu"))

    first = [noise(42, f) for f in range(5)]
    assert torch.equal(noise(42, 3), first[3])  # rendering frame 3 alone gives the same noise
    assert not torch.equal(first[0], first[1])
    assert not torch.equal(noise(43, 0), noise(42, 1))


# -- attention processors ----------------------------------------------------------------------

class _Marker:
    """A processor that only raises if used: enough to check what gets installed where."""

    def __call__(self, *args, **kwargs):  # pragma: no cover - never called
        raise AssertionError("marker processor called")


def test_self_attention_processors_replace_attn1_only_and_restore(unet) -> None:
    before = dict(unet.attn_processors)
    names = self_attention_layers(unet)
    assert names and all(n.endswith("attn1.processor") for n in names)
    assert len(names) == sum(n.endswith("attn2.processor") for n in before)

    with self_attention_processors(unet, lambda name: _Marker()):
        during = unet.attn_processors
        for name, proc in during.items():
            if name in names:
                assert isinstance(proc, _Marker)
            else:
                assert proc is before[name]
    assert all(proc is before[name] for name, proc in unet.attn_processors.items())

    with pytest.raises(RuntimeError, match="boom"), self_attention_processors(unet, lambda name: _Marker()):
        raise RuntimeError("boom")
    assert all(proc is before[name] for name, proc in unet.attn_processors.items())


def _half_matte() -> torch.Tensor:
    matte = torch.zeros(1, 1, 8, 8)
    matte[..., :, :4] = 1.0
    return matte


def _run_frame(unet, ifa, z, t, emb, matte, steps, step):
    ifa.begin_frame(matte, steps)
    ifa.set_step(step)
    out = unet(z, t, encoder_hidden_states=emb, return_dict=False)[0]
    ifa.end_frame()
    return out


@torch.no_grad()
def test_ifa_without_previous_frame_is_bit_identical_to_default(unet) -> None:
    z, t, emb = _randn(2, 4, 8, 8, seed=20), torch.tensor(701), _embeddings(21).expand(2, -1, -1)
    plain = unet(z, t, encoder_hidden_states=emb, return_dict=False)[0]
    ifa = InterFrameAttention(tau=0.6)
    with self_attention_processors(unet, ifa.processor):
        out = _run_frame(unet, ifa, z, t, emb, _half_matte(), steps=5, step=0)
        outside = unet(z, t, encoder_hidden_states=emb, return_dict=False)[0]  # no frame begun
    assert torch.equal(out, plain)
    assert torch.equal(outside, plain)
    assert ifa.cache_bytes > 0  # frame 0 recorded its foreground for frame 1


@torch.no_grad()
def test_ifa_uses_the_previous_frame_within_tau(unet) -> None:
    z0, z1 = _randn(1, 4, 8, 8, seed=22), _randn(1, 4, 8, 8, seed=23)
    t, emb, steps = torch.tensor(501), _embeddings(24), 4
    plain1 = unet(z1, t, encoder_hidden_states=emb, return_dict=False)[0]

    def second_frame(tau: float, step: int) -> torch.Tensor:
        ifa = InterFrameAttention(tau)
        with self_attention_processors(unet, ifa.processor):
            _run_frame(unet, ifa, z0, t, emb, _half_matte(), steps, step)
            return _run_frame(unet, ifa, z1, t, emb, _half_matte(), steps, step)

    assert (second_frame(0.5, 0) - plain1).abs().max() > 1e-4  # step 0 < 0.5 * 4: extended
    assert (second_frame(0.5, 1) - plain1).abs().max() > 1e-4
    assert torch.equal(second_frame(0.5, 2), plain1)  # step 2 is past tau
    assert torch.equal(second_frame(0.0, 0), plain1)  # tau 0: never

    # A previous frame without foreground adds nothing.
    ifa = InterFrameAttention(1.0)
    with self_attention_processors(unet, ifa.processor):
        _run_frame(unet, ifa, z0, t, emb, torch.zeros(1, 1, 8, 8), steps, 0)
        assert ifa.cache_bytes == 0
        assert torch.equal(_run_frame(unet, ifa, z1, t, emb, _half_matte(), steps, 0), plain1)


@torch.no_grad()
def test_ifa_with_an_identical_previous_frame_changes_nothing(unet) -> None:
    """Appending a copy of every own key/value leaves softmax attention unchanged: an exact check
    that the previous frame's K/V land on the same layer, step and batch element."""
    z, t = _randn(2, 4, 8, 8, seed=25), torch.tensor(301)
    emb = torch.cat([_embeddings(26), _embeddings(27)])  # a CFG-style batch of two
    plain = unet(z, t, encoder_hidden_states=emb, return_dict=False)[0]
    ifa = InterFrameAttention(1.0)
    with self_attention_processors(unet, ifa.processor):
        _run_frame(unet, ifa, z, t, emb, torch.ones(1, 1, 8, 8), 3, 1)
        again = _run_frame(unet, ifa, z, t, emb, torch.ones(1, 1, 8, 8), 3, 1)
        swapped = _run_frame(unet, ifa, z, t, emb.flip(0), torch.ones(1, 1, 8, 8), 3, 1)
    torch.testing.assert_close(again, plain, rtol=0, atol=1e-5)
    assert (swapped - unet(z, t, encoder_hidden_states=emb.flip(0), return_dict=False)[0]).abs().max() > 1e-4


@torch.no_grad()
def test_ifa_records_foreground_tokens_only_and_does_not_grow(unet) -> None:
    z, t, emb, steps = _randn(1, 4, 8, 8, seed=28), torch.tensor(401), _embeddings(29), 4

    def frame_bytes(matte: torch.Tensor) -> int:
        ifa = InterFrameAttention(1.0)
        with self_attention_processors(unet, ifa.processor):
            _run_frame(unet, ifa, z, t, emb, matte, steps, 0)
        return ifa.cache_bytes

    assert frame_bytes(_half_matte()) * 2 == frame_bytes(torch.ones(1, 1, 8, 8))

    ifa = InterFrameAttention(0.5)
    sizes = []
    with self_attention_processors(unet, ifa.processor):
        for frame in range(10):
            ifa.begin_frame(_half_matte(), steps)
            for step in range(steps):
                ifa.set_step(step)
                unet(z + 0.01 * frame, t, encoder_hidden_states=emb, return_dict=False)
            ifa.end_frame()
            sizes.append(ifa.cache_bytes)
    assert sizes[1] == sizes[9] > 0
    ifa.reset()
    assert ifa.cache_bytes == 0


@torch.no_grad()
def test_ifa_on_an_odd_latent_size(unet) -> None:
    """A 37x53 plate gives a 5x7 latent; the UNet's deeper grid is 3x4 (stride-2, rounded up)."""
    z0, z1 = _randn(1, 4, 5, 7, seed=40), _randn(1, 4, 5, 7, seed=41)
    t, emb = torch.tensor(601), _embeddings(42)
    matte = to_grid(torch.ones(1, 1, 37, 53).tril(), (5, 7))
    ifa = InterFrameAttention(1.0)
    with self_attention_processors(unet, ifa.processor):
        _run_frame(unet, ifa, z0, t, emb, matte, 2, 0)
        out = _run_frame(unet, ifa, z1, t, emb, matte, 2, 0)
    plain = unet(z1, t, encoder_hidden_states=emb, return_dict=False)[0]
    assert out.shape == plain.shape and (out - plain).abs().max() > 1e-4


def test_ifa_checks_its_state() -> None:
    ifa = InterFrameAttention(0.6)
    with pytest.raises(RuntimeError, match="before begin_frame"):
        ifa.set_step(0)
    with pytest.raises(ValueError, match="tau"):
        InterFrameAttention(1.5)
    ifa.begin_frame(torch.ones(1, 1, 4, 4), 3)
    with pytest.raises(ValueError, match="step must be between 0 and 2"):
        ifa.set_step(3)


# -- latents -----------------------------------------------------------------------------------

def test_pad_replicates_edges_and_crop_undoes_it() -> None:
    images = _randn(2, 3, 37, 53)
    padded, padding = pad_to_multiple(images, 8)
    assert padded.shape == (2, 3, 40, 56)
    assert padding == Padding(top=0, bottom=3, left=0, right=3)
    assert torch.equal(padded[..., :37, :53], images)
    assert torch.equal(padded[..., 39, :53], images[..., 36, :])
    assert torch.equal(padded[..., :37, 55], images[..., :, 52])
    assert torch.equal(padded[..., 39, 55], images[..., 36, 52])
    assert torch.equal(crop(padded, padding), images)
    assert crop(torch.zeros(1, 4, 5, 7), padding, scale=8).shape == (1, 4, 5, 7)
    assert crop(torch.zeros(1, 1, 20, 28), Padding(0, 6, 0, 4), scale=2).shape == (1, 1, 17, 26)
    same, none = pad_to_multiple(_randn(1, 3, 16, 24), 8)
    assert none == Padding(0, 0, 0, 0) and same.shape == (1, 3, 16, 24)


def test_encode_decode_odd_sizes_deterministically(vae) -> None:
    images = torch.rand(1, 3, 37, 53, generator=torch.Generator().manual_seed(30)) * 2 - 1
    z, padding = encode(vae, images)
    assert z.shape == (1, 4, 5, 7)
    again, _ = encode(vae, images)
    assert torch.equal(z, again)
    out = decode(vae, z, padding)
    assert out.shape == (1, 3, 37, 53) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    # The scale factor is applied: z equals the scaled latent mean of the padded image.
    padded, _ = pad_to_multiple(images, 8)
    with torch.no_grad():
        mean = vae.encode(padded).latent_dist.mean
    torch.testing.assert_close(z, mean * vae.config.scaling_factor)


def test_large_plates_are_tiled(tiny_model_path, vae, monkeypatch) -> None:
    small = AutoencoderKL.from_pretrained(tiny_model_path, subfolder="vae", local_files_only=True,
                                          sample_size=64).eval()
    used: list[str] = []
    real_encode, real_decode = small._tiled_encode, small.tiled_decode
    monkeypatch.setattr(small, "_tiled_encode", lambda x: used.append("encode") or real_encode(x))
    monkeypatch.setattr(small, "tiled_decode", lambda z, **kw: used.append("decode") or real_decode(z, **kw))
    images = torch.rand(1, 3, 100, 90, generator=torch.Generator().manual_seed(31)) * 2 - 1

    z, padding = encode(small, images)
    out = decode(small, z, padding)
    assert used == ["encode", "decode"]
    assert not small.use_tiling  # switched back off
    assert z.shape == (1, 4, 13, 12) and out.shape == (1, 3, 100, 90) and torch.isfinite(out).all()

    # Tiling is not exact: GroupNorm statistics and the VAE's mid-block attention see one tile
    # instead of the plate, which the tiny model's random weights make visible; report it.
    z_whole, _ = encode(vae, images)  # same weights, native size 256: not tiled
    print(f"tiled vs whole encode: mean abs diff {(z - z_whole).abs().mean().item():.2e}"
          f" (mean abs latent {z_whole.abs().mean().item():.2e})")

    before = len(used)
    encode(small, images[..., :64, :64])  # at the native size: whole
    assert len(used) == before
    small.enable_tiling()  # a caller's own setting is left as it was
    encode(small, images)
    assert small.use_tiling


# -- mattes ------------------------------------------------------------------------------------

def test_to_grid_averages_areas() -> None:
    matte = torch.zeros(1, 1, 4, 4)
    matte[..., 0, 0] = 1.0
    matte[..., 2:, 2:] = 1.0
    matte[..., 0:2, 2:4] = 0.5
    grid = to_grid(matte, (2, 2))
    torch.testing.assert_close(grid, torch.tensor([[[[0.25, 0.5], [0.0, 1.0]]]]))
    assert to_grid(matte, (4, 4)) is matte
    assert to_grid(torch.ones(2, 1, 37, 53), (5, 7)).shape == (2, 1, 5, 7)


def test_binarize_and_dilate() -> None:
    assert binarize(torch.tensor([0.0, 0.49, 0.5, 0.9])).tolist() == [0.0, 0.0, 1.0, 1.0]
    assert binarize(torch.tensor([0.2, 0.4]), threshold=0.3).tolist() == [0.0, 1.0]
    matte = torch.zeros(1, 1, 7, 7)
    matte[..., 3, 3] = 1.0
    grown = dilate(matte)
    expected = torch.zeros(1, 1, 7, 7)
    expected[..., 2:5, 2:5] = 1.0
    assert torch.equal(grown, expected)
    assert dilate(matte, 2).sum() == 25
    edge = torch.zeros(1, 1, 4, 4)
    edge[..., 0, 0] = 1.0
    assert dilate(edge).sum() == 4  # no wrap-around at the border


def _odd_matte(height: int, width: int) -> torch.Tensor:
    """A soft disk and a slanted edge: boundaries cross latent cells at every offset."""
    y, x = torch.meshgrid(torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64),
                          indexing="ij")
    disk = (0.3 * height - ((y - 0.45 * height) ** 2 + (x - 0.4 * width) ** 2).sqrt()).clamp(0, 1)
    slant = ((x - 0.7 * width) + 0.3 * (y - height)).clamp(0, 1)
    return torch.maximum(disk, slant).float()[None, None]


def _reference_grid(matte: torch.Tensor, scale: int) -> torch.Tensor:
    """Each latent cell's mean over the 8x8 pixels it encodes, the image edge-replicated to a multiple."""
    height, width = matte.shape[-2:]
    rows = torch.arange(-(-height // scale) * scale).clamp(max=height - 1)
    cols = torch.arange(-(-width // scale) * scale).clamp(max=width - 1)
    padded = matte[..., rows[:, None], cols[None, :]].double()
    h, w = padded.shape[-2] // scale, padded.shape[-1] // scale
    return padded.reshape(1, 1, h, scale, w, scale).mean(dim=(3, 5))


@pytest.mark.parametrize("width, height", [(2048, 858), (1998, 1080), (53, 37)])
def test_latent_matte_lines_up_with_the_padded_latents(width, height) -> None:
    """The latents of an odd-sized plate come from its padded image; its matte must be padded the same way."""
    matte = _odd_matte(height, width)
    _, padding = pad_to_multiple(torch.zeros(1, 3, height, width), 8)
    ours = latent_grid(matte, padding, 8)
    reference = _reference_grid(matte, 8)
    flipped = int((binarize(ours) != binarize(reference.float())).sum())
    print(f"{width}x{height}: {flipped} latent cells differ from the reference")
    assert flipped == 0
    torch.testing.assert_close(ours.double(), reference, atol=1e-6, rtol=0)


# -- step counts -------------------------------------------------------------------------------

def test_strength_gives_diffusers_img2img_step_count(scheduler) -> None:
    """Every (steps, strength) pair inverts and regenerates as many steps as diffusers' img2img runs."""
    from types import SimpleNamespace

    from cvgen.server.core.sampling import strength_steps

    strengths = [i / 100 for i in range(101)] + [0.55, 0.35, 0.45, 0.15, 0.85]
    disagree = []
    for steps in range(1, 101):
        pipe = SimpleNamespace(scheduler=DDIMScheduler.from_config(scheduler.config))
        pipe.scheduler.set_timesteps(steps)
        for strength in strengths:
            _, theirs = StableDiffusionImg2ImgPipeline.get_timesteps(pipe, steps, strength, "cpu")
            if theirs < 1:
                continue
            if strength_steps({"steps": steps, "strength": strength}) != theirs:
                disagree.append((steps, strength))
    print(f"{len(disagree)} (steps, strength) pairs disagree with diffusers: {disagree[:5]}")
    assert disagree == []


# -- restyle's cross-frame attention (CrossFrameAttention) -------------------------------------

def _xfa_frame(unet, xfa: CrossFrameAttention, z: torch.Tensor, t: torch.Tensor, emb: torch.Tensor,
               local_rows: int = 0, **kwargs) -> torch.Tensor:
    """One frame of one step (of two) through `unet` with `xfa` installed."""
    xfa.begin_frame(2)
    xfa.local_rows = local_rows
    xfa.set_step(0)
    out = unet(z, t, encoder_hidden_states=emb, return_dict=False, **kwargs)[0]
    xfa.end_frame()
    return out


@torch.no_grad()
def test_cross_frame_anchor_attends_plainly(unet) -> None:
    """The shot's first frame is generated exactly as without restyle's attention."""
    assert all(isinstance(unet.attn_processors[name], AttnProcessor2_0) for name in self_attention_layers(unet))
    z, later, t = _randn(2, 4, 8, 8, seed=50), _randn(2, 4, 8, 8, seed=51), torch.tensor(601)
    emb = torch.cat([_embeddings(52), _embeddings(53)])
    xfa = CrossFrameAttention()
    with self_attention_processors(unet, xfa.processor):
        anchor = _xfa_frame(unet, xfa, z, t, emb)
        assert xfa.has_anchor
        second = _xfa_frame(unet, xfa, later, t, emb)
    assert torch.equal(anchor, unet(z, t, encoder_hidden_states=emb, return_dict=False)[0])
    assert (second - unet(later, t, encoder_hidden_states=emb, return_dict=False)[0]).abs().max() > 1e-4


@torch.no_grad()
def test_cross_frame_cache_holds_the_anchor_and_about_one_frame(unet) -> None:
    """However long the shot, the K/V held stay those of the anchor and one more frame."""
    z, t, emb, steps = _randn(1, 4, 4, 4, seed=54), torch.tensor(401), _embeddings(55), 2
    xfa = CrossFrameAttention()
    after, peak = [], []
    with self_attention_processors(unet, xfa.processor):
        for frame in range(21):
            xfa.begin_frame(steps)
            for step in range(steps):
                xfa.set_step(step)
                unet(z + 0.01 * frame, t, encoder_hidden_states=emb, return_dict=False)
            peak.append(xfa.cache_bytes)
            xfa.end_frame()
            after.append(xfa.cache_bytes)
    one_frame = after[0]  # the anchor alone
    print(f"K/V held: anchor {one_frame} B, after frame 3 {after[3]} B, after frame 20 {after[20]} B, "
          f"peak in frame 20 {peak[20]} B")
    assert one_frame > 0
    assert after[3] == after[20] == 2 * one_frame
    assert peak[3] == peak[20] <= 2 * one_frame + one_frame // steps + 1


@torch.no_grad()
def test_cross_frame_local_rows_are_a_frame_local_call(unet) -> None:
    """One batched call [frame-local rows, cross-frame rows] gives what two separate calls give
    (omega's two predictions), and records only the cross-frame rows."""
    anchor, z, t = _randn(2, 4, 8, 8, seed=56), _randn(2, 4, 8, 8, seed=57), torch.tensor(501)
    emb = torch.cat([_embeddings(58), _embeddings(59)])  # [uncond, cond]

    def after_anchor(latents: torch.Tensor, embeddings: torch.Tensor, local_rows: int) -> tuple[torch.Tensor, int]:
        xfa = CrossFrameAttention()
        with self_attention_processors(unet, xfa.processor):
            _xfa_frame(unet, xfa, anchor, t, emb)
            out = _xfa_frame(unet, xfa, latents, t, embeddings, local_rows)
        return out, xfa.cache_bytes

    mixed, mixed_bytes = after_anchor(torch.cat([z, z]), torch.cat([emb, emb]), 2)
    cross, cross_bytes = after_anchor(z, emb, 0)
    local = unet(z, t, encoder_hidden_states=emb, return_dict=False)[0]
    local_diff, cross_diff = (mixed[:2] - local).abs().max().item(), (mixed[2:] - cross).abs().max().item()
    print(f"batched vs separate calls: frame-local rows {local_diff:.3g}, cross-frame rows {cross_diff:.3g}")
    assert local_diff <= 1e-5 and cross_diff <= 1e-5  # float32 rounding: the batch size differs
    assert (cross - local).abs().max() > 1e-4
    assert mixed_bytes == cross_bytes


@torch.no_grad()
def test_cross_frame_reset_keeps_the_anchor_and_forget_anchor_drops_it(unet) -> None:
    a, b, c = (_randn(1, 4, 8, 8, seed=seed) for seed in (60, 61, 62))
    t = torch.tensor(301)
    emb = _embeddings(63)
    xfa = CrossFrameAttention()
    with self_attention_processors(unet, xfa.processor):
        _xfa_frame(unet, xfa, a, t, emb)
        anchor_bytes = xfa.cache_bytes
        right_after_anchor = _xfa_frame(unet, xfa, c, t, emb)
        _xfa_frame(unet, xfa, b, t, emb)
        xfa.reset()  # a farm chunk's new run: the anchor stays, the previous frame goes
        assert xfa.has_anchor and xfa.cache_bytes == anchor_bytes
        after_reset = _xfa_frame(unet, xfa, c, t, emb)
        xfa.forget_anchor()
        assert not xfa.has_anchor and xfa.cache_bytes == 0
        new_anchor = _xfa_frame(unet, xfa, c, t, emb)
        assert xfa.has_anchor
    plain = unet(c, t, encoder_hidden_states=emb, return_dict=False)[0]
    assert torch.equal(after_reset, right_after_anchor)
    assert (after_reset - plain).abs().max() > 1e-4
    assert torch.equal(new_anchor, plain)


@torch.no_grad()
def test_cross_frame_attention_leaves_an_ip_adapters_processors_in_place() -> None:
    """With a reference, the IP-Adapter's cross-attention processors keep working under ours."""
    import numpy as np
    from PIL import Image as PILImage

    from cvgen.server.core.models import ModelCache, ModelRegistry
    from cvgen.server.core.models.ip_adapter import applied

    models = ModelCache(ModelRegistry.load())
    sd, adapter = models.get("tiny"), models.get("tiny-ip-adapter", "ip_adapter")
    z, t = _randn(2, 4, 8, 8, seed=64), torch.tensor(401)
    emb = torch.cat([_embeddings(65), _embeddings(66)])
    reference = PILImage.fromarray(np.random.default_rng(67).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    with applied(sd, adapter, 1.0) as active:
        added = {"image_embeds": active.image_embeds(reference, True)}
        before = dict(sd.unet.attn_processors)
        with_adapter = sd.unet(z, t, encoder_hidden_states=emb, added_cond_kwargs=added, return_dict=False)[0]
        xfa = CrossFrameAttention()
        with self_attention_processors(sd.unet, xfa.processor):
            during = sd.unet.attn_processors
            cross = [name for name in during if name.endswith("attn2.processor")]
            assert cross and all(isinstance(during[name], IPAdapterAttnProcessor2_0) and during[name] is before[name]
                                 for name in cross)
            assert all(getattr(during[name], "owner", None) is xfa for name in self_attention_layers(sd.unet))
            anchor = _xfa_frame(sd.unet, xfa, z, t, emb, added_cond_kwargs=added)
        assert all(proc is before[name] for name, proc in sd.unet.attn_processors.items())
    assert torch.equal(anchor, with_adapter)
    assert (with_adapter - sd.unet(z, t, encoder_hidden_states=emb, return_dict=False)[0]).abs().max() > 1e-4
