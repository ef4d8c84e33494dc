"""Euler sampling and noise-extrapolated inversion for continuous-time v-prediction models (SVD).

Stable Video Diffusion is sampled with diffusers' `EulerDiscreteScheduler` (Karras sigmas,
`timestep = 0.25 * log(sigma)`, v-prediction). With `c_out(s) = -s / sqrt(s^2 + 1)` and
`c_skip(s) = 1 / (s^2 + 1)` the denoised latent is `c_out * v + c_skip * x`, and one Euler step
from sigma to the lower sigma' is `x' = x + (x - x0_hat) / sigma * (sigma' - sigma)`.

`euler_step` writes that step out with the scheduler's own operations in the scheduler's order,
so in float32 it is `EulerDiscreteScheduler.step` bit for bit; unlike the scheduler it keeps the
input's dtype (the scheduler upcasts to float32), so the float64 round-trip tests mean what
they say. `inverse_euler_step` is its exact inverse with `v` held fixed, and `invert` is
Videoshop's noise-extrapolated inversion (METHODS.md section 3, step 3) built on it.

A `VFn(x, i)` is the model's v-prediction at latent `x` (unscaled: the function divides by
`sqrt(sigma_i^2 + 1)` itself) and noise level `sigmas[i]` of a `Schedule`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from diffusers import EulerDiscreteScheduler

VFn = Callable[[torch.Tensor, int], torch.Tensor]
StepFn = Callable[[int, int], None]


@dataclass(frozen=True)
class Schedule:
    """The `steps`-step schedule: `sigmas` descending with a final 0 (steps + 1 of them) and the
    `timesteps` the UNet is given for the first `steps` (the scheduler's own values)."""

    sigmas: torch.Tensor
    timesteps: torch.Tensor

    @property
    def steps(self) -> int:
        return len(self.timesteps)


def schedule(scheduler: EulerDiscreteScheduler, steps: int) -> Schedule:
    """The schedule `scheduler` samples `steps` steps with, read from a private copy of it."""
    sched = copy.deepcopy(scheduler)
    sched.set_timesteps(steps, device="cpu")
    return Schedule(sched.sigmas.clone(), sched.timesteps.clone())


def c_out(sigma: torch.Tensor) -> torch.Tensor:
    return -sigma / (sigma**2 + 1) ** 0.5


def c_skip(sigma: torch.Tensor) -> torch.Tensor:
    return 1 / (sigma**2 + 1)


def euler_step(x: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
    """One Euler step from `sigma` down to `sigma_next`, as `EulerDiscreteScheduler.step` computes it."""
    x0_hat = v * (-sigma / (sigma**2 + 1) ** 0.5) + (x / (sigma**2 + 1))
    derivative = (x - x0_hat) / sigma
    return x + derivative * (sigma_next - sigma)


def inverse_euler_step(x_c: torch.Tensor, v: torch.Tensor, sigma_c: torch.Tensor,
                       sigma_t: torch.Tensor) -> torch.Tensor:
    """The `x_t` at the higher `sigma_t` whose Euler step with `v` lands on `x_c` at `sigma_c`."""
    d = sigma_c - sigma_t
    return (sigma_t * x_c + d * c_out(sigma_t) * v) / (d * (1 - c_skip(sigma_t)) + sigma_t)


def invert(vfn: VFn, x0: torch.Tensor, sched: Schedule, k: int, noise: torch.Tensor,
           on_step: StepFn = lambda i, n: None) -> torch.Tensor:
    """Noise-extrapolated inversion of `x0` from sigma 0 up to `sigmas[steps - k]` (k model calls).

    Per step from `sigma_c` to the higher `sigma_t` the model is asked at a predicted `x_hat`:
    along the line from `x0` through the current latent when `sigma_c > 1`, else `x0` plus the
    one Gaussian `noise` at `sigma_t * std(x0)` (the latent is too close to `x0` for its direction
    to mean anything). Then the exact inverse Euler step with that `v`.
    """
    n = sched.steps
    spread = x0.std()
    x = x0
    sigma_c = torch.zeros((), dtype=sched.sigmas.dtype)
    for j, i in enumerate(range(n - 1, n - k - 1, -1)):
        on_step(j, k)
        sigma_t = sched.sigmas[i]
        if sigma_c > 1:
            x_hat = x0 + (x - x0) * sigma_t / sigma_c
        else:
            x_hat = x0 + noise * sigma_t * spread
        x = inverse_euler_step(x, vfn(x_hat, i), sigma_c, sigma_t)
        sigma_c = sigma_t
    return x


def sample(vfn: VFn, x: torch.Tensor, sched: Schedule, start: int,
           on_step: StepFn = lambda i, n: None) -> torch.Tensor:
    """Euler sampling of `x` (at `sigmas[start]`) down to sigma 0 over the last `steps - start` steps."""
    count = sched.steps - start
    for j, i in enumerate(range(start, sched.steps)):
        on_step(j, count)
        x = euler_step(x, vfn(x, i), sched.sigmas[i], sched.sigmas[i + 1])
    return x
