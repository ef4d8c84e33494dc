"""restyle: restyle a shot from a prompt or a reference image, keeping its structure and motion.

Gen-1 does this with a trained video model; restyle builds the same controls from public,
training-free parts (METHODS.md, "2. restyle"): a Stable Diffusion model, a depth ControlNet,
optionally an IP-Adapter and a depth-estimation model. Per frame, in shot order:

1. **Structure.** The frame's depth (the `depth` input: host Z passes are distances,
   `depth_kind = distance`, converted with 1 / Z; or the `depth_model`'s estimate of the plate,
   already inverse), normalised to [0, 1] by the 1st and 99th percentiles over every frame of the
   shot (server/ops/structure.py), blurred by `(1 - structure) * 5 %` of the short side, is the
   ControlNet's conditioning image at scale `structure_scale`.
2. **Content**: `prompt` and `negative_prompt` with classifier-free guidance `guidance`, and,
   given a `reference` image, its CLIP image embedding through the `ip_adapter` at
   `reference_scale`.
3. **Start.** `strength = 1`: every frame starts from the same Gaussian noise (drawn once from the
   job's seed). `strength < 1`: from the plate's DDIM inversion over `k = int(steps * strength)`
   steps with the empty prompt (harmonize's blocks and inversion cache), keeping more of its
   colour and layout; generation runs the last `k` steps.
4. **Temporal consistency `omega`.** Every self-attention layer of the UNet and of the ControlNet
   also attends to the keys and values the anchor (the shot's first frame) and the previous frame
   had at the same layer and step (server/core/attention.py, `CrossFrameAttention`). Per step
   `e = e_img + omega * (e_vid - e_img)` for both guidance branches, from one model call with the
   frame-local and cross-frame rows batched (one set of rows at omega 0 or 1; the anchor itself
   attends plainly); guidance on the prompt is applied on top.
5. **Output.** Decode, back to the shot's scene-linear space (highlights rolled off into the
   model's range and restored, `highlights`); with a `matte`, over the plate inside it only
   (feathered inward), so every pixel outside is the plate's bit for bit.

**Farm chunks and resumes.** The anchor's keys and values are needed by every frame: a chunk or a
resumed job renders the anchor (discarded) first, then `warmup` frames before each run of its
frames; where that warm-up reaches back to the frame after the anchor, the chunk renders exactly
what a full render does. Every frame is encoded, generated and decoded alone, so no batch size
differs between the two.

**Memory.** The cross-frame cache holds the anchor's keys and values and about one more frame's,
whatever the shot length. At `strength < 1` the frames are inverted first, with the plain UNet
(before an IP-Adapter changes it, and as the inversion cache's keys assume), and their start
latents wait on the CPU: 64 KiB per 512x512 frame.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any, Callable, Collection, Iterator, Mapping, Sequence

import numpy as np

from cvgen.protocol.images import Image

from ..core.highlights import PARAM as HIGHLIGHTS, ModelColor
from ..errors import InputError
from .base import OpContext, OpSpec, Param, Role, Shot
from .layers import RGB, Layers, _matte_name, _require_rgb, feathered, over_plate, read_plate
from .structure import DEPTH_KINDS, ShotDepth, depth_channel, loosened, to_inverse

StepFn = Callable[[int, int], None]
#: A ControlNet's residuals add to the UNet's blocks: these must agree for it to fit.
PAIRED = ("in_channels", "block_out_channels", "cross_attention_dim", "layers_per_block")
#: Frames before a chunk rendered and discarded (besides the anchor): see BENCHMARKS.md, restyle.
WARMUP = 2

PARAMS = (
    Param("prompt", "str", "", "what the shot should look like"),
    Param("negative_prompt", "str", "", "what it should not look like"),
    Param("model", "str", "", "Stable Diffusion model from the server's models file (empty: its default)",
          model_kind="sd"),
    Param("controlnet", "str", "", "depth ControlNet made for that model (empty: the default controlnet)",
          model_kind="controlnet"),
    Param("ip_adapter", "str", "", "IP-Adapter that brings in the reference image (empty: the default; "
          "used only with a reference)", model_kind="ip_adapter"),
    Param("depth_model", "str", "", "depth-estimation model for shots without a depth input (empty: the "
          "models file's depth model)", model_kind="depth"),
    Param("depth_kind", "choice", "distance", "what the depth input holds: distance (Blender's and Nuke's Z "
          "passes, near is small) or inverse (a depth estimator's output, near is big)", choices=DEPTH_KINDS),
    Param("structure", "float", 1.0, "how exactly the result follows the shot's depth: 1 exactly, lower "
          "blurs the depth to loosen it", 0.0, 1.0),
    Param("structure_scale", "float", 1.0, "strength of the depth ControlNet (its conditioning scale)", 0.0, 2.0),
    Param("reference_scale", "float", 0.5, "strength of the reference image against the prompt (IP-Adapter "
          "scale; 0.5 mixes both)", 0.0, 2.0),
    Param("strength", "float", 1.0, "1: generate from noise, following only depth and content; lower: start "
          "from the plate's inversion, keeping more of its colour and layout", 0.0, 1.0),
    Param("steps", "int", 20, "sampling steps of the full schedule", 1, 200),
    Param("guidance", "float", 7.5, "classifier-free guidance scale on the prompt", 1.0, 30.0),
    Param("omega", "float", 1.0, "temporal consistency: 1 every frame attends to the first and the "
          "previous frame (no flicker), 0 frames are made alone", 0.0, 1.0),
    Param("feather", "float", 3.0, "softens the matte's edge by about this many pixels, inward only", 0.0, 64.0),
    HIGHLIGHTS,
)


# 1. Structure ---------------------------------------------------------------------------------


def shot_depth(shot: Shot, params: dict[str, Any], ctx: OpContext, color: ModelColor) -> ShotDepth:
    """The shot's inverse depth from the depth input, else from the depth model's estimate of the plate."""
    import torch

    if shot.has("depth"):
        def inverse_depth(frame: int) -> np.ndarray:
            depth = shot.read("depth", frame)
            return to_inverse(depth.channel(depth_channel(depth.channels)), params["depth_kind"])
        return ShotDepth(shot.frames, inverse_depth)

    estimator = ctx.model(params["depth_model"], "depth")
    if not params["depth_model"] and is_builtin(estimator.name):
        raise InputError("restyle needs the shot's depth: give a depth input (Blender's Z pass, Nuke's depth.Z or "
                         "any one-channel depth sequence) or configure a depth model (kind = \"depth\", e.g. "
                         "Depth Anything) in the server's models file and name it in depth_model")

    def estimated(frame: int) -> np.ndarray:
        display = color.to_model(read_plate(shot, frame, "restyles").fg).transpose(2, 0, 1)
        pixels = torch.from_numpy(np.ascontiguousarray(display))[None].float()
        return estimator.predict(pixels)[0].cpu().numpy()

    return ShotDepth(shot.frames, estimated)


def is_builtin(name: str) -> bool:
    from ..core.models.builtin import builtin_entries

    return name in builtin_entries()


def paired_model(ctx: OpContext, params: dict[str, Any], kind: str, model: Any) -> Any:
    """The `kind` model the job names, or the default; a built-in tiny one is never paired silently with
    a real Stable Diffusion model (it would not fit it: the artist has not configured one)."""
    paired = ctx.model(params[kind], kind)
    if not params[kind] and is_builtin(paired.name) and not is_builtin(model.name):
        label = {"controlnet": "depth ControlNet", "ip_adapter": "IP-Adapter"}[kind]
        raise InputError(f"no {label} is configured for Stable Diffusion model {model.name!r}: add the {label} of "
                         f"that model's family (kind = \"{kind}\") to the server's models file or name one in {kind}")
    return paired


def control_image(depth: np.ndarray, params: dict[str, Any], padding: Any, device: Any, dtype: Any) -> Any:
    """The ControlNet's (1, 3, H, W) conditioning image in [0, 1]: the loosened depth as grey,
    padded like the plate (edge replication, bottom and right) so it lines up with the latents."""
    import torch
    import torch.nn.functional as F

    grey = torch.from_numpy(np.ascontiguousarray(loosened(depth, params["structure"])))[None, None]
    padded = F.pad(grey, (0, padding.right, 0, padding.bottom), mode="replicate")
    return padded.expand(1, 3, -1, -1).to(device, dtype)


# 2-4. Content, start and generation ------------------------------------------------------------


class Restyler:
    """The model-side steps for one job: embeddings, the guided ControlNet + UNet prediction with
    the omega mix, start latents, generation and decoding."""

    def __init__(self, model: Any, controlnet: Any, params: dict[str, Any]) -> None:
        from ..core.attention import CrossFrameAttention
        from ..core.latents import vae_scale_factor
        from ..core.sampling import strength_steps

        fits = (controlnet.downscale == vae_scale_factor(model.vae)
                and all(controlnet.model.config[key] == model.unet.config[key] for key in PAIRED))
        if not fits:
            raise InputError(f"ControlNet {controlnet.name!r} was not made for Stable Diffusion model {model.name!r} "
                             "(their layers differ); configure the depth ControlNet of that model's family "
                             "(kind = \"controlnet\") in the server's models file and name it in controlnet")
        self.model, self.controlnet, self.params = model, controlnet, params
        self.steps = params["steps"]
        self.k = strength_steps(params)
        self.omega = params["omega"]
        self.guidance = params["guidance"]
        self.cond = model.encode_prompt([params["prompt"]])
        self.uncond = model.encode_prompt([params["negative_prompt"]])
        #: The reference's IP-Adapter embeddings ([uncond, cond] with guidance), set while an adapter is applied.
        self.image_embeds: list[Any] | None = None
        self.uncond_empty = model.encode_prompt([""]) if self.k < self.steps else None  # inversion's
        self.xfa = CrossFrameAttention() if self.omega > 0 else None

    def eps(self, control: Any) -> Callable[[Any, Any], Any]:
        """The noise prediction for one frame's latents, as `StableDiffusionControlNetPipeline`
        computes it per step, with the omega mix of frame-local and cross-frame predictions."""
        import torch

        from ..core.inversion import _batched

        guided = self.guidance > 1
        xfa = self.xfa
        mixed = xfa is not None and xfa.has_anchor and self.omega < 1

        prompts = torch.cat([_batched(self.uncond, 1), _batched(self.cond, 1)]) if guided else self.cond
        rows = prompts.shape[0]
        copies = 2 if mixed else 1  # [frame-local rows, cross-frame rows]
        embeddings = torch.cat([prompts] * copies)
        controls = torch.cat([control] * (rows * copies))
        added = None
        if self.image_embeds is not None:
            added = {"image_embeds": [e.repeat(copies, *([1] * (e.ndim - 1))) for e in self.image_embeds]}

        def eps(latents: Any, t: Any) -> Any:
            if xfa is not None:
                xfa.local_rows = rows if mixed else 0
            x = torch.cat([latents] * (rows * copies))
            down, mid = self.controlnet.model(
                x, t, encoder_hidden_states=embeddings, controlnet_cond=controls,
                conditioning_scale=self.params["structure_scale"], guess_mode=False, return_dict=False)
            out = self.model.unet(x, t, encoder_hidden_states=embeddings, down_block_additional_residuals=down,
                                  mid_block_additional_residual=mid, added_cond_kwargs=added, return_dict=False)[0]
            if mixed:
                local, cross = out.chunk(2)
                out = local + self.omega * (cross - local)
            if not guided:
                return out
            out_uncond, out_cond = out.chunk(2)
            return out_uncond + self.guidance * (out_cond - out_uncond)

        return eps

    def generate(self, start: Any, control: Any, on_step: StepFn) -> Any:
        """Denoise `start` over the last k steps; with omega > 0 the frame joins the cross-frame
        attention (the first frame generated is the anchor). Without it, step for step what
        `StableDiffusionControlNetPipeline` computes."""
        from ..core.inversion import sampling_timesteps
        from ..core.sampling import ddim_sample

        timesteps = sampling_timesteps(self.model.scheduler, self.steps)[self.steps - self.k :]
        if self.xfa is None:
            return ddim_sample(self.eps(control), self.model.scheduler, start, timesteps, on_step, steps=self.steps)
        xfa = self.xfa

        def step(i: int, n: int) -> None:
            xfa.set_step(i)
            on_step(i, n)

        eps = self.eps(control)  # decided before the frame begins: the anchor attends plainly
        xfa.begin_frame(self.k)
        z = ddim_sample(eps, self.model.scheduler, start, timesteps, step, steps=self.steps)
        xfa.end_frame()
        return z

    def noise(self, shape: tuple[int, ...], seed: int) -> Any:
        """The one Gaussian noise every frame starts from at strength 1 (drawn on the CPU: the same on any device)."""
        import torch

        from ..core.sampling import frame_generator

        noise = torch.randn(shape, generator=frame_generator(seed, 0), dtype=torch.float32)
        return (noise * self.model.scheduler.init_noise_sigma).to(self.model.device, self.model.dtype)

    def decode(self, z: Any, padding: Any) -> np.ndarray:
        """(H, W, 3) in [0, 1], the model's display-referred space."""
        from ..core.latents import decode_frame

        return decode_frame(self.model.vae, z, padding)


def reference_image(shot: Shot, frame: int, color: ModelColor) -> Any:
    """The reference as the 8-bit RGB picture IP-Adapter's image encoder is fed (as diffusers' docs feed PIL)."""
    from PIL import Image as PILImage

    image = shot.read("reference", frame)
    _require_rgb(image.channels, "reference")
    rgb = np.stack([image.channel(c) for c in RGB], axis=-1).astype(np.float32)
    display = color.to_model(np.nan_to_num(rgb, nan=0.0, posinf=1.0, neginf=0.0))
    return PILImage.fromarray((display * 255 + 0.5).clip(0, 255).astype(np.uint8))


# The op ---------------------------------------------------------------------------------------


def frames_to_render(shot: Shot, todo: list[int], params: dict[str, Any], warmup: int) -> list[int]:
    """The anchor, then `todo` with up to `warmup` frames before each run (discarded); `todo` alone at omega 0."""
    from ..core.frame_order import with_warmup

    return with_warmup(list(shot.frames), todo, warmup, anchor=True) if params["omega"] > 0 else list(todo)


def model_input(lay: Layers, color: ModelColor) -> np.ndarray:
    """The plate in the model's space as (1, 3, H, W) in [-1, 1]."""
    return (color.to_model(lay.fg) * 2 - 1).transpose(2, 0, 1)[None].astype(np.float32)


def run(shot: Shot, params: dict[str, Any], ctx: OpContext) -> Iterator[tuple[int, Image]]:
    import torch

    from ..core.attention import self_attention_processors
    from ..core.frame_order import follows
    from ..core.inversion_cache import InversionCache, invert_cached
    from ..core.latents import encode, pad_to_multiple, vae_scale_factor
    from ..core.models import ip_adapter

    color = ModelColor(ctx.colorspace, params["highlights"])
    depth = shot_depth(shot, params, ctx, color)  # first: a shot without depth is refused before models load
    model = ctx.model(params["model"], "sd")
    controlnet = paired_model(ctx, params, "controlnet", model)
    frames = list(shot.frames)
    order = frames_to_render(shot, ctx.todo, params, ctx.warmup)
    r = Restyler(model, controlnet, params)
    steps_per_frame = r.k if r.k == r.steps else 2 * r.k

    def plate(frame: int) -> tuple[Layers, Any, Any]:
        """The plate frame, as the model sees it (1, 3, H, W), and its padding to the latent grid."""
        lay = read_plate(shot, frame, "restyles")
        image = torch.from_numpy(model_input(lay, color))
        return lay, image, pad_to_multiple(image, vae_scale_factor(model.vae))[1]

    with torch.no_grad(), ExitStack() as stack:
        starts: dict[int, Any] = {}
        if r.k < r.steps:  # the plain UNet inverts (the inversion cache's keys say so): before any adapter
            cache = InversionCache(ctx.cache_dir)
            for frame in order:
                _, image, _ = plate(frame)
                z0, _ = encode(model.vae, image.to(model.device, model.dtype))
                starts[frame] = invert_cached(cache, model, r.uncond_empty, image.numpy(), z0, r.steps, r.k,
                                              lambda i, n, f=frame: ctx.step(f, i, steps_per_frame))[0][-1].cpu()
        if shot.has("reference"):
            adapter = paired_model(ctx, params, "ip_adapter", model)
            applied = stack.enter_context(ip_adapter.applied(model, adapter, params["reference_scale"]))
            r.image_embeds = applied.image_embeds(reference_image(shot, frames[0], color), params["guidance"] > 1)
        if r.xfa is not None:  # after the adapter: its loader rebuilds every processor (METHODS.md 1.4)
            xfa = r.xfa
            stack.enter_context(self_attention_processors(model.unet, xfa.processor))
            stack.enter_context(self_attention_processors(controlnet.model, lambda n: xfa.processor("controlnet." + n)))
        size, previous = None, None
        for frame in order:
            if r.xfa is not None and r.xfa.has_anchor and not follows(frames, previous, frame):
                r.xfa.reset()  # a new run attends to the anchor alone until it has a previous frame
            previous = frame
            lay, image, padding = plate(frame)
            if size is not None and lay.fg.shape[:2] != size:
                raise InputError(f"plate frame {frame} is {lay.fg.shape[1]}x{lay.fg.shape[0]} but frame {order[0]} is "
                                 f"{size[1]}x{size[0]}; a shot has one size")
            size = lay.fg.shape[:2]
            inverse = depth.normalised(frame)
            if inverse.shape != size:
                raise InputError(f"depth frame {frame} is {inverse.shape[1]}x{inverse.shape[0]} but the plate is "
                                 f"{size[1]}x{size[0]}; give depth at the plate's size")
            control = control_image(inverse, params, padding, model.device, model.dtype)
            if frame in starts:
                start = starts.pop(frame).to(model.device)
            else:
                latent = (1, model.unet.config.in_channels, *(s // controlnet.downscale for s in control.shape[-2:]))
                start = r.noise(latent, ctx.seed)
            offset = steps_per_frame - r.k
            z = r.generate(start, control, lambda i, n, f=frame: ctx.step(f, offset + i, steps_per_frame))
            if frame not in ctx.todo:
                continue
            generated = color.from_model(r.decode(z, padding), color.peak(lay.fg))
            matte = feathered(lay.matte, params["feather"]) if shot.has("matte") else lay.matte
            yield frame, over_plate(lay, matte, generated[matte > 0])


def check_channels(channels: Mapping[str, Sequence[str]], roles: Collection[str]) -> None:
    """The channel rules of the inputs restyle reads, for frames sent inline."""
    for role in ("plate", "reference"):
        if role in channels:
            _require_rgb(channels[role], role)
    if "matte" in channels:
        _matte_name(channels["matte"])
    if "depth" in channels:
        depth_channel(channels["depth"])


ROLES = (
    Role("plate", "Plate", "sequence", True, ("R", "G", "B"),
         "The shot to restyle (live action or a grey-shaded layout); kept bit for bit outside the matte"),
    Role("depth", "Depth", "sequence", False, ("Z",),
         "Its depth: a Z pass (Blender's one-channel V, Nuke's depth.Z, or Z); estimated by the depth model "
         "when not given"),
    Role("matte", "Matte", "sequence", False, ("A",),
         "Where to restyle: the first of A, Y, R or matte it has; the whole frame when not given"),
    Role("reference", "Reference", "image", False, ("R", "G", "B"),
         "A style frame whose look the shot takes on (through the IP-Adapter)"),
)

OP = OpSpec(
    name="restyle",
    summary="Restyles a shot from a prompt or a reference image, keeping its structure (depth ControlNet) and "
            "motion (cross-frame attention to the first and previous frames); untouched outside the matte",
    params=PARAMS,
    roles=ROLES,
    run=run,
    warmup=WARMUP,
    anchor=True,
    check_channels=check_channels,
)
