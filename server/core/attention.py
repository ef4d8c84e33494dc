"""Self-attention that also attends to cached keys and values of other frames.

One mechanism serves two ops. While a frame is generated, every self-attention layer (`attn1`)
records its keys and values per step, and appends those that other frames recorded at the same
layer and step to its own before attending:

- harmonize's Inter-Frame Augmented attention (METHODS.md 1.4): the previous frame's foreground
  tokens, for the first `tau` fraction of the steps (`InterFrameAttention`);
- restyle's cross-frame attention (METHODS.md 2.4): all tokens of the shot's first frame (the
  anchor) and of the previous frame, at every step, mixed with frame-local attention by `omega`
  (`CrossFrameAttention`).

Both are diffusers attention processors installed with `set_attn_processor({...})` on the `attn1`
entries only (of a UNet, or of a ControlNet), so cross-attention and IP-Adapter processors stay
untouched. Where nothing is appended, attention is diffusers' `AttnProcessor2_0`, bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .mattes import binarize, to_grid
from .sampling import steps_for

AttnProcessor = Any  # a diffusers attention processor: callable(attn, hidden_states, ...)
KV = tuple[torch.Tensor, torch.Tensor]

_SELF = "attn1.processor"


def self_attention_layers(model) -> list[str]:
    """The processor names of `model`'s self-attention layers (those ending in "attn1.processor")."""
    return [name for name in model.attn_processors if name.endswith(_SELF)]


@contextmanager
def self_attention_processors(model, make: Callable[[str], AttnProcessor]) -> Iterator[None]:
    """Install `make(name)` on every `attn1` layer of `model` (a UNet or a ControlNet) for the
    block; restore the originals after.

    Every other processor object (cross-attention, IP-Adapter, ...) is passed back as it was; the
    originals come back on exit, also when the block raises.
    """
    originals = dict(model.attn_processors)
    # set_attn_processor pops entries from the dict it is given: always hand it a fresh one.
    model.set_attn_processor({name: make(name) if name.endswith(_SELF) else proc for name, proc in originals.items()})
    try:
        yield
    finally:
        model.set_attn_processor(dict(originals))


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


@dataclass(frozen=True)
class Extension:
    """Keys and values appended to batch rows `rows:` of a layer; rows before `rows` attend frame-locally."""

    key: torch.Tensor
    value: torch.Tensor
    rows: int = 0


def _rows_of(kv: KV, batch: int) -> KV:
    """`kv` recorded for `batch` rows (or for one row, broadcast) of this frame's batch."""
    key, value = kv
    if key.shape[0] != batch:
        if key.shape[0] != 1:
            raise ValueError(f"another frame's batch {key.shape[0]} does not match this frame's batch {batch}")
        key, value = key.expand(batch, -1, -1), value.expand(batch, -1, -1)
    return key, value


class CachedFrameAttention:
    """The frame and step bookkeeping both methods share, and the processors they install.

    Per frame: `_begin(steps)`, then `set_step(i)` before each step's model calls, then
    `end_frame()`. What a frame records at (layer, step) becomes the previous frame's at its end;
    the previous frame's entries for a step are dropped once a later step begins, so about one
    frame's K/V is held besides what a subclass keeps. Outside a frame the processors run plain
    and record nothing. Subclasses say what a layer records and appends (`_extend`).
    """

    def __init__(self) -> None:
        self._previous: dict[tuple[str, int], KV] = {}
        self._current: dict[tuple[str, int], KV] = {}
        self._steps = 0
        self._step: int | None = None
        self._in_frame = False

    def processor(self, name: str) -> AttnProcessor:
        """The processor for layer `name`, for `self_attention_processors(model, owner.processor)`.

        Layers of two models sharing one owner need distinct names (prefix the ControlNet's).
        """
        return _ExtendedAttnProcessor(self, name)

    def _begin(self, steps: int) -> None:
        if steps < 1:
            raise ValueError(f"steps must be at least 1 but is {steps}")
        self._steps = int(steps)
        self._step = None
        self._current = {}  # an unfinished frame (cancelled) leaves nothing behind
        self._in_frame = True

    def set_step(self, i: int) -> None:
        """Declare generation step `i` (call before the step's model calls); drops consumed entries."""
        if not self._in_frame:
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
        self._step = None
        self._in_frame = False

    def reset(self) -> None:
        """Forget the previous frame: the next frame has no predecessor to attend to."""
        self._previous = {}
        self.end_frame()

    def _stores(self) -> list[dict[tuple[str, int], KV]]:
        return [self._previous, self._current]

    @property
    def cache_bytes(self) -> int:
        """Bytes of K/V held."""
        return sum(t.numel() * t.element_size() for store in self._stores() for kv in store.values() for t in kv)

    def _extend(self, name: str, key: torch.Tensor, value: torch.Tensor) -> Extension | None:
        """Record what this frame keeps of layer `name`'s K/V; return what to append, or None."""
        raise NotImplementedError


class InterFrameAttention(CachedFrameAttention):
    """IFA (METHODS.md 1.4): frame i's attn1 keys/values are extended with frame i-1's K/V at the
    same layer and step, restricted to frame i-1's foreground tokens; only for the first `tau`
    fraction of generation steps; frame 0 plain; cache holds one frame.

    Use per frame: `begin_frame(matte, steps)`, then `set_step(i)` before each step's UNet call,
    then `end_frame()`. Step i is active when i < `steps_for(tau, steps)` (the step rule every op
    shares, sampling.py): the layer records this frame's foreground K (after `to_k`) and V, and,
    if frame i-1 recorded any at this layer and step, attends over [own tokens, frame i-1's
    foreground tokens]. Otherwise attention is plain. With a CFG batch [uncond, cond] each element
    is extended with the same element of the previous frame.
    """

    def __init__(self, tau: float) -> None:
        if not 0.0 <= tau <= 1.0:
            raise ValueError(f"tau must be between 0 and 1 but is {tau}")
        super().__init__()
        self.tau = float(tau)
        self._matte: torch.Tensor | None = None
        self._tokens: dict[tuple[int, int], torch.Tensor] = {}
        self._active_steps = 0

    def begin_frame(self, matte: torch.Tensor, steps: int) -> None:
        """Start a frame whose (1, 1, h_latent, w_latent) `matte` picks the tokens recorded for the next."""
        if matte.ndim != 4 or matte.shape[:2] != (1, 1):
            raise ValueError(f"matte must be (1, 1, h, w) but has shape {tuple(matte.shape)}")
        self._begin(steps)
        self._matte = matte.detach().float()
        self._tokens = {}
        self._active_steps = steps_for(self.tau, self._steps)

    def end_frame(self) -> None:
        super().end_frame()
        self._matte = None
        self._tokens = {}

    def _active(self) -> bool:
        return self._matte is not None and self._step is not None and self._step < self._active_steps

    def _foreground(self, seq_len: int, device: torch.device) -> torch.Tensor:
        assert self._matte is not None
        grid = _grid(seq_len, tuple(self._matte.shape[-2:]))
        if grid not in self._tokens:
            mask = binarize(to_grid(self._matte, grid)).flatten() > 0
            self._tokens[grid] = mask.nonzero().flatten()
        return self._tokens[grid].to(device)

    def _extend(self, name: str, key: torch.Tensor, value: torch.Tensor) -> Extension | None:
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
        prev_key, prev_value = _rows_of(previous, key.shape[0])
        return Extension(prev_key.to(key.dtype), prev_value.to(value.dtype))


class CrossFrameAttention(CachedFrameAttention):
    """restyle's temporal consistency (METHODS.md 2.4): every attn1 layer attends to its own tokens
    plus all tokens the anchor (the first frame generated) and the previous frame had at the same
    layer and step, at every step.

    Use per frame: `begin_frame(steps)`, `set_step(i)` before each step, `end_frame()`. The first
    frame after construction (or `forget_anchor`) is the anchor: it attends plainly and its K/V
    are kept for the whole shot. A frame whose previous frame is the anchor appends the anchor's
    K/V once. The `omega` mix needs frame-local and cross-frame predictions in one model call:
    set `local_rows` to the number of leading batch rows that attend frame-locally (0: all rows
    are cross-frame); only the cross-frame rows are recorded. The cache holds the anchor's K/V
    and about one more frame's, whatever the shot length.
    """

    def __init__(self) -> None:
        super().__init__()
        self._anchor: dict[tuple[str, int], KV] | None = None
        self.local_rows = 0

    @property
    def has_anchor(self) -> bool:
        """Whether the anchor has been generated: frames now attend to other frames."""
        return self._anchor is not None

    def begin_frame(self, steps: int) -> None:
        self._begin(steps)
        self.local_rows = 0

    def end_frame(self) -> None:
        if self._anchor is None and self._in_frame:
            self._anchor, self._current = self._current, {}  # the next frame's previous is the anchor
        super().end_frame()

    def forget_anchor(self) -> None:
        """Start over: the next frame becomes the anchor."""
        self._anchor = None
        self.reset()

    def _stores(self) -> list[dict[tuple[str, int], KV]]:
        return [*super()._stores(), *([self._anchor] if self._anchor is not None else [])]

    def _extend(self, name: str, key: torch.Tensor, value: torch.Tensor) -> Extension | None:
        step = self._step
        if step is None:
            return None
        rows = self.local_rows
        if not 0 <= rows < key.shape[0]:
            raise ValueError(f"local_rows must leave cross-frame rows of the batch of {key.shape[0]}, but is {rows}")
        own = (key[rows:], value[rows:])
        self._current[(name, step)] = own
        others = [store[(name, step)] for store in (self._anchor, self._previous)
                  if store is not None and (name, step) in store]
        if not others:
            return None
        kept = [_rows_of(kv, own[0].shape[0]) for kv in others]
        extra_key = torch.cat([k for k, _ in kept], dim=1).to(key.dtype)
        extra_value = torch.cat([v for _, v in kept], dim=1).to(value.dtype)
        return Extension(extra_key, extra_value, rows)


class _ExtendedAttnProcessor:
    """diffusers' `AttnProcessor2_0`, with self-attention's keys and values extended by its owner."""

    def __init__(self, owner: CachedFrameAttention, name: str) -> None:
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

        extension = self.owner._extend(self.name, key, value) if self_attention else None
        if extension is None:
            hidden_states = _attend(attn, query, key, value, attention_mask)
        elif extension.rows == 0:
            hidden_states = _attend(attn, query, *_appended(key, value, attention_mask, extension))
        else:  # leading rows frame-local, the rest cross-frame: one model call for both predictions
            r = extension.rows
            local_mask = attention_mask[:r] if attention_mask is not None else None
            cross_mask = attention_mask[r:] if attention_mask is not None else None
            hidden_states = torch.cat([
                _attend(attn, query[:r], key[:r], value[:r], local_mask),
                _attend(attn, query[r:], *_appended(key[r:], value[r:], cross_mask, extension)),
            ])

        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)

        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)

        if attn.residual_connection:
            hidden_states = hidden_states + residual

        hidden_states = hidden_states / attn.rescale_output_factor

        return hidden_states


def _appended(
    key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None, extension: Extension
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Keys and values with the extension's appended, and the mask widened so every query sees them."""
    if mask is not None:
        fill = True if mask.dtype == torch.bool else 0.0
        mask = F.pad(mask, (0, extension.key.shape[1]), value=fill)
    return torch.cat([key, extension.key], dim=1), torch.cat([value, extension.value], dim=1), mask


def _attend(
    attn, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """`AttnProcessor2_0`'s multi-head scaled dot-product attention on (B, L, C) projections."""
    batch_size = query.shape[0]
    head_dim = key.shape[-1] // attn.heads

    query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
    key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
    value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)

    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)

    hidden_states = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=0.0, is_causal=False)
    hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
    return hidden_states.to(query.dtype)
