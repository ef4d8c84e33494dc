"""CLIP frame consistency, CLIP text alignment and PickScore, as the LOVEU-TGVE script computes them.

Frames are resized to 480x480 first (8-bit, PIL's bicubic, as the official script resizes its
PIL frames), then given to the model's own processor through `Clip.image_features`. A model that
is not configured, or does not load, gives metrics marked not computed with the reason: the
built-in tiny models have random weights, so they are used only when named explicitly (tests,
plumbing checks), never as a silent default that would print meaningless scores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cvgen.protocol.errors import CvgenError

from ..core.models.cache import ModelCache
from ..core.models.kinds import KINDS
from ..core.models.registry import ModelRegistry
from .results import Metric

#: The official script's frame size before the processor.
RESIZE = (480, 480)


@dataclass
class LoadedOrWhy:
    """A model ready to score, with what the report records of it, or why there is none."""

    model: Any = None
    info: dict[str, str] | None = None
    why: str | None = None
    random_weights: bool = False

    def named(self) -> str:
        """How definitions name the model: the built-in tiny ones are flagged as meaningless for quality."""
        if self.info is None:
            return "none"
        return self.info["name"] + (", random weights: plumbing only, not quality" if self.random_weights else "")


def load(registry: ModelRegistry, cache: ModelCache, name: str, kind: str) -> LoadedOrWhy:
    """The `kind` model called `name` ("" = the models file's default), or why it cannot be used."""
    label = KINDS[kind].label
    try:
        entry = registry.entry(name, kind)
    except CvgenError as exc:
        return LoadedOrWhy(why=str(exc))
    if not name and entry.builtin:
        where = registry.source or "no models file (set CVGEN_MODELS or pass --models)"
        return LoadedOrWhy(why=f"no {label} model configured ({where}); the built-in {entry.name} has random "
                               f"weights, name it explicitly only to test the plumbing")
    try:
        model = cache.get(entry.name, kind)
    except CvgenError as exc:
        return LoadedOrWhy(why=f"{label} model {entry.name!r} did not load: {exc}")
    info = {"name": entry.name, "path": str(entry.path), "fingerprint": model.fingerprint,
            "random_weights": "yes" if entry.builtin else "no"}
    return LoadedOrWhy(model, info, random_weights=entry.builtin)


def resized(display: np.ndarray) -> Any:
    """(N, 3, 480, 480) float tensor of 8-bit values / 255: frames as the official script feeds them."""
    import torch
    from PIL import Image as PILImage

    eight_bit = np.round(np.clip(display, 0, 1) * 255).astype(np.uint8)
    frames = [np.asarray(PILImage.fromarray(frame).resize(RESIZE, PILImage.Resampling.BICUBIC)) for frame in eight_bit]
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 255.0


def clip_metrics(display: np.ndarray, frames: list[int], prompt: str, clip: LoadedOrWhy) -> list[Metric]:
    """Frame consistency (all ordered pairs, consecutive pairs) and text alignment with one CLIP model."""
    name = clip.named()
    every = Metric("clip_consistency_all", "CLIP frame consistency (all pairs)", "", "higher",
                   f"Cosine similarity of CLIP ({name}) image embeddings averaged over all ordered pairs of distinct "
                   "frames (LOVEU-TGVE); frames 480x480, then the model's processor. Per frame: its mean over the others.")
    consecutive = Metric("clip_consistency_consecutive", "CLIP frame consistency (consecutive)", "", "higher",
                         f"Cosine similarity of CLIP ({name}) image embeddings of frames t and t+1, mean over t; "
                         "frames 480x480, then the model's processor. Keyed by t.")
    text = Metric("clip_text", "CLIP text alignment", "", "higher",
                  f"logit_scale.exp() x cosine of each frame's CLIP ({name}) image embedding with the prompt's text "
                  "embedding (100 x cosine for CLIP ViT-L/14), mean over frames.")
    metrics = [every, consecutive, text]
    if clip.model is None:
        for metric in metrics:
            metric.not_computed = clip.why
        return metrics
    images = clip.model.image_features(resized(display)).cpu()
    cosine = (images @ images.T).numpy().astype(np.float64)
    count = len(frames)
    if count < 2:
        every.not_computed = consecutive.not_computed = f"needs at least 2 frames, the range has {count}"
    else:
        off_diagonal = ~np.eye(count, dtype=bool)
        for i, frame in enumerate(frames):
            every.per_frame[frame] = float(cosine[i][off_diagonal[i]].mean())
        every.value = float(cosine[off_diagonal].mean())
        for i in range(count - 1):
            consecutive.per_frame[frames[i]] = float(cosine[i, i + 1])
        consecutive.value = float(np.mean(list(consecutive.per_frame.values())))
    if not prompt:
        text.not_computed = "no prompt given"
    else:
        words = clip.model.text_features([prompt]).cpu()
        scale = float(clip.model.model.logit_scale.exp().float())
        scores = scale * (images @ words.T)[:, 0].numpy().astype(np.float64)
        text.per_frame = {frame: float(score) for frame, score in zip(frames, scores)}
        text.value = float(scores.mean())
    return metrics


def pickscore_metric(display: np.ndarray, frames: list[int], prompt: str, pickscore: LoadedOrWhy) -> Metric:
    """PickScore of each frame for the prompt, mean over frames."""
    name = pickscore.named()
    metric = Metric("pickscore", "PickScore", "", "higher",
                    f"PickScore ({name}): logit_scale.exp() x (text . image) of L2-normalised embeddings, frames "
                    "480x480 then the model's processor, mean over frames.")
    if pickscore.model is None:
        metric.not_computed = pickscore.why
    elif not prompt:
        metric.not_computed = "no prompt given"
    else:
        scores = pickscore.model.score(resized(display), prompt).cpu().numpy().astype(np.float64)
        metric.per_frame = {frame: float(score) for frame, score in zip(frames, scores)}
        metric.value = float(scores.mean())
    return metric
