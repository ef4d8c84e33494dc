"""The DDIM generation loop, written out the way diffusers' pipelines step (eta = 0).

`guided_eps` + `ddim_sample` reproduce `StableDiffusionPipeline`'s denoising loop (step 7 of its
`__call__`) for a DDIMScheduler; the loop exposes a hook before each step (progress, cancel) and
one after it (the harmonize op's background latent blend).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from .inversion import EpsFn, _batched, configured

if TYPE_CHECKING:
    from diffusers import DDIMScheduler


def steps_for(fraction: float, steps: int) -> int:
    """The whole number of `steps` that `fraction` of them stands for, the same rule for every op.

    Truncated, `min(int(steps * fraction), steps)`, exactly as diffusers' img2img turns `strength`
    into its step count, so a strength runs the steps it runs there; the tau gates use it too,
    so tau = tau_b gate the same steps. Written as diffusers writes it (steps * fraction, not
    fraction * steps) so float rounding agrees as well.
    """
    return min(int(steps * fraction), steps)


def strength_steps(params: dict[str, Any]) -> int:
    """k, the steps an op with `strength` and `steps` parameters inverts and regenerates
    (`steps_for(strength, steps)`), refused when it is no step at all."""
    from ..errors import InputError

    k = steps_for(params["strength"], params["steps"])
    if k < 1:
        raise InputError(f"strength {params['strength']} of {params['steps']} steps regenerates no step at all; "
                         f"raise strength to at least {1 / params['steps']:.3g} or use more steps")
    return k


def guided_eps(unet, cond: torch.Tensor, uncond: torch.Tensor, guidance: float) -> EpsFn:
    """Classifier-free guidance exactly as `StableDiffusionPipeline` applies it, no grad.

    With `guidance` > 1 one UNet call on the batch [uncond, cond] (each broadcast from batch 1 to
    the latents' batch), then `uncond + guidance * (cond - uncond)`; with `guidance` <= 1 one call
    with `cond` only.
    """

    def eps(latents: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        batch = latents.shape[0]
        with torch.no_grad():
            if guidance <= 1:
                return unet(latents, t, encoder_hidden_states=_batched(cond, batch), return_dict=False)[0]
            embeddings = torch.cat([_batched(uncond, batch), _batched(cond, batch)])
            out = unet(torch.cat([latents] * 2), t, encoder_hidden_states=embeddings, return_dict=False)[0]
            out_uncond, out_cond = out.chunk(2)
            return out_uncond + guidance * (out_cond - out_uncond)

    return eps


def _schedule_for(scheduler: DDIMScheduler, timesteps: torch.Tensor, steps: int | None) -> DDIMScheduler:
    """A private copy of `scheduler` configured for the full schedule that `timesteps` ends.

    `DDIMScheduler.step` derives the previous timestep from the full step count, so it must be
    known: `steps` when given, else the scheduler's own `num_inference_steps` when it has been
    configured, else the smallest step count whose schedule ends with `timesteps`.
    """
    given = [int(t) for t in timesteps]
    if not given:
        raise ValueError("timesteps must not be empty")

    def fits(n: int) -> DDIMScheduler | None:
        if n < len(given) or n > scheduler.config.num_train_timesteps:
            return None
        sched = configured(scheduler, n)
        return sched if [int(t) for t in sched.timesteps[n - len(given) :]] == given else None

    if steps is not None:
        sched = fits(steps)
        if sched is None:
            raise ValueError(f"timesteps {given} are not the last {len(given)} of the {steps}-step schedule")
        return sched
    known = getattr(scheduler, "num_inference_steps", None)
    if known is not None and (sched := fits(known)) is not None:
        return sched
    for n in range(len(given), scheduler.config.num_train_timesteps + 1):
        if (sched := fits(n)) is not None:
            return sched
    raise ValueError(f"timesteps {given} do not end any schedule of this scheduler")


def ddim_sample(
    eps: EpsFn,
    scheduler: DDIMScheduler,
    latents: torch.Tensor,
    timesteps: torch.Tensor,
    on_step: Callable[[int, int], None] | None = None,
    after_step: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
    *,
    steps: int | None = None,
) -> torch.Tensor:
    """Denoise `latents` over `timesteps` (descending; the tail of a schedule) with eta = 0.

    Per step i: `on_step(i, len(timesteps))` (raise there to cancel), the model call on the
    scheduler-scaled input, `DDIMScheduler.step(..., eta=0)`, then `after_step(i, z)` whose result
    replaces z. `steps` is the full schedule's step count (`DDIMScheduler.step` needs it); when
    omitted it is taken from the scheduler if configured, else inferred from `timesteps`. The
    scheduler passed in is not modified.
    """
    sched = _schedule_for(scheduler, timesteps, steps)
    z = latents
    count = len(timesteps)
    for i, t in enumerate(timesteps):
        if on_step is not None:
            on_step(i, count)
        e = eps(sched.scale_model_input(z, t), t)
        z = sched.step(e, t, z, eta=0.0, return_dict=False)[0]
        if after_step is not None:
            z = after_step(i, z)
    return z


def frame_generator(seed: int, frame: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator for frame `frame` of a shot seeded `seed`, independent of which frames are rendered.

    The frame's seed is a hash of (seed, frame), so frame 7 gets the same noise whether the shot
    is rendered whole or frame 7 alone, and (seed, frame + 1) never repeats (seed + 1, frame).
    """
    digest = hashlib.blake2b(f"cvgen-frame:{int(seed)}:{int(frame)}".encode(), digest_size=8).digest()
    generator = torch.Generator(device=device)
    generator.manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))
    return generator
