"""Run one job: check it, work out which frames are left, run the op, write each frame atomically.

Shared by the server's workers and `cvgen render`, so a farm node and an artist's server
produce the same files from the same job.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable

from cvgen.protocol.errors import ProtocolError
from cvgen.protocol.images import Image
from cvgen.protocol.jobs import JobSpec
from cvgen.protocol.limits import Limits

from .. import __version__
from ..errors import InputError
from ..io.color import check_colorspace
from ..io.exr import read_provenance, write_exr
from ..ops import get_op
from ..ops.base import OpContext, OpSpec
from ..paths import PathPolicy
from .shot import FileShot, check_image_inputs
from .store import output_name, temp_file_target


@dataclass
class CheckedJob:
    op: OpSpec
    params: dict[str, Any]
    colorspace: str
    #: The models the job's model parameters name, defaults resolved (parameter -> entry name).
    models: dict[str, str]


def check_job(spec: JobSpec, inline_roles: Iterable[str] = (), registry: Any = None) -> CheckedJob:
    """Everything that can be known wrong about a job before any frame is read.

    With a model `registry`, an op's model must be configured there (its files are checked
    when it loads).
    """
    op = get_op(spec.op)
    params = op.resolve_params(spec.params)
    models = {param.name: registry.entry(params[param.name], param.model_kind).name
              for param in op.params if param.model_kind and registry is not None}
    if registry is not None:
        op.check_models(params, registry)
    colorspace = check_colorspace(spec.colorspace)
    given = set(spec.inputs) | set(inline_roles)
    allowed = set(op.inputs) | set(op.optional_inputs)
    unknown = sorted(given - allowed)
    if unknown:
        raise ProtocolError(f"{op.name} takes inputs {', '.join(sorted(allowed))}, not {', '.join(unknown)}")
    missing = [r for r in op.inputs if r not in given]
    if missing:
        raise ProtocolError(f"{op.name} needs a {' and a '.join(missing)} input")
    check_image_inputs(spec.inputs, op.image_roles)
    return CheckedJob(op, params, colorspace, models)


class ProgressClock:
    """Turns per-step reports into a job fraction and an ETA from the rate so far."""

    def __init__(self, todo: list[int]) -> None:
        self.index = {f: i for i, f in enumerate(todo)}
        self.total = max(len(todo), 1)
        self.start = time.monotonic()
        self.fraction = 0.0
        self.frame, self.step, self.steps = todo[0] if todo else 0, 0, 0

    def update(self, frame: int, step: int, steps: int) -> dict[str, Any]:
        within = min(max(step / steps, 0.0), 1.0) if steps > 0 else 0.0
        self.fraction = max(self.fraction, (self.index.get(frame, 0) + within) / self.total)
        elapsed = time.monotonic() - self.start
        eta = elapsed * (1 - self.fraction) / self.fraction if self.fraction > 0 else None
        self.frame, self.step, self.steps = frame, step, steps
        return {"frame": frame, "step": step, "steps": steps, "fraction": self.fraction, "eta_s": eta}

    def note(self, text: str) -> dict[str, Any]:
        """A progress report that says what the job is doing between steps ("loading svd ...")."""
        return {**self.update(self.frame, self.step, self.steps), "note": text}


def run_job(
    spec: JobSpec,
    output_dir: Path,
    *,
    base: Path | None = None,
    frames: Iterable[int] | None = None,
    on_progress: Callable[[dict[str, Any]], None] = lambda p: None,
    on_frame: Callable[[int, Path, Image], None] = lambda f, p, i: None,
    is_cancelled: Callable[[], bool] = lambda: False,
    models: Any = None,
    device: str | None = None,
    warmup: int | None = None,
    paths: PathPolicy | None = None,
    limits: Limits | None = None,
) -> list[int]:
    """Render the frames of `spec` not yet in `output_dir`; returns the frames written now.

    `frames` narrows the work to a sub-range (a farm chunk); relative input paths are taken
    from `base` (the job file's folder). `models` is the worker's model cache (one is made from
    the default models file when an op needs a model and none is given). `warmup` frames before
    the first one to render are rendered and discarded by ops that carry state from frame to
    frame (default: the op's own number), so a chunk starts the way a full run reaches it.
    `paths` (the server's) is checked again for every input frame as it is read, and frames over
    the server's `limits` on resolution are refused.

    Under `paths` the job is checked against the roots in force as it starts (they may have
    narrowed since it was submitted), each input frame is opened by `PathPolicy.open_input_file`,
    and the output folder is opened again from its root, following no symlink, for every frame
    written: a handful of system calls next to seconds of work per frame, and a folder swapped
    for a symlink in the middle of a job stops it at the next frame instead of the job writing on
    into a folder that is no longer where its path leads.
    """
    cache = None
    if get_op(spec.op).uses_model:
        from ..core.models import ModelCache, ModelRegistry

        cache = models if models is not None else ModelCache(ModelRegistry.load())
    checked = check_job(spec, registry=cache.registry if cache is not None else None)
    warmup = checked.op.warmup if warmup is None else warmup
    if warmup < 0:
        raise ProtocolError(f"warm-up must be 0 or more frames, not {warmup}")
    wanted = list(frames) if frames is not None else list(spec.frame_numbers)
    outside = [f for f in wanted if f not in spec.frame_numbers]
    if outside:
        raise ProtocolError(f"frames {outside[0]}.. lie outside the job's range {spec.frames[0]}-{spec.frames[1]}")
    if paths is not None:
        paths.check_spec(spec)
    shot = FileShot(spec.inputs, spec.frame_numbers, base, paths.open_input_file if paths else None, limits,
                    image_roles=checked.op.image_roles)
    shot.check_complete()
    target = paths.output_folder(output_dir, named=bool(spec.output)) if paths is not None else None
    if target is None:
        output_dir.mkdir(parents=True, exist_ok=True)
    else:
        target.create()
    with target.opened() if target is not None else nullcontext(None) as folder_fd:
        present = own_frames(spec, output_dir, wanted, folder_fd)
        remove_stale_temp_frames(spec, output_dir, wanted, folder_fd)
    todo = [f for f in wanted if output_name(spec, f) not in present]
    if not todo:
        return []
    shot.check_headers(lambda channels: checked.op.check_channels(channels, set(spec.inputs)))
    clock = ProgressClock(todo)
    lease = cache.lease(device, lambda text: on_progress(clock.note(text))) if cache is not None else None
    ctx = OpContext(
        todo=todo,
        colorspace=checked.colorspace,
        seed=spec.seed,
        on_step=lambda f, s, n: on_progress(clock.update(f, s, n)),
        is_cancelled=is_cancelled,
        load_model=lease.get if lease is not None else None,
        cache_dir=_cache_dir() if checked.op.uses_model else None,
        warmup=warmup,
    )
    # Provenance travels with the frame itself, so pixels delivered inline carry it as the file does.
    provenance = {
        f"cvgen:{key}": value
        for key, value in {
            "model": checked.models.get("model", ""),
            "models": json.dumps(checked.models, sort_keys=True),
            "op": spec.op,
            "params": json.dumps(checked.params, sort_keys=True),
            "seed": str(spec.seed),
            "colorspace": checked.colorspace,
            "version": __version__,
            "job": spec.job_id or "",
        }.items()
    }
    with lease if lease is not None else nullcontext():
        return _write_frames(checked, spec, shot, ctx, output_dir, target, provenance, clock, on_frame)


def _write_frames(checked: CheckedJob, spec: JobSpec, shot: FileShot, ctx: OpContext, output_dir: Path,
                  target: Any, provenance: dict[str, str], clock: ProgressClock,
                  on_frame: Callable[[int, Path, Image], None]) -> list[int]:
    written = []
    for frame, image in checked.op.run(shot, checked.params, ctx):
        if frame not in clock.index:
            raise InputError(f"op {spec.op} produced frame {frame}, which was not asked for")
        path = output_dir / output_name(spec, frame)
        image = replace(image, attributes={**image.attributes, **provenance})
        if target is None:
            write_exr(path, image)
        else:
            with target.opened() as folder:
                write_exr(path, image, dir_fd=folder)
        written.append(frame)
        on_frame(frame, path, image)
    return written


def own_frames(spec: JobSpec, folder: Path, frames: Iterable[int] | None = None,
               folder_fd: int | None = None) -> set[str]:
    """The names of this job's frames already in `folder` (read through `folder_fd` when the
    folder is opened already), to skip as done.

    A frame counts as the job's own only when its provenance names this job (`cvgen:job`); a
    frame of the same name that another job or another tool wrote is never taken for ours nor
    silently overwritten: the job is refused, naming it.
    """
    try:
        present = {entry.name for entry in os.scandir(folder if folder_fd is None else folder_fd)}
    except (FileNotFoundError, NotADirectoryError):
        return set()
    names = [output_name(spec, f) for f in (spec.frame_numbers if frames is None else frames)]
    ours = [n for n in names if n in present]
    own = spec.job_id or ""
    taken = [n for n in ours if _provenance(folder, n, folder_fd).get("job") != own]
    if taken:
        raise InputError(f"the output folder {folder} already holds {len(taken)} frame(s) this job would overwrite "
                         f"({', '.join(taken[:3])}{' ...' if len(taken) > 3 else ''}), written by another job or "
                         "not by cvgen; choose another output folder or shot name, or remove those frames first")
    return set(ours)


def remove_stale_temp_frames(spec: JobSpec, folder: Path, frames: Iterable[int], folder_fd: int | None) -> None:
    """Remove the hidden temp files a killed run left for `frames` (only those: farm chunks of
    one job write into one folder at once)."""
    names = {output_name(spec, f) for f in frames}
    for entry in os.scandir(folder if folder_fd is None else folder_fd):
        if entry.name.startswith(".") and temp_file_target(entry.name) in names and entry.is_file(follow_symlinks=False):
            try:
                os.unlink(entry.name if folder_fd is not None else folder / entry.name, dir_fd=folder_fd)
            except FileNotFoundError:
                pass


def _provenance(folder: Path, name: str, folder_fd: int | None) -> dict[str, str]:
    if folder_fd is None:
        return read_provenance(folder / name)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=folder_fd)
    except OSError:
        return {}
    try:
        return read_provenance(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


def _cache_dir() -> Path:
    from ..core.models import cache_dir

    return cache_dir()
