"""propagate: carry an edit of the first frame through the whole shot with Stable Video Diffusion.

Paint a fix, add an object or change a colour on frame one (Nuke paint, Photoshop, one of our
image ops) and the edit follows the shot's motion, training-free (METHODS.md, "3. propagate";
seed: Videoshop). Per window of frames, in shot order:

1. **Latent normalisation.** The plate frames go from the shot's scene-linear space to the model's
   display space (highlights rolled off into it and restored after decoding: `highlights`), at
   the model's working size (`core.fit`: the model's area, the plate's aspect, padded, cropped
   back after). `x0 = s * vae.encode(video).mode()`, normalised per frame over (C, H, W).
2. **Inversion conditioning** is the window's original first frame: its CLIP embedding and its
   noise-augmented, unscaled latent, normalised over the whole latent and divided by `s`.
3. **Noise-extrapolated inversion** of `x0` from sigma 0 up to the sigma of the first of the
   last `k = int(steps * strength)` steps, guidance 1 (`core.euler.invert`).
4. **Generation**: SVD's Euler sampling over those `k` steps, conditioned on the *edited* first
   frame (CLIP embedding and its plain noise-augmented latent; the unconditional branch zeros),
   guidance `guidance` on every frame: `StableVideoDiffusionPipeline`'s loop, step for step.
5. **Rescale** the output latents to the per-channel mean and std of the edited frame's clean
   latent, using frame 0's statistics (unbiased std); decode.

Then back to the plate's size and colour space and over the plate: with a `matte` only inside
it (feathered inward), so every pixel outside is the plate's bit for bit, HDR, NaN and Inf
included; without one, the whole frame is the propagated one.

**Any length.** Windows of `window` frames (0: the model's own, 14 for SVD, 25 for SVD-XT) share
one frame with the next (`core.windows.plan` with overlap 1): a window's edited first frame is
the previous window's last output frame, which is kept as that frame's result. Windows stream:
one window's frames and one conditioning frame are held at a time, whatever the shot's length.

**Seams.** Measured on the tiny model (16 frames, 5 windows, a drifting textured plate): the mean
frame-to-frame change across a boundary is 1.14x (1.17x at twice the size) the change inside a
window, but only 1.04x (1.11x) the change from frame 0 to frame 1 of the first window, where
there is no boundary: SVD's first output frame reproduces its conditioning frame and the next
one moves away from it, window or not. No boundary jumps, so windows are not cross-faded (a latent
cross-fade would also make each window depend on the next, breaking the chain that makes
resuming exact).

**Farm and resume.** Every window depends on all the windows before it, so the farm runs a
propagate job as one task (`sequential`), and a chunk or resumed run renders its windows from the
chain's start, discarding frames it was not asked for: its frames equal a full render's. To make
a resume cheap, each window's conditioning frame is saved in the model cache as it is made
(`Chain`); a run whose first wanted frame lies in a saved window starts there, conditioned on the
frame before it, once the plate frames up to there hash to what the state was made from. The
state is the exact tensor, so the result is the same bit for bit; without it (another machine, a
cleared cache) the run starts from the chain's start.

**Seed.** The job's seed, hashed with each window's first frame number (`frame_generator`), draws
the window's inversion noise and its two noise augmentations.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from cvgen.protocol.images import Image

from ..core.highlights import PARAM as HIGHLIGHTS, ModelColor
from ..errors import InputError
from .base import OpContext, OpSpec, Param, Role, Shot
from .layers import RGB, Layers, _require_rgb, feathered, over_plate, read_plate

StepFn = Callable[[int, int], None]
#: The frame area SVD was trained at (1024 x 576).
SVD_AREA = 1024 * 576

PARAMS = (
    Param("model", "str", "", "Stable Video Diffusion model from the server's models file (empty: its default)",
          model_kind="svd"),
    Param("steps", "int", 25, "sampling steps of the full schedule", 1, 200),
    Param("strength", "float", 0.55, "how much of the schedule is inverted and regenerated: low follows the "
          "plate closely, high lets the edit move more freely", 0.0, 1.0),
    Param("guidance", "float", 4.0, "guidance scale towards the edited frame, the same on every frame", 1.0, 30.0),
    Param("fps", "int", 7, "frame rate the model is told (it receives fps - 1)", 1, 120),
    Param("motion_bucket", "int", 127, "how much motion the model expects (SVD's motion bucket id)", 0, 1023),
    Param("noise_aug", "float", 0.2, "noise added to the conditioning frames before encoding", 0.0, 2.0),
    Param("window", "int", 0, "frames the model sees at once (0: the model's own: 14 for SVD, 25 for SVD-XT)",
          0, 256),
    Param("feather", "float", 3.0, "softens the matte's edge by about this many pixels, inward only", 0.0, 64.0),
    HIGHLIGHTS,
)


# Frames in and out -------------------------------------------------------------------------------


def read_edit(shot: Shot, plate: Image) -> np.ndarray:
    """The edited first frame's RGB, made finite; it must be the plate's size."""
    edit = shot.read("edit", shot.frames[0])
    _require_rgb(edit.channels, "edit")
    if (edit.width, edit.height) != (plate.width, plate.height):
        raise InputError(f"the edit image is {edit.width}x{edit.height} but the plate is {plate.width}x"
                         f"{plate.height}; paint the edit on the plate's first frame at its full size")
    return np.nan_to_num(np.stack([edit.channel(c) for c in RGB], axis=-1).astype(np.float32),
                         nan=0.0, posinf=1.0, neginf=0.0)


def put_back(layers: Layers, generated: np.ndarray, feather: float) -> Image:
    """The propagated frame over the plate, inside the feathered matte only."""
    matte = feathered(layers.matte, feather)
    return over_plate(layers, matte, generated[matte > 0])


# 1-5. One window ---------------------------------------------------------------------------------


class Propagator:
    """The model-side steps of METHODS.md section 3 for one job, window by window."""

    def __init__(self, model: Any, params: dict[str, Any]) -> None:
        import torch

        from ..core.euler import schedule
        from ..core.sampling import strength_steps

        self.model = model
        self.params = params
        self.k = strength_steps(params)
        self.schedule = schedule(model.scheduler, params["steps"])
        self.scale = model.vae.config.scaling_factor
        self.time_ids = torch.tensor([[params["fps"] - 1, params["motion_bucket"], params["noise_aug"]]],
                                     dtype=model.dtype, device=model.device)

    # Conditioning ------------------------------------------------------------------------------

    def clip_embedding(self, image: Any) -> Any:
        """(1, 1, D): the CLIP image embedding of (1, 3, H, W) `image` in [-1, 1], resized with
        antialiasing to the encoder's size as `StableVideoDiffusionPipeline` does for images."""
        from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import (
            _resize_with_antialiasing,
        )

        size = self.model.image_encoder.config.image_size
        pixels = ((_resize_with_antialiasing(image.float(), (size, size)) + 1.0) / 2.0).cpu()  # the processor is numpy
        pixels = self.model.feature_extractor(images=pixels, do_normalize=True, do_center_crop=False, do_resize=False,
                                              do_rescale=False, return_tensors="pt").pixel_values
        pixels = pixels.to(self.model.device, self.model.dtype)
        return self.model.image_encoder(pixels).image_embeds.unsqueeze(1)

    def encode_mode(self, images: Any) -> Any:
        """The VAE latent mode of (N, 3, H, W) `images` in [-1, 1], unscaled, in float32."""
        vae = self.model.vae
        return vae.encode(images.to(vae.device, vae.dtype)).latent_dist.mode().float()

    def augmented_latent(self, image: Any, generator: Any) -> Any:
        """The unscaled latent of `image` with `noise_aug` Gaussian noise added in pixel space."""
        from diffusers.utils.torch_utils import randn_tensor

        noise = randn_tensor(image.shape, generator=generator, device=image.device, dtype=image.dtype)
        return self.encode_mode(image + self.params["noise_aug"] * noise)

    def vfn(self, embedding: Any, latent: Any, guidance: float, frames: int) -> Any:
        """The v-prediction of the (1, F, 4, h, w) latents at step i, conditioned on a first
        frame's `embedding` and (unscaled) `latent`; with `guidance` > 1 as the pipeline guides,
        against zeros, in one UNet call on the batch [uncond, cond]."""
        import torch

        model = self.model
        cond = latent[:, None].repeat(1, frames, 1, 1, 1).to(model.device, model.dtype)
        time_ids = self.time_ids
        scale = None
        if guidance > 1:
            embedding = torch.cat([torch.zeros_like(embedding), embedding])
            cond = torch.cat([torch.zeros_like(cond), cond])
            time_ids = torch.cat([time_ids, time_ids])
            scale = torch.linspace(guidance, guidance, frames)[None, :, None, None, None].to(model.device)

        def v(x: Any, i: int) -> Any:
            sigma = self.schedule.sigmas[i]
            z = x / ((sigma**2 + 1) ** 0.5)
            if scale is not None:
                z = torch.cat([z] * 2)
            z = torch.cat([z.to(model.device, model.dtype), cond], dim=2)
            t = self.schedule.timesteps[i].to(model.device)
            out = model.unet(z, t, encoder_hidden_states=embedding, added_time_ids=time_ids, return_dict=False)[0]
            if scale is not None:
                uncond, guided = out.chunk(2)
                out = uncond + scale.to(out.dtype) * (guided - uncond)
            return out.to(x.dtype)

        return v

    # Steps ---------------------------------------------------------------------------------------

    def normalised_latents(self, video: Any) -> Any:
        """Step 1: (1, F, 4, h, w) `s * mode()` of the (F, 3, H, W) window, each frame normalised
        over (C, H, W) to zero mean and unit std."""
        x0 = self.scale * self.encode_mode(video)
        mean = x0.mean(dim=(1, 2, 3), keepdim=True)
        std = x0.std(dim=(1, 2, 3), keepdim=True)
        return ((x0 - mean) / (std + 1e-6))[None]

    def inversion_latent(self, first: Any, generator: Any) -> Any:
        """Step 2: the original first frame's noise-augmented unscaled latent, normalised over
        the whole latent and divided by `s` (Videoshop's run.py, lines 94-102)."""
        latent = self.augmented_latent(first, generator)
        return (latent - latent.mean()) / latent.std() / self.scale

    def invert(self, x0: Any, first: Any, generator: Any, on_step: StepFn) -> Any:
        """Steps 2-3: `x0` inverted up to the first generation step, conditioned on `first`."""
        from diffusers.utils.torch_utils import randn_tensor

        from ..core.euler import invert

        noise = randn_tensor(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        v = self.vfn(self.clip_embedding(first), self.inversion_latent(first, generator), 1.0, x0.shape[1])
        return invert(v, x0, self.schedule, self.k, noise, on_step)

    def generate(self, x: Any, edit: Any, generator: Any, on_step: StepFn, start: int | None = None) -> Any:
        """Step 4: Euler sampling of `x` from step `start` (default: the last k) to the end,
        conditioned on `edit` (1, 3, H, W) in [-1, 1]; its noise augmentation is the next draw
        of `generator`, as in the pipeline."""
        from ..core.euler import sample

        start = self.schedule.steps - self.k if start is None else start
        v = self.vfn(self.clip_embedding(edit), self.augmented_latent(edit, generator), self.params["guidance"],
                     x.shape[1])
        return sample(v, x, self.schedule, start, on_step)

    def rescale(self, y: Any, edit: Any) -> Any:
        """Step 5: `y` (1, F, 4, h, w) given the edited frame's clean per-channel statistics,
        through frame 0's: `(y - mean_c(y0)) / std_c(y0) * std_c(e) + mean_c(e)`."""
        e = self.scale * self.encode_mode(edit)
        y0 = y[:, 0]
        dims = (-2, -1)
        mean_y, std_y = y0.mean(dim=dims, keepdim=True)[:, None], y0.std(dim=dims, keepdim=True)[:, None]
        mean_e, std_e = e.mean(dim=dims, keepdim=True)[:, None], e.std(dim=dims, keepdim=True)[:, None]
        return (y - mean_y) / std_y * std_e + mean_e

    def decode(self, y: Any) -> Any:
        """(F, 3, H, W) in [-1, 1] from (1, F, 4, h, w) latents, the temporal decoder over the window."""
        vae = self.model.vae
        frames = y.shape[1]
        images = vae.decode((y[0] / self.scale).to(vae.device, vae.dtype), num_frames=frames).sample
        return images.float().clamp(-1, 1)

    def window(self, video: Any, edit: Any, generator: Any, on_step: StepFn) -> Any:
        """Steps 1-5 on one window: (F, 3, H, W) plate frames in [-1, 1] and the edited first
        frame (1, 3, H, W) to the (F, 3, H, W) propagated frames."""
        k = self.k
        x0 = self.normalised_latents(video)
        x = self.invert(x0, video[:1], generator, on_step)
        y = self.generate(x, edit, generator, lambda i, n: on_step(k + i, 2 * k))
        return self.decode(self.rescale(y, edit))


# Resume state --------------------------------------------------------------------------------------


@dataclass
class Chain:
    """The conditioning frame each window hands the next, saved so a resumed run can start there.

    One folder per job, named by the hash of everything that decides the chain (model, parameters,
    seed, colour space, edit image), with a file per window: the hash of the plate frames up to
    the window's first frame and that frame's model output, in the model's precision (lossless:
    it was decoded in it). About 3.5 MB a window for SVD in half precision.
    """

    folder: Path | None

    @classmethod
    def of(cls, cache: Path | None, model: Any, params: dict[str, Any], ctx: OpContext, edit: np.ndarray) -> Chain:
        if cache is None:
            return cls(None)
        digest = hashlib.blake2b(digest_size=16)
        digest.update(json.dumps([model.fingerprint, params, ctx.seed, ctx.colorspace, str(model.dtype)],
                                 sort_keys=True).encode())
        digest.update(np.ascontiguousarray(edit).tobytes())
        return cls(cache / "propagate" / digest.hexdigest())

    def save(self, index: int, plates: str, edit: Any, dtype: Any) -> None:
        import torch

        if self.folder is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        temp = self.folder / f".{index}.{os.getpid()}.tmp"
        torch.save({"plates": plates, "edit": edit.to(dtype)}, temp)
        os.replace(temp, self.folder / f"{index}.pt")

    def load(self, index: int) -> dict[str, Any] | None:
        import torch

        path = self.folder / f"{index}.pt" if self.folder is not None else None
        if path is None or not path.is_file():
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # a damaged state only costs rendering from the start
            return None


def plate_hash(previous: Any, plate: Image) -> Any:
    """The running hash of the plate frames so far, extended by `plate`."""
    digest = previous.copy()
    digest.update(np.ascontiguousarray(plate.pixels).tobytes())
    return digest


# The op ---------------------------------------------------------------------------------------------


def result_positions(window: Any) -> range:
    """The positions whose result a window gives: all its frames but the first, which the window
    before gives (window 0 gives its first frame too)."""
    return window.frames if window.index == 0 else range(window.start + 1, window.stop)


def working_size(model: Any, height: int, width: int) -> Any:
    """The plate's fit at the model's own frame area, `(sample_size * vae factor)^2` (1024 x 576 for
    SVD, whose UNet says 96; SVD's area when a config does not say), with sides a multiple of the
    VAE's and the UNet's downsampling together (64 for SVD)."""
    from ..core.fit import fit
    from ..core.latents import vae_scale_factor

    unet = model.unet.config
    factor = vae_scale_factor(model.vae)
    area = (unet.sample_size * factor) ** 2 if unet.sample_size else SVD_AREA
    return fit(height, width, area, factor * 2 ** (len(unet.block_out_channels) - 1))


def resume_point(chain: Chain, window: Any, shot: Shot, frames: list[int]) -> tuple[int, Any, Any]:
    """Where to start for results from `window` on: its index, its conditioning frame and the hash
    of the plate up to its first frame when the chain saved them for these plate frames, else the
    chain's start (0, None and an empty hash)."""
    empty = hashlib.blake2b(digest_size=16)
    saved = chain.load(window.index) if window.index > 0 else None
    if saved is None:
        return 0, None, empty
    plates = empty.copy()
    for position in range(window.start + 1):
        plates = plate_hash(plates, shot.read("plate", frames[position]))
    if plates.hexdigest() != saved["plates"]:
        return 0, None, empty
    return window.index, saved["edit"].float(), plates


def run(shot: Shot, params: dict[str, Any], ctx: OpContext) -> Iterator[tuple[int, Image]]:
    import torch

    from ..core.sampling import frame_generator
    from ..core.windows import plan

    frames = list(shot.frames)
    if len(frames) < 2:
        raise InputError(f"propagate needs a shot of at least 2 frames to carry the edit through, not {len(frames)}")
    model = ctx.model(params["model"], "svd")
    color = ModelColor(ctx.colorspace, params["highlights"])
    p = Propagator(model, params)
    if params["window"] == 1:
        raise InputError("a window of 1 frame cannot hand the edit on to the next; use 2 or more (0: the model's own)")
    windows = plan(len(frames), params["window"] or model.window, 1)
    todo = {frames.index(f) for f in ctx.todo}

    plate = shot.read("plate", frames[0])
    edit_rgb = read_edit(shot, plate)
    size = working_size(model, plate.height, plate.width)
    peak = color.peak(edit_rgb)

    def to_model(rgb: np.ndarray) -> Any:
        display = torch.from_numpy(color.to_model(rgb).transpose(2, 0, 1).copy())[None]
        return size.to_model(display) * 2 - 1

    chain = Chain.of(ctx.cache_dir, model, params, ctx, edit_rgb)
    start, edit, plates = resume_point(chain, next(w for w in windows if min(todo) in result_positions(w)), shot,
                                       frames)
    edit = to_model(edit_rgb) if edit is None else edit
    with torch.no_grad():
        for window in windows[start:]:
            if window.index > 0 and window.start >= max(todo):
                break
            layers = [read_plate(shot, frames[q], "propagates edits over") for q in window.frames]
            for q, lay in zip(window.frames, layers):
                if q in result_positions(window):
                    plates = plate_hash(plates, lay.plate)
            video = torch.cat([to_model(lay.fg) for lay in layers])
            shown = frames[max(window.start, min(todo))]  # progress is reported on the window's first wanted frame
            generator = frame_generator(ctx.seed, frames[window.start])
            out = p.window(video.to(model.device), edit.to(model.device), generator,
                           lambda i, n, f=shown: ctx.step(f, i, n))
            edit = out[-1:].cpu()
            if window.index + 1 < len(windows):
                chain.save(window.index + 1, plates.hexdigest(), edit, model.dtype)
            display = ((size.from_model(out.cpu()) + 1) / 2).clamp(0, 1).numpy().transpose(0, 2, 3, 1)
            for j, q in enumerate(window.frames):
                if q in todo and q in result_positions(window):
                    generated = color.from_model(display[j], max(peak, color.peak(layers[j].fg)))
                    yield frames[q], put_back(layers[j], generated, params["feather"])


#: `edit` is an image role: one file (the painted first frame) read for every frame.
ROLES = (
    Role("plate", "Plate", "sequence", True, ("R", "G", "B"),
         "The source shot the edit is carried through; kept bit for bit outside the matte"),
    Role("edit", "Edited first frame", "image", True, ("R", "G", "B"),
         "The shot's first frame with the edit painted in, at the plate's size"),
    Role("matte", "Matte", "sequence", False, ("A",),
         "Where the edit may change the shot: the first of A, Y, R or matte it has; everywhere when not given"),
)


OP = OpSpec(
    name="propagate",
    summary="Carries an edit of the first frame through the shot with Stable Video Diffusion: inversion of the "
            "plate, regeneration from the edited frame, window by window; the plate stays untouched outside the matte",
    params=PARAMS,
    roles=ROLES,
    run=run,
    sequential=True,
)
