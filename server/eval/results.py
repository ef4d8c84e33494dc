"""What an evaluation found, per result sequence and metric: the data every report is written from."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Metric:
    """One metric of one result sequence; `value` is None exactly when `not_computed` says why."""

    key: str                  # "clip_consistency_all", "clip_consistency_consecutive", "clip_text", "pickscore",
                              # "warp_error", "interpolation_error", "interpolation_psnr", "harmonization_mse",
                              # "harmonization_fmse", "harmonization_psnr", "flicker_stops"
    label: str                # "CLIP frame consistency (all pairs)"
    unit: str                 # "" | "dB" | "stops"
    better: str               # "higher" | "lower"
    definition: str           # one or two sentences: what exactly was computed, in which space
    value: float | None = None
    per_frame: dict[int, float] = field(default_factory=dict)   # host frame number -> value
    not_computed: str | None = None


@dataclass
class SequenceResult:
    label: str                # "colormatch", or the path's stem
    path: str
    metrics: list[Metric]


@dataclass
class EvalReport:
    frames: list[int]
    prompt: str
    source: str | None        # the source sequence, or None
    flow_on: str              # "source" | "result" (flow computed on the result: no source given)
    flow_method: str          # "OpenCV DIS optical flow (preset medium), no learned weights"
    colorspace: str           # the sequences' scene-linear colour space
    display: str              # the display-referred space metrics see, e.g. "sRGB display, [0, 1]"
    models: dict[str, Any]    # {"clip": {"name", "path", "fingerprint"} | None, "pickscore": ...}
    versions: dict[str, str]  # {"cvgen": ..., "opencv": ..., "torch": ..., "transformers": ...}
    results: list[SequenceResult]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
