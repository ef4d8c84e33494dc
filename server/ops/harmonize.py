"""harmonize: semantic video composition with partial inversion and inter-frame attention.

Makes a composited foreground belong in its plate, frame after frame, with a pretrained Stable
Diffusion model (METHODS.md, "1. harmonize"). Per frame i, in shot order:

1. **Layers.** Plate `B`, straight foreground `F`, matte `M`; composite `C = M * F + (1 - M) * B`,
   converted from the shot's scene-linear space to the model's display-referred sRGB, highlights
   rolled off into it and restored after decoding (`highlights`, server/core/highlights.py).
2. **Balanced Partial Inversion.** Encode `C`; DDIM-invert it for `k = int(steps * strength)`
   of the `steps` steps with the empty prompt (cached on disk: a new prompt reuses it). Frames
   are encoded and inverted in batches before the sequential generation.
3. **Generation** from the inverted latent over the remaining `k` sampling steps, with
   classifier-free guidance on `prompt` / `negative_prompt` at scale `guidance`,
4. with the **background latent blend**: for the first `tau_b` of those steps, latents outside
   the dilated matte are replaced by the inverted composite's latents of the same step,
5. and **inter-frame attention**: for the first `tau` of those steps, every self-attention layer
   of frame i also attends to frame i-1's foreground keys and values at the same layer and step.
6. **Background replacement** in linear light: decode, convert back to the shot's space, and put
   the result over the plate with the matte feathered inward, so pixels outside the matte are
   the plate's, bit for bit.

**Step counts.** Every fraction of a step count becomes whole steps by one rule shared by every op
(`core.sampling.steps_for`): truncated, `int(n * fraction)` capped at n, as diffusers' img2img
computes its steps from `strength`. So `k = int(steps * strength)` (25 steps at strength 0.55
regenerate the last 13, as in diffusers), and the blend and IFA run for the first
`int(k * tau_b)` and `int(k * tau)` steps: equal fractions gate equal steps.

**Resuming.** A resumed job or a farm chunk renders, and discards, `warmup` frames (2 by default)
before every run of missing frames, so inter-frame attention reaches each run close to where a
full run has it. The first warm-up frame starts plain instead of attending to its predecessor,
so a resumed frame may differ from a full run's by up to about 5e-4 (measured after kill -9 with
the default warm-up); where the frame before a run is rendered as well (a gap no wider than the
warm-up), the run matches a full run, up to the float rounding of a different VAE batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np

from cvgen.protocol.images import Image

from ..errors import InputError
from ..core.highlights import PARAM as HIGHLIGHTS, ModelColor
from .base import OpContext, OpSpec, Param, Role, Shot
from .layers import FG_ROLE, MATTE_ROLE, Layers, check_layer_channels, feathered, over_plate, read_layers

StepFn = Callable[[int, int], None]

PARAMS = (
    Param("prompt", "str", "", "what the result should look like (may be empty)"),
    Param("negative_prompt", "str", "", "what it should not look like"),
    Param("model", "str", "", "Stable Diffusion model from the server's models file (empty: its default)",
          model_kind="sd"),
    Param("strength", "float", 0.5, "how much of the schedule is inverted and regenerated: low stays close to "
          "the composite, high lets the foreground change more", 0.0, 1.0),
    Param("steps", "int", 20, "sampling steps of the full schedule", 1, 200),
    Param("guidance", "float", 5.0, "classifier-free guidance scale (2.5 when foreground and plate are the "
          "same kind of image)", 1.0, 30.0),
    Param("tau_b", "float", 0.8, "fraction of the generation steps that keep the background latents of the "
          "inverted composite (0: off)", 0.0, 1.0),
    Param("tau", "float", 0.6, "fraction of the generation steps with inter-frame attention to the previous "
          "frame's foreground (0: off)", 0.0, 1.0),
    Param("feather", "float", 3.0, "softens the matte's edge by about this many pixels, inward only", 0.0, 64.0),
    Param("replace_background", "bool", True, "put the result over the untouched plate outside the matte"),
    HIGHLIGHTS,
)


def _batch_size(device: Any) -> int:
    """Frames encoded and inverted together: enough to fill a GPU, few enough to keep memory flat."""
    return 8 if getattr(device, "type", "cpu") == "cuda" else 2


# 1. Layers ------------------------------------------------------------------------------------


def composite(layers: Layers) -> np.ndarray:
    """The foreground over the plate by the matte, scene-linear, the plate's NaN and inf made finite."""
    m = layers.matte[..., None]
    return m * layers.fg + (1 - m) * np.nan_to_num(layers.plate_rgb(), nan=0.0, posinf=1.0, neginf=0.0)


def model_input(layers: Layers, color: ModelColor) -> np.ndarray:
    """The composite in the model's space as (3, H, W) in [-1, 1]; HDR compressed or clipped, NaN zeroed."""
    display = color.to_model(composite(layers))
    return (display * 2 - 1).transpose(2, 0, 1).astype(np.float32)


# 2-5. Inversion and generation -----------------------------------------------------------------


@dataclass
class FrameGuide:
    """What ties a frame's generation to its composite: the clean latent `z0`, the latents after
    each inversion step, and the matte on the latent grid."""

    z0: Any
    inverted: list[Any]
    matte: Any


class Harmonizer:
    """The model-side steps for one job: prompt embeddings, cached inversion, guided generation."""

    def __init__(self, model: Any, params: dict[str, Any], cache: Any) -> None:
        from ..core.attention import InterFrameAttention
        from ..core.sampling import strength_steps

        self.model = model
        self.params = params
        self.cache = cache
        self.steps = params["steps"]
        self.k = strength_steps(params)
        self.uncond_empty = model.encode_prompt([""])
        self.cond = model.encode_prompt([params["prompt"]])
        self.uncond = model.encode_prompt([params["negative_prompt"]])
        self.ifa = InterFrameAttention(params["tau"])

    def encode(self, images: np.ndarray) -> tuple[Any, Any]:
        import torch

        from ..core.latents import encode

        return encode(self.model.vae, torch.from_numpy(images).to(self.model.device, self.model.dtype))

    def invert(self, images: np.ndarray, z0: Any, on_step: StepFn) -> list[list[Any]]:
        """Per frame, its latents after inversion steps 1..k: from the cache, else batched."""
        from ..core.inversion_cache import invert_cached

        return invert_cached(self.cache, self.model, self.uncond_empty, images, z0, self.steps, self.k, on_step)

    def generate(self, start: Any, on_step: StepFn, guide: FrameGuide | None = None) -> Any:
        """Denoise `start` over the last k steps with classifier-free guidance.

        With a `guide`, the background latent blend (first `tau_b` of the steps) and IFA (first
        `tau`) join in; without one this is plain guided DDIM sampling, step for step what
        diffusers' StableDiffusionPipeline computes.
        """
        from ..core.attention import self_attention_processors
        from ..core.inversion import sampling_timesteps
        from ..core.mattes import binarize, dilate
        from ..core.sampling import ddim_sample, guided_eps, steps_for

        k = self.k
        timesteps = sampling_timesteps(self.model.scheduler, self.steps)[self.steps - k :]
        eps = guided_eps(self.model.unet, self.cond, self.uncond, self.params["guidance"])
        if guide is None:
            return ddim_sample(eps, self.model.scheduler, start, timesteps, on_step, steps=self.steps)
        blend_steps = steps_for(self.params["tau_b"], k)
        keep = dilate(binarize(guide.matte), 1)

        def blend_background(i: int, z: Any) -> Any:
            """After step i the latent sits at inversion level k-1-i (level 0 is z0)."""
            if i >= blend_steps:
                return z
            level = k - 1 - i
            target = guide.inverted[level - 1] if level > 0 else guide.z0
            return keep * z + (1 - keep) * target

        def step(i: int, n: int) -> None:
            self.ifa.set_step(i)
            on_step(i, n)

        self.ifa.begin_frame(guide.matte, k)
        with self_attention_processors(self.model.unet, self.ifa.processor):
            z = ddim_sample(eps, self.model.scheduler, start, timesteps, step, blend_background, steps=self.steps)
        self.ifa.end_frame()
        return z

    def decode(self, z: Any, padding: Any) -> np.ndarray:
        """(H, W, 3) in [0, 1], the model's display-referred space."""
        from ..core.latents import decode_frame

        return decode_frame(self.model.vae, z, padding)


# The op ---------------------------------------------------------------------------------------


def frames_to_render(shot: Shot, todo: list[int], params: dict[str, Any], warmup: int) -> list[int]:
    """`todo` plus, with IFA on, up to `warmup` frames of the shot before each run of missing
    frames (rendered, never written), in shot order: a resumed shot, a farm chunk or a resume with
    gaps starts every run with attention state close to what a full run reaches there, and the
    seam does not jump. Where the frame before a run is rendered too, the run continues exactly
    as a full run does."""
    from ..core.frame_order import with_warmup

    return with_warmup(list(shot.frames), todo, warmup) if params["tau"] > 0 else list(todo)


def run(shot: Shot, params: dict[str, Any], ctx: OpContext) -> Iterator[tuple[int, Image]]:
    import torch

    from ..core.frame_order import follows
    from ..core.inversion_cache import InversionCache
    from ..core.latents import vae_scale_factor
    from ..core.mattes import latent_grid

    model = ctx.model(params["model"])
    color = ModelColor(ctx.colorspace, params["highlights"])
    h = Harmonizer(model, params, InversionCache(ctx.cache_dir))
    k = h.k
    order = frames_to_render(shot, ctx.todo, params, ctx.warmup)
    batch = _batch_size(model.device)
    previous = None
    with torch.no_grad():
        for start in range(0, len(order), batch):
            chunk = order[start : start + batch]
            layers = [read_layers(shot, f) for f in chunk]
            sizes = {lay.plate.pixels.shape[:2] for lay in layers}
            if len(sizes) > 1:
                raise InputError(f"plate frames {chunk[0]}-{chunk[-1]} change size ({sorted(sizes)}); a shot has one size")
            images = np.stack([model_input(lay, color) for lay in layers])
            z0, padding = h.encode(images)
            inverted = h.invert(images, z0, lambda i, n, f=chunk[0]: ctx.step(f, i, 2 * k))
            for j, frame in enumerate(chunk):
                if not follows(list(shot.frames), previous, frame):  # a new run starts plain, as frame 1 does
                    h.ifa.reset()
                previous = frame
                lay = layers[j]
                matte = torch.from_numpy(lay.matte)[None, None].to(model.device, model.dtype)
                grid = latent_grid(matte, padding, vae_scale_factor(model.vae))
                guide = FrameGuide(z0[j : j + 1], inverted[j], grid)
                z = h.generate(inverted[j][-1], lambda i, n, f=frame: ctx.step(f, k + i, 2 * k), guide)
                if frame not in ctx.todo:
                    continue
                generated = color.from_model(h.decode(z, padding), color.peak(composite(lay)))
                if params["replace_background"]:
                    mf = feathered(lay.matte, params["feather"])
                    yield frame, over_plate(lay, mf, generated[mf > 0])
                else:
                    yield frame, over_plate(lay, np.ones_like(lay.matte), generated.reshape(-1, 3))


#: The layers `read_layers` reads (its channel rules: `check_layer_channels`).
ROLES = (
    Role("plate", "Plate", "sequence", True, ("R", "G", "B"),
         "The background the foreground is made to belong in; kept bit for bit outside the matte"),
    FG_ROLE,
    MATTE_ROLE,
)

OP = OpSpec(
    name="harmonize",
    summary="Makes the foreground belong in the plate with a diffusion model: partial inversion, "
            "guided regeneration, inter-frame attention; the plate stays untouched outside the matte",
    params=PARAMS,
    roles=ROLES,
    run=run,
    warmup=2,
    check_channels=check_layer_channels,
)
