"""`evaluate`: score one or more results of the same shot, side by side, by METHODS.md's protocol.

Flow is computed once, on the source when there is one (what the reference does: a result's own
flicker must not bend the flow that judges it), else on each result itself, and the report says
which. Everything that can be wrong with the input (a missing frame, sizes that differ, an
unknown colour space, an unreadable video) is an `InputError` before any metric is computed.
"""

from __future__ import annotations

import os
import re
from importlib import metadata
from pathlib import Path

import cv2
import numpy as np

from cvgen.protocol.jobs import DEFAULT_COLORSPACE

from ..core.models.cache import ModelCache
from ..core.models.registry import ModelRegistry
from ..errors import InputError
from ..io.color import check_colorspace
from . import clip_metrics, flow, metrics
from .results import EvalReport, Metric, SequenceResult
from .sequences import DISPLAY, Sequence, check_same_shape, discover_frames, read_matte, read_sequence

_PLACEHOLDER_STEM = re.compile(r"[._-]?(#+|%0?\d*d)$")


def evaluate(results: list[str | Path], *, source: str | Path | None = None, original: str | Path | None = None,
             matte: str | Path | None = None, prompt: str = "", frames: range | None = None,
             colorspace: str = DEFAULT_COLORSPACE, registry: ModelRegistry | None = None, clip: str = "",
             pickscore: str = "", labels: list[str] | None = None) -> EvalReport:
    """Every metric of every result (an EXR path with #### / %04d, or a video file) over `frames`.

    `frames` None means the first result's frames on disk (a video's numbered from 1). `original`
    enables the harmonisation error, `matte` its fMSE and confines flicker to the foreground; ""
    model names take the models file's default, and a model not configured is reported as not
    computed with the reason.
    """
    if not results:
        raise InputError("nothing to evaluate: give at least one result sequence")
    if labels is not None and len(labels) != len(results):
        raise InputError(f"{len(labels)} labels for {len(results)} results: give one label per result")
    colorspace = check_colorspace(colorspace)
    numbers = list(frames) if frames is not None else discover_frames(results[0])
    if not numbers:
        raise InputError("the frame range is empty")
    outputs = [read_sequence(path, numbers, colorspace, "result") for path in results]
    shape = outputs[0].display.shape[1:3]
    for output in outputs[1:]:
        check_same_shape(output, shape, "result")
    reference = read_sequence(source, numbers, colorspace, "source") if source is not None else None
    untouched = read_sequence(original, numbers, colorspace, "original") if original is not None else None
    for extra, role in ((reference, "source"), (untouched, "original")):
        if extra is not None:
            check_same_shape(extra, shape, role)
    alpha = read_matte(matte, numbers, shape) if matte is not None else None

    shared = _flows(reference) if reference is not None else None
    registry = registry if registry is not None else ModelRegistry.load()
    cache = ModelCache(registry)
    clip_model = clip_metrics.load(registry, cache, clip, "clip")
    pick_model = clip_metrics.load(registry, cache, pickscore, "pickscore")

    names = labels or _labels([os.fspath(path) for path in results])
    scored = [SequenceResult(name, output.path, _score(output, numbers, prompt, shared or _flows(output), untouched,
                                                        alpha, clip_model, pick_model))
              for name, output in zip(names, outputs)]
    return EvalReport(
        frames=numbers, prompt=prompt, source=os.fspath(source) if source is not None else None,
        flow_on="source" if reference is not None else "result", flow_method=flow.METHOD, colorspace=colorspace,
        display=DISPLAY, models={"clip": clip_model.info, "pickscore": pick_model.info}, versions=_versions(),
        results=scored)


def _flows(sequence: Sequence) -> tuple[list[flow.PairFlow], list[flow.PairFlow]]:
    """Flows between consecutive frames (warp error, flicker) and across one frame (interpolation)."""
    return flow.consecutive_flows(sequence.display), flow.skip_flows(sequence.display)


def _score(output: Sequence, frames: list[int], prompt: str,
           flows: tuple[list[flow.PairFlow], list[flow.PairFlow]], untouched: Sequence | None,
           alpha: np.ndarray | None, clip_model: clip_metrics.LoadedOrWhy,
           pick_model: clip_metrics.LoadedOrWhy) -> list[Metric]:
    """The metrics of one result, in the report's order."""
    pairs, skips = flows
    found = clip_metrics.clip_metrics(output.display, frames, prompt, clip_model)
    found.append(clip_metrics.pickscore_metric(output.display, frames, prompt, pick_model))
    found.append(metrics.warp_error(output.display, frames, pairs))
    found.extend(metrics.interpolation(output.display, frames, skips))
    found.extend(metrics.harmonization(output.display, untouched.display if untouched else None, frames, alpha))
    found.append(metrics.flicker(output.luminance, frames, pairs, alpha))
    return found


def _labels(paths: list[str]) -> list[str]:
    """Each path's stem without its frame placeholder; the parent folder is added where stems repeat."""
    stems = [_PLACEHOLDER_STEM.sub("", Path(path).stem) or Path(path).stem for path in paths]
    return [f"{Path(path).parent.name}/{stem}" if stems.count(stem) > 1 else stem for path, stem in zip(paths, stems)]


def _versions() -> dict[str, str]:
    import torch
    import transformers

    try:
        cvgen = metadata.version("cvgen")
    except metadata.PackageNotFoundError:
        cvgen = "unknown (not installed)"
    return {"cvgen": cvgen, "opencv": cv2.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__}
