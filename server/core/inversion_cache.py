"""On-disk cache of inverted latents, so re-rendering a shot with a new prompt skips inversion.

Artists iterate on prompts; inversion depends only on the frame's pixels, the model, the step
count and the inversion depth, never on the prompt, so it is computed once per frame. Entries
are safetensors files written atomically; an unreadable entry is recomputed, never trusted.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

from cvgen.protocol.files import atomic_output

CACHE_VERSION = 1


class InversionCache:
    """Inverted latents keyed by content; `folder=None` turns the cache off."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder / "inversion" if folder is not None else None

    def key(self, image: np.ndarray, model: Any, steps: int, k: int) -> str:
        """Digest of the model-space frame, the weights, the schedule, the numeric type and the device type.

        The device type is in because GPU and CPU kernels invert to slightly different latents: a
        CPU render reading a GPU entry would differ from a fresh CPU one. The GPU index is not, as
        one machine's GPUs share the kernels and so the entries.
        """
        h = hashlib.sha256(np.ascontiguousarray(image).tobytes())
        h.update(json.dumps({
            "v": CACHE_VERSION, "shape": list(image.shape), "model": model.fingerprint, "steps": steps, "k": k,
            "dtype": str(model.dtype), "device": model.device.type, "scheduler": dict(model.scheduler.config),
        }, sort_keys=True, default=str).encode())
        return h.hexdigest()

    def load(self, key: str, device: Any) -> list[Any] | None:
        if self.folder is None:
            return None
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = self.folder / f"{key}.safetensors"
        try:
            tensors = load_file(path, device=str(device))
            return [tensors[f"level{i}"] for i in range(len(tensors))]
        except (OSError, SafetensorError, ValueError, KeyError):
            return None

    def save(self, key: str, levels: list[Any]) -> None:
        if self.folder is None:
            return
        from safetensors.torch import save_file

        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_output(self.folder / f"{key}.safetensors", ".safetensors") as tmp:
            save_file({f"level{i}": t.contiguous().cpu() for i, t in enumerate(levels)}, tmp)


def invert_cached(cache: InversionCache, model: Any, embeddings: Any, images: np.ndarray, z0: Any, steps: int, k: int,
                  on_step: Callable[[int, int], None]) -> list[list[Any]]:
    """Per frame of `images` (model-space pixels, encoded to `z0`), its latents after DDIM
    inversion steps 1..k with `embeddings` (the empty prompt: keys assume it): from the cache,
    else inverted together and saved."""
    from .inversion import ddim_invert, unet_eps

    keys = [cache.key(img, model, steps, k) for img in images]
    found = [cache.load(key, model.device) for key in keys]
    todo = [i for i, f in enumerate(found) if f is None]
    if todo:
        levels = ddim_invert(unet_eps(model.unet, embeddings), model.scheduler, z0[todo], steps, k, on_step)
        for j, i in enumerate(todo):
            # the UNet may hand back channels-last memory; a cache hit is plain contiguous memory,
            # and convolutions round differently on the two: one layout makes both paths agree
            found[i] = [level[j : j + 1].contiguous() for level in levels]
            cache.save(keys[i], found[i])
    return [f for f in found if f is not None]
