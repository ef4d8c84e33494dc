"""What an op is: a named method with typed parameters, run over a shot, frame by frame.

An op knows nothing of sockets, files or hosts. It reads input frames from a `Shot`, reports
each step through `OpContext.step` (which is also where a cancel takes effect), and yields
finished frames; the job runner writes them. The same op runs under the server, under
`cvgen render` on a farm node, and in tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Collection, Iterator, Mapping, Protocol, Sequence

from cvgen.protocol.errors import ProtocolError
from cvgen.protocol.images import Image

from ..errors import Cancelled, ModelNotFound

_KINDS = {"float": (int, float), "int": (int,), "bool": (bool,), "str": (str,), "choice": (str,)}


@dataclass(frozen=True)
class Param:
    """One op parameter as hosts see it in `hello`: type, default, range and a one-line help."""

    name: str
    kind: str
    default: Any
    help: str
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] = ()
    #: For a model name: the kind of models-file entry it names ("sd", "controlnet", ...); empty
    #: means that kind's default.
    model_kind: str | None = None

    def check(self, value: Any) -> Any:
        """The value, converted to the parameter's type; out-of-range values name the limit."""
        types = _KINDS[self.kind]
        if isinstance(value, bool) and self.kind != "bool" or not isinstance(value, types):
            raise ProtocolError(f"parameter {self.name} must be {self.kind} but is {value!r}")
        if self.kind == "float":
            value = float(value)
            if not math.isfinite(value):
                raise ProtocolError(f"parameter {self.name} must be a finite number but is {value}")
        if self.min is not None and value < self.min or self.max is not None and value > self.max:
            raise ProtocolError(f"parameter {self.name} must be between {self.min} and {self.max} but is {value}")
        if self.kind == "choice" and value not in self.choices:
            raise ProtocolError(f"parameter {self.name} must be one of {', '.join(self.choices)} but is {value!r}")
        return value

    def schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.kind, "default": self.default, "help": self.help}
        if self.min is not None:
            out["min"] = self.min
        if self.max is not None:
            out["max"] = self.max
        if self.choices:
            out["choices"] = list(self.choices)
        if self.model_kind:
            out["model_kind"] = self.model_kind
        return out


class Shot(Protocol):
    """Read access to a job's input frames, by role and host frame number."""

    frames: range

    def has(self, role: str) -> bool: ...

    def read(self, role: str, frame: int) -> Image: ...


@dataclass
class OpContext:
    """What an op may know about its run besides the pixels."""

    todo: list[int]
    colorspace: str
    seed: int = 0
    on_step: Callable[[int, int, int], None] = lambda frame, step, steps: None
    is_cancelled: Callable[[], bool] = lambda: False
    load_model: Callable[[str, str], Any] | None = None
    cache_dir: Path | None = None
    #: Frames of the shot to render, and discard, before the first of `todo` (see `OpSpec.warmup`).
    warmup: int = 0

    def step(self, frame: int, step: int, steps: int) -> None:
        """Report progress; raises `Cancelled` here, between steps, once the job is cancelled."""
        if self.is_cancelled():
            raise Cancelled("the job was cancelled")
        self.on_step(frame, step, steps)

    def model(self, name: str, kind: str = "sd") -> Any:
        """The named model of `kind` (empty: the kind's default), loaded on this job's device.

        The worker keeps it loaded between jobs, and never unloads it while this job runs.
        """
        if self.load_model is None:
            raise ModelNotFound(f"this run has no model registry, so model {name!r} cannot be loaded")
        return self.load_model(name, kind)


RunFn = Callable[[Shot, dict[str, Any], OpContext], Iterator[tuple[int, Image]]]
ChannelCheck = Callable[[Mapping[str, Sequence[str]], Collection[str]], None]


def _any_channels(channels: Mapping[str, Sequence[str]], roles: Collection[str]) -> None:
    """Ops that take any channels."""


@dataclass(frozen=True)
class OpSpec:
    name: str
    summary: str
    params: tuple[Param, ...]
    inputs: tuple[str, ...]
    optional_inputs: tuple[str, ...]
    run: RunFn
    #: Frames an op that carries state from frame to frame renders, and discards, before the first
    #: frame of a farm chunk or resumed job, so the seam does not jump; 0 for ops without such state.
    warmup: int = 0
    #: Refuses, before the job is queued, input frames without the channels the op reads
    #: (role -> channel names of a frame sent inline; the job's input roles).
    check_channels: ChannelCheck = _any_channels

    @property
    def uses_model(self) -> bool:
        return any(p.model_kind for p in self.params)

    def resolve_params(self, given: dict[str, Any]) -> dict[str, Any]:
        """Defaults filled in and every value checked, before any work starts."""
        by_name = {p.name: p for p in self.params}
        unknown = sorted(set(given) - set(by_name))
        if unknown:
            raise ProtocolError(
                f"{self.name} has no parameter {', '.join(unknown)}; it takes {', '.join(by_name) or 'none'}"
            )
        return {name: p.check(given[name]) if name in given else p.default for name, p in by_name.items()}

    def schema(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "summary": self.summary,
            "inputs": list(self.inputs),
            "optional_inputs": list(self.optional_inputs),
            "params": [p.schema() for p in self.params],
        }
