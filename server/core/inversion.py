"""Deterministic DDIM inversion (eta = 0), on DDIM sampling's own timestep grid (METHODS.md).

Conventions, chosen so that `ddim_invert` followed by `sampling.ddim_sample` returns the start
latent (exactly, for a noise model that depends on t only):

- The grid is the one `DDIMScheduler.set_timesteps(steps)` gives, descending: t_steps > ... > t_1.
  DDIM sampling steps from level t_i down to level `t_i - num_train_timesteps // steps` (the
  scheduler's `prev_timestep`), whose alpha is `final_alpha_cumprod` when that is below 0. The
  clean latent z0 therefore sits at alpha = `final_alpha_cumprod`.
- Inversion step i (i = 1..k) is the algebraic inverse of the sampling step at t_i: it goes from
  the level of `t_i - num_train_timesteps // steps` (z0 for i = 1; t_{i-1} for the usual
  "leading" spacing) up to t_i, with the model evaluated at the *current* (lower-level) latent
  and timestep t_i:

      e      = eps(z, t_i)                      (converted to noise, see below)
      x0_hat = (z - sqrt(1 - a_prev) * e) / sqrt(a_prev)
      z'     = sqrt(a_{t_i}) * x0_hat + sqrt(1 - a_{t_i}) * e

  Sampling at t_i evaluates the model at z' with the same t_i, so the only approximation is
  eps(z, t_i) ~ eps(z', t_i). METHODS.md warns that diffusers' `DDIMInverseScheduler` may pair
  steps with timesteps one grid step off; in diffusers 0.42 its step from
  `t - num_train_timesteps // steps` up to t, with the model called at t, is this same step for
  epsilon models (tests/test_core.py checks the two agree bit for bit on the SD config). We do
  not depend on it: the grid and both levels come from `DDIMScheduler` itself.
- `EpsFn` returns the model's raw output in the scheduler's `prediction_type` parametrisation
  (noise for "epsilon" models), exactly what `DDIMScheduler.step` is given. Inversion converts it
  to noise the way `DDIMScheduler.step` would for (output, t_i, z): with a = a_{t_i},
  "v_prediction": e = sqrt(a) * v + sqrt(1 - a) * z;  "sample": e = (z - sqrt(a) * x0) / sqrt(1 - a).
  (`DDIMInverseScheduler` converts v with the lower level's alpha instead.) This keeps the round
  trip exact with v-models too, for a model whose noise prediction depends on t only.
- `clip_sample` / `thresholding` cannot be inverted and are ignored here: the model loader turns
  them off whatever a folder's scheduler config says (`models._ddim`), as diffusers does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from diffusers import DDIMScheduler

#: (latents, timestep) -> the model's prediction (noise for epsilon models; see the module doc).
EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def configured(scheduler: DDIMScheduler, steps: int) -> DDIMScheduler:
    """A private copy of `scheduler` with `set_timesteps(steps)` called; the original is untouched."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1 but is {steps}")
    copy = type(scheduler).from_config(scheduler.config)
    copy.set_timesteps(steps)
    return copy


def sampling_timesteps(scheduler: DDIMScheduler, steps: int) -> torch.Tensor:
    """The descending timesteps `scheduler.set_timesteps(steps)` gives (computed on a copy)."""
    return configured(scheduler, steps).timesteps


def to_epsilon(scheduler: DDIMScheduler, output: torch.Tensor, t: torch.Tensor | int, sample: torch.Tensor) -> torch.Tensor:
    """Model `output` at (`sample`, `t`) as predicted noise, as `DDIMScheduler.step` derives it."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return output
    alpha = scheduler.alphas_cumprod[int(t)]
    if kind == "v_prediction":
        return alpha**0.5 * output + (1 - alpha) ** 0.5 * sample
    if kind == "sample":
        return (sample - alpha**0.5 * output) / (1 - alpha) ** 0.5
    raise ValueError(f"prediction_type must be 'epsilon', 'v_prediction' or 'sample' but is {kind!r}")


def ddim_invert(
    eps: EpsFn,
    scheduler: DDIMScheduler,
    z0: torch.Tensor,
    steps: int,
    k: int,
    on_step: Callable[[int, int], None] | None = None,
) -> list[torch.Tensor]:
    """Invert clean latents `z0` for `k` of `steps` DDIM steps (partial inversion, guidance as `eps`).

    Returns [z at t_1, ..., z at t_k], t_1 the smallest sampling timestep, so that sampling from
    `result[-1]` over `sampling_timesteps(scheduler, steps)[steps - k:]` (what diffusers' img2img
    does with strength = k / steps) returns `z0`. `on_step(i, k)` runs before each model call
    (i = 0..k-1); raise there to cancel. The conventions are in the module docstring.
    """
    if not 1 <= k <= steps:
        raise ValueError(f"k must be between 1 and steps ({steps}) but is {k}")
    sched = configured(scheduler, steps)
    ascending = sched.timesteps.flip(0)[:k]
    stride = sched.config.num_train_timesteps // steps
    z = z0
    out: list[torch.Tensor] = []
    for i, t in enumerate(ascending):
        if on_step is not None:
            on_step(i, k)
        prev = int(t) - stride
        a_prev = sched.alphas_cumprod[prev] if prev >= 0 else sched.final_alpha_cumprod
        a_t = sched.alphas_cumprod[int(t)]
        e = to_epsilon(sched, eps(z, t), t, z)
        x0_hat = (z - (1 - a_prev) ** 0.5 * e) / a_prev**0.5
        z = a_t**0.5 * x0_hat + (1 - a_t) ** 0.5 * e
        out.append(z)
    return out


def _batched(embeddings: torch.Tensor, batch: int) -> torch.Tensor:
    if embeddings.shape[0] == batch:
        return embeddings
    if embeddings.shape[0] == 1:
        return embeddings.expand(batch, *embeddings.shape[1:])
    raise ValueError(f"conditioning has batch {embeddings.shape[0]} but the latents have batch {batch}")


def unet_eps(unet, embeddings: torch.Tensor) -> EpsFn:
    """Guidance-1 model function with fixed conditioning `embeddings` (batch 1 is broadcast), no grad."""

    def eps(latents: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            cond = _batched(embeddings, latents.shape[0])
            return unet(latents, t, encoder_hidden_states=cond, return_dict=False)[0]

    return eps
