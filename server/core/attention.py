"""Self-attention processors: installing them on `attn1` only, and Inter-Frame Augmented attention.

IFA (METHODS.md 1.4): while frame i is generated, every self-attention layer appends to its keys
and values those frame i-1 had at the same layer and step, restricted to frame i-1's foreground
tokens, for the first `tau` fraction of the generation steps. It is a diffusers attention
processor, installed with `unet.set_attn_processor({...})` on the `attn1` entries only, so
cross-attention and IP-Adapter processors stay untouched.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F

from .mattes import binarize, to_grid
from .sampling import steps_for

AttnProcessor = Any  # a diffusers attention processor: callable(attn, hidden_states, ...)

_SELF = "attn1.processor"


def self_attention_layers(unet) -> list[str]:
    """The processor names of `unet`'s self-attention layers (those ending in "attn1.processor")."""
    return [name for name in unet.attn_processors if name.endswith(_SELF)]


@contextmanager
def self_attention_processors(unet, make: Callable[[str], AttnProcessor]) -> Iterator[None]:
    """Install `make(name)` on every `attn1` layer of `unet` for the block; restore the originals after.

    Every other processor object (cross-attention, IP-Adapter, ...) is passed back as it was; the
    originals come back on exit, also when the block raises.
    """
    originals = dict(unet.attn_processors)
    # set_attn_processor pops entries from the dict it is given: always hand it a fresh one.
    unet.set_attn_processor({name: make(name) if name.endswith(_SELF) else proc for name, proc in originals.items()})
    try:
        yield
    finally:
        unet.set_attn_processor(dict(originals))


def _grid(seq_len: int, latent: tuple[int, int]) -> tuple[int, int]:
    """The (h, w) token grid of a layer with `seq_len` tokens for a latent of size `latent`.

    SD UNets halve the grid per level with stride-2 convolutions (ceil for odd sizes).
    """
    height, width = latent
    for level in range(8):
        h, w = math.ceil(height / 2**level), math.ceil(width / 2**level)
        if h * w == seq_len:
            return h, w
        if h * w < seq_len:
            break
    raise ValueError(f"a layer with {seq_len} tokens does not match a latent of {height}x{width} at any UNet level")


class InterFrameAttention:
    """IFA (METHODS.md 1.4): frame i's attn1 keys/values are extended with frame i-1's K/V at the
    same layer and step, restricted to frame i-1's foreground tokens; only for the first `tau`
    fraction of generation steps; frame 0 plain; cache holds one frame.

    Use per frame: `begin_frame(matte, steps)`, then `set_step(i)` before each step's UNet call,
    then `end_frame()`. Step i is active when i < `steps_for(tau, steps)` (the step rule every op
    shares, sampling.py): the layer records this frame's
    foreground K (after `to_k`) and V, and, if frame i-1 recorded any at this layer and step,
    attends over [own tokens, frame i-1's foreground tokens]. Otherwise attention is plain and
    bit-identical to diffusers' `AttnProcessor2_0`. With a CFG batch [uncond, cond] each element is
    extended with the same element of the previous frame. The previous frame's entries for a
    step are dropped once a later step begins, so the cache holds about one frame's foreground
    K/V whatever the shot length. Outside begin_frame/end_frame the processor runs plain and
    records nothing.
    """

    def __init__(self, tau: float) -> None:
        if not 0.0 <= tau <= 1.0:
            raise ValueError(f"tau must be between 0 and 1 but is {tau}")
        self.tau = float(tau)
        self._previous: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self._current: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self._matte: torch.Tensor | None = None
        self._tokens: dict[tuple[int, int], torch.Tensor] = {}
        self._steps = 0
        self._active_steps = 0
        self._step: int | None = None

    def processor(self, name: str) -> AttnProcessor:
        """The processor for layer `name`, for `self_attention_processors(unet, ifa.processor)`."""
        return _IFAProcessor(self, name)

    def begin_frame(self, matte: torch.Tensor, steps: int) -> None:
        """Start a frame whose (1, 1, h_latent, w_latent) `matte` picks the tokens recorded for the next."""
        if matte.ndim != 4 or matte.shape[:2] != (1, 1):
            raise ValueError(f"matte must be (1, 1, h, w) but has shape {tuple(matte.shape)}")
        if steps < 1:
            raise ValueError(f"steps must be at least 1 but is {steps}")
        self._matte = matte.detach().float()
        self._tokens = {}
        self._steps = int(steps)
        self._active_steps = steps_for(self.tau, self._steps)
        self._step = None
        self._current = {}  # an unfinished frame (cancelled) leaves nothing behind

    def set_step(self, i: int) -> None:
        """Declare generation step `i` (call before the step's UNet call); drops consumed entries."""
        if self._matte is None:
            raise RuntimeError("set_step called before begin_frame")
        if not 0 <= i < self._steps:
            raise ValueError(f"step must be between 0 and {self._steps - 1} but is {i}")
        self._step = int(i)
        for key in [key for key in self._previous if key[1] < i]:
            del self._previous[key]

    def end_frame(self) -> None:
        """The K/V recorded this frame become the previous frame's; older ones are dropped."""
        self._previous = self._current
        self._current = {}
        self._matte = None
        self._tokens = {}
        self._step = None

    def reset(self) -> None:
        """Forget everything: the next frame runs plain, as frame 0 does."""
        self._previous = {}
        self.end_frame()

    @property
    def cache_bytes(self) -> int:
        """Bytes of K/V held (the previous frame's plus what this frame has recorded so far)."""
        return sum(t.numel() * t.element_size() for store in (self._previous, self._current) for kv in store.values() for t in kv)

    # -- used by the processors --------------------------------------------------------------

    def _active(self) -> bool:
        return self._matte is not None and self._step is not None and self._step < self._active_steps

    def _foreground(self, seq_len: int, device: torch.device) -> torch.Tensor:
        assert self._matte is not None
        grid = _grid(seq_len, tuple(self._matte.shape[-2:]))
        if grid not in self._tokens:
            mask = binarize(to_grid(self._matte, grid)).flatten() > 0
            self._tokens[grid] = mask.nonzero().flatten()
        return self._tokens[grid].to(device)

    def _extend(self, name: str, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Record this frame's foreground K/V; return the previous frame's to append, or None."""
        if not self._active():
            return None
        step = self._step
        assert step is not None
        tokens = self._foreground(key.shape[1], key.device)
        if tokens.numel() > 0:
            self._current[(name, step)] = (key.index_select(1, tokens), value.index_select(1, tokens))
        previous = self._previous.get((name, step))
        if previous is None:
            return None
        prev_key, prev_value = previous
        batch = key.shape[0]
        if prev_key.shape[0] != batch:
            if prev_key.shape[0] != 1:
                raise ValueError(f"previous frame's batch {prev_key.shape[0]} does not match this frame's batch {batch}")
            prev_key = prev_key.expand(batch, -1, -1)
            prev_value = prev_value.expand(batch, -1, -1)
        return prev_key.to(key.dtype), prev_value.to(value.dtype)


class _IFAProcessor:
    """diffusers' `AttnProcessor2_0`, with the key/value extension of `InterFrameAttention`."""

    def __init__(self, owner: InterFrameAttention, name: str) -> None:
        self.owner = owner
        self.name = name

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)

        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)

        self_attention = encoder_hidden_states is None
        batch_size, sequence_length, _ = hidden_states.shape if self_attention else encoder_hidden_states.shape

        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])

        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)

        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)

        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)

        if self_attention:
            extra = self.owner._extend(self.name, key, value)
            if extra is not None:
                key = torch.cat([key, extra[0]], dim=1)
                value = torch.cat([value, extra[1]], dim=1)
                if attention_mask is not None:  # the appended tokens are visible to every query
                    fill = True if attention_mask.dtype == torch.bool else 0.0
                    attention_mask = F.pad(attention_mask, (0, extra[0].shape[1]), value=fill)

        inner_dim = key.shape[-1]
        head_dim = inner_dim // attn.heads

        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)

        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        hidden_states = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False
        )

        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)

        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)

        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)

        if attn.residual_connection:
            hidden_states = hidden_states + residual

        hidden_states = hidden_states / attn.rescale_output_factor

        return hidden_states
