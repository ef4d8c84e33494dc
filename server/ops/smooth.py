"""smooth: make a frame-by-frame result temporally coherent with a text-to-video model.

Per-frame results flicker: a harmonize render with a strong prompt, an artist's paint, any image
tool run frame by frame. smooth bridges an image model and a video model training-free
(METHODS.md, "4. smooth"; seed: BIVDiff):

1. **Frame-wise stage.** The `plate` frames are that result (from another op or from the host),
   taken from the shot's scene-linear space to the model's display space, highlights rolled off
   into it and restored after decoding (`highlights`). `z0` is the image VAE's latent *mean*,
   never a sample (the authors sample; the mean makes a farm chunk render what a full run does).
2. **Mixed inversion.** From the same `z0`, two DDIM inversions (eta 0), both with the
   *negative-prompt* embedding: the image UNet per frame, the video UNet over the window;
   `z_T = mix * z_img + (1 - mix) * z_vid`. They run `k = int(steps * strength)` steps, exactly
   up to the first sampling timestep (strength 1, the default, inverts to the top as the authors
   do, but without their one-step offset, so inversion then sampling returns `z0`). At mix 1 or 0
   the unused inversion is not run, and `z_T` is the other one exactly.
3. **Video stage.** DDIM sampling of `z_T` over the last `k` steps with the video UNet, `prompt`
   and classifier-free guidance (`negative_prompt`, scale `guidance`); decoded with the image VAE.
4. **Back over the plate** in linear light: with a `matte`, only inside it (feathered inward), so
   every pixel outside is the plate's bit for bit, HDR, NaN and Inf included; without one, the
   whole frame is the smoothed one.

**Any length.** The video UNet sees `window` frames at once (0: the video model's own length, 8,
the authors' clip length, when it does not say). The shot is cut into windows overlapping by
`overlap` frames; in each overlap the latents are cross-faded after every sampling step
(server/core/windows.py: anchors and bridges), so no boundary jumps and windows stream through
memory. Steps 1-3 run per window.

**LoRA.** `lora` lists `lora` entries for the video model (`name` or `name:scale`, comma-separated);
they are added to its UNet for this job only and removed after (`models.lora.applied`).

**Farm and resume.** A frame's result depends on at most three windows (its bridge and the
bridge's two anchors), each a fixed function of its own input frames. A farm chunk or a resumed
job samples the windows its frames need, whatever the chunk's edges, and discards the rest of
their frames: its frames are bit for bit a full render's. Frames are encoded and decoded one at a
time, so no VAE batch differs between the two.

**Seed.** Nothing here draws noise (eta 0, the VAE mean), so the job's seed changes nothing.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Collection, Iterator, Mapping, Sequence

import numpy as np

from cvgen.protocol.images import Image

from ..core.highlights import PARAM as HIGHLIGHTS, ModelColor
from ..errors import InputError
from .base import OpContext, OpSpec, Param, Role, Shot
from .layers import Layers, _matte_name, _require_rgb, feathered, over_plate, read_plate

StepFn = Callable[[int, int], None]
#: The authors' clip length, for a video model that does not say its own.
DEFAULT_WINDOW = 8

PARAMS = (
    Param("prompt", "str", "", "what the video should look like (may be empty)"),
    Param("negative_prompt", "str", "", "what it should not look like; also the embedding both inversions use"),
    Param("model", "str", "", "Stable Diffusion model whose UNet inverts each frame (empty: the default)",
          model_kind="sd"),
    Param("video_model", "str", "", "text-to-video model that makes the frames coherent (empty: the default)",
          model_kind="t2v"),
    Param("lora", "str", "", "LoRAs for the video model, comma-separated, each `name` or `name:scale` "
          "(empty: none)"),
    Param("mix", "float", 1.0, "share of the per-frame image inversion in the start latents (1: image "
          "only, 0: video only; 0.25 for prompt edits, 0.1 for in/outpainting)", 0.0, 1.0),
    Param("strength", "float", 1.0, "how much of the schedule is inverted and regenerated: 1 from pure "
          "noise level, less keeps more of the input", 0.0, 1.0),
    Param("steps", "int", 50, "sampling steps of the full schedule", 1, 200),
    Param("guidance", "float", 7.5, "classifier-free guidance scale of the video model", 1.0, 30.0),
    Param("window", "int", 0, "frames the video model sees at once (0: the model's own, else 8)", 0, 256),
    Param("overlap", "int", 2, "frames shared by neighbouring windows, cross-faded at every step "
          "(at most half the window)", 0, 128),
    Param("feather", "float", 3.0, "softens the matte's edge by about this many pixels, inward only", 0.0, 64.0),
    HIGHLIGHTS,
)


def parse_loras(text: str) -> list[tuple[str, float]]:
    """`name` or `name:scale` entries, comma-separated, as (name, scale); empty text is none."""
    loras = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, _, scale = item.partition(":")
        if not name.strip():
            raise InputError(f"smooth lora entry {item!r} names no LoRA; write name or name:scale")
        try:
            loras.append((name.strip(), float(scale) if scale.strip() else 1.0))
        except ValueError:
            raise InputError(f"smooth lora entry {item!r} has a scale that is not a number; write name:0.8") from None
    return loras


def check_loras(params: dict[str, Any], registry: Any) -> None:
    """Every LoRA the job names is a `lora` entry for a text-to-video model: refused before the job is queued."""
    for name, _ in parse_loras(params["lora"]):
        entry = registry.entry(name, "lora")
        if (entry.option("applies_to") or "sd") != "t2v":
            raise InputError(f"smooth lora {name!r} is for {entry.option('applies_to') or 'sd'} models; smooth "
                             "applies LoRAs to its video model, which takes LoRAs with applies_to = \"t2v\"")


def window_size(params: dict[str, Any], video: Any) -> int:
    """The window in frames, and an overlap that fits it."""
    size = params["window"] or video.window or DEFAULT_WINDOW
    if 2 * params["overlap"] > size:
        raise InputError(f"overlap {params['overlap']} is more than half the {size}-frame window; "
                         f"use an overlap of at most {size // 2} or a longer window")
    return size


# 1. Frame-wise stage --------------------------------------------------------------------------


def model_input(layers: Layers, color: ModelColor) -> np.ndarray:
    """The frame in the model's space as (3, H, W) in [-1, 1]."""
    return (color.to_model(layers.fg) * 2 - 1).transpose(2, 0, 1).astype(np.float32)


# 2-3. Mixed inversion and the video stage --------------------------------------------------------


def to_video(frames: Any) -> Any:
    """(F, C, h, w) frame latents as the video UNet's (1, C, F, h, w) clip."""
    return frames.permute(1, 0, 2, 3).unsqueeze(0).contiguous()


def from_video(clip: Any) -> Any:
    """(1, C, F, h, w) clip latents as (F, C, h, w) frames."""
    return clip[0].permute(1, 0, 2, 3).contiguous()


def mixed_inversion(image_eps: Any, image_scheduler: Any, video_eps: Any, video_scheduler: Any, z0: Any,
                    steps: int, k: int, mix: float, on_step: StepFn) -> Any:
    """`z_T = mix * z_img + (1 - mix) * z_vid` for (F, C, h, w) `z0`, both inverted `k` of `steps` steps.

    The image inversion treats the frames as a batch (the UNet sees each alone), the video one as
    a clip. At mix 1 or 0 only one runs. `on_step(i, n)` counts over the inversions that run.
    """
    from ..core.inversion import ddim_invert

    runs = int(mix > 0) + int(mix < 1)
    z_img = z_vid = None
    if mix > 0:
        z_img = ddim_invert(image_eps, image_scheduler, z0, steps, k, lambda i, n: on_step(i, runs * k))[-1]
    if mix < 1:
        done = k if mix > 0 else 0
        clip = ddim_invert(video_eps, video_scheduler, to_video(z0), steps, k, lambda i, n: on_step(done + i, runs * k))
        z_vid = from_video(clip[-1])
    if z_vid is None:
        return z_img
    if z_img is None:
        return z_vid
    return mix * z_img + (1 - mix) * z_vid


def video_stage(eps: Any, scheduler: Any, z_t: Any, steps: int, k: int, on_step: StepFn,
                after_step: Callable[[int, Any], Any] | None = None) -> Any:
    """DDIM sampling (eta 0) of (F, C, h, w) `z_t` over the last `k` of `steps` steps as one clip.

    `after_step(i, frames)` sees and returns the frames after step i (the window cross-fade).
    With guided `eps` this is the denoising loop of diffusers' `TextToVideoSDPipeline`.
    """
    from ..core.inversion import sampling_timesteps
    from ..core.sampling import ddim_sample

    timesteps = sampling_timesteps(scheduler, steps)[steps - k :]
    hook = None if after_step is None else (lambda i, clip: to_video(after_step(i, from_video(clip))))
    return from_video(ddim_sample(eps, scheduler, to_video(z_t), timesteps, on_step, hook, steps=steps))


class Smoother:
    """The model-side steps for one job: embeddings, encode, mixed inversion, video stage, decode."""

    def __init__(self, image: Any, video: Any, params: dict[str, Any]) -> None:
        from ..core.sampling import strength_steps

        self.image, self.video, self.params = image, video, params
        self.steps = params["steps"]
        self.k = strength_steps(params)
        check_models_pair(image, video, self.steps)
        negative = [params["negative_prompt"]]
        self.image_negative = image.encode_prompt(negative)
        self.video_negative = video.encode_prompt(negative)
        self.cond = video.encode_prompt([params["prompt"]])

    @property
    def steps_per_window(self) -> int:
        mix = self.params["mix"]
        return (int(mix > 0) + int(mix < 1) + 1) * self.k

    def encode(self, images: np.ndarray) -> tuple[Any, Any]:
        """(F, C, h, w) latent means of (F, 3, H, W) images, one frame at a time (see the module doc)."""
        import torch

        from ..core.latents import encode

        vae = self.image.vae
        encoded = [encode(vae, torch.from_numpy(image[None]).to(self.image.device, self.image.dtype))
                   for image in images]
        return torch.cat([z for z, _ in encoded]), encoded[0][1]

    def invert(self, z0: Any, on_step: StepFn) -> Any:
        from ..core.inversion import unet_eps

        return mixed_inversion(unet_eps(self.image.unet, self.image_negative), self.image.scheduler,
                               unet_eps(self.video.unet, self.video_negative), self.video.scheduler,
                               z0.to(self.video.device, self.video.dtype), self.steps, self.k,
                               self.params["mix"], on_step)

    def sample(self, z_t: Any, on_step: StepFn, after_step: Callable[[int, Any], Any] | None = None) -> Any:
        from ..core.sampling import guided_eps

        eps = guided_eps(self.video.unet, self.cond, self.video_negative, self.params["guidance"])
        return video_stage(eps, self.video.scheduler, z_t, self.steps, self.k, on_step, after_step)

    def decode(self, z: Any, padding: Any) -> np.ndarray:
        """(H, W, 3) in [0, 1], the model's display space, from one frame's (1, C, h, w) latent."""
        from ..core.latents import decode_frame

        return decode_frame(self.image.vae, z, padding)


def check_models_pair(image: Any, video: Any, steps: int) -> None:
    """The two inversions are mixed level by level, so both models must share latents and schedule."""
    import torch

    from ..core.inversion import sampling_timesteps

    same = (image.unet.config.in_channels == video.unet.config.in_channels
            and torch.equal(image.scheduler.alphas_cumprod, video.scheduler.alphas_cumprod)
            and torch.equal(sampling_timesteps(image.scheduler, steps), sampling_timesteps(video.scheduler, steps)))
    if not same:
        raise InputError(f"the image model {image.name!r} and the video model {video.name!r} do not share latents and "
                         "noise schedule; pick two of one family (e.g. Stable Diffusion 1.5 and ZeroScope)")


# The op ---------------------------------------------------------------------------------------


def progress(ctx: OpContext, frames: list[int], total: int) -> Callable[[int], None]:
    """Step i of a window's `total` reported as that share of its `frames` (the job's ones it
    delivers): a window finishes many frames at once, and the job's ETA should move evenly."""

    def step(i: int) -> None:
        share = i * len(frames) / total
        ctx.step(frames[int(share)], round((share - int(share)) * total), total)

    return step


def run(shot: Shot, params: dict[str, Any], ctx: OpContext) -> Iterator[tuple[int, Image]]:
    import torch

    from ..core.models.lora import applied, check_fits
    from ..core.windows import Crossfade, needed, owner, plan

    image = ctx.model(params["model"], "sd")
    video = ctx.model(params["video_model"], "t2v")
    loras = [(ctx.model(name, "lora"), scale) for name, scale in parse_loras(params["lora"])]
    for lora, _ in loras:
        check_fits(lora, video)
    smoother = Smoother(image, video, params)
    color = ModelColor(ctx.colorspace, params["highlights"])
    frames = list(shot.frames)
    windows = plan(len(frames), window_size(params, video), params["overlap"])
    position = {f: p for p, f in enumerate(frames)}
    wanted = deque(sorted(position[f] for f in ctx.todo))
    todo = set(wanted)
    order = needed(windows, wanted)
    fade = Crossfade(windows)
    done: dict[int, tuple[Layers, Any, Any]] = {}
    total = smoother.steps_per_window
    with torch.no_grad(), applied(video, loras):
        for n, window in enumerate(order):
            layers = [read_plate(shot, frames[p], "smooths") for p in window.frames]
            sizes = {lay.plate.pixels.shape[:2] for lay in layers}
            if len(sizes) > 1:
                raise InputError(f"plate frames {frames[window.start]}-{frames[window.stop - 1]} change size "
                                 f"({sorted(sizes)}); a shot has one size")
            step = progress(ctx, [frames[p] for p in window.frames if p in todo] or [frames[window.start]], total)
            z0, padding = smoother.encode(np.stack([model_input(lay, color) for lay in layers]))
            z_t = smoother.invert(z0, lambda i, _: step(i))
            z = smoother.sample(z_t, lambda i, _: step(total - smoother.k + i), fade.after_step(window))
            fade.release(order[n + 1 :])
            for j, p in enumerate(window.frames):
                if p in todo and owner(windows, p) == window:
                    done[p] = (layers[j], z[j : j + 1], padding)
            while wanted and wanted[0] in done:
                p = wanted.popleft()
                lay, latent, pad = done.pop(p)
                generated = color.from_model(smoother.decode(latent, pad), color.peak(lay.fg))
                matte = feathered(lay.matte, params["feather"]) if shot.has("matte") else lay.matte
                yield frames[p], over_plate(lay, matte, generated[matte > 0])


def check_channels(channels: Mapping[str, Sequence[str]], roles: Collection[str]) -> None:
    """The channel rules of `read_plate`, for frames sent inline."""
    if "plate" in channels:
        _require_rgb(channels["plate"], "plate")
    if "matte" in channels:
        _matte_name(channels["matte"])


ROLES = (
    Role("plate", "Plate", "sequence", True, ("R", "G", "B"),
         "The frames to smooth, e.g. another op's result; kept bit for bit outside the matte"),
    Role("matte", "Matte", "sequence", False, ("A",),
         "Where the smoothed frames go: the first of A, Y, R or matte it has; the whole frame when not given"),
)

OP = OpSpec(
    name="smooth",
    summary="Makes a frame-by-frame result temporally coherent with a text-to-video model: mixed image/video "
            "inversion, then video sampling over overlapping windows; the plate stays untouched outside the matte",
    params=PARAMS,
    roles=ROLES,
    run=run,
    check_channels=check_channels,
    check_models=check_loras,
)
