"""What an op is: a named method with typed parameters, run over a shot, frame by frame.

An op knows nothing of sockets, files or hosts. It reads input frames from a `Shot`, reports
each step through `OpContext.step` (which is also where a cancel takes effect), and yields
finished frames; the job runner writes them. The same op runs under the server, under
`cvgen render` on a farm node, and in tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Collection, Iterator, Mapping, Protocol, Sequence

from cvgen.protocol.errors import ProtocolError
from cvgen.protocol.images import Image
from cvgen.protocol.schema import OpSchema, ParamSchema, RoleSchema

from ..errors import Cancelled, ModelNotFound

#: Ops declare parameters with the protocol's own schema, so server and hosts check values alike.
Param = ParamSchema
#: And their inputs with the protocol's role schema (`hello` sends `Role.describe()`).
Role = RoleSchema


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
    #: The inputs the op reads, required ones first: `sequence` roles have a frame per frame of
    #: the shot, `image` roles one file for the whole shot.
    roles: tuple[Role, ...]
    run: RunFn
    #: Frames an op that carries state from frame to frame renders, and discards, before the first
    #: frame of a farm chunk or resumed job, so the seam does not jump; 0 for ops without such state.
    warmup: int = 0
    #: Every frame depends on the shot's first frame too: a farm chunk or a resumed job renders it, and
    #: discards it, before its warm-up frames (restyle's anchor).
    anchor: bool = False
    #: Every frame depends on all frames before it (a window conditioned on the previous window's
    #: output): the farm runs the job as one task instead of chunks that would each redo the chain.
    sequential: bool = False
    #: Refuses, before the job is queued, input frames without the channels the op reads
    #: (role -> channel names of a frame sent inline; the job's input roles).
    check_channels: ChannelCheck = _any_channels
    #: Refuses, before the job is queued, parameters naming models the registry cannot give this op
    #: beyond what `model_kind` says (the resolved parameters; the server's model registry).
    check_models: Callable[[dict[str, Any], Any], None] = lambda params, registry: None

    @property
    def inputs(self) -> tuple[str, ...]:
        """The names of the roles a job must give."""
        return tuple(r.name for r in self.roles if r.required)

    @property
    def optional_inputs(self) -> tuple[str, ...]:
        """The names of the roles a job may give."""
        return tuple(r.name for r in self.roles if not r.required)

    @property
    def image_roles(self) -> tuple[str, ...]:
        """The names of the roles read from one file for the whole shot."""
        return tuple(r.name for r in self.roles if r.kind == "image")

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
        return {name: p.check(given[name], f"{self.name} {name}") if name in given else p.default
                for name, p in by_name.items()}

    def schema(self) -> dict[str, Any]:
        """The op as `hello` describes it: the protocol's own `OpSchema`, so hosts read what we wrote."""
        return OpSchema(self.name, self.summary, params=self.params, role_schemas=self.roles).describe()
