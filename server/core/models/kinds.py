"""Every kind of model the registry knows, by its `kind` name in a models file."""

from __future__ import annotations

from . import clip, controlnet, depth, ip_adapter, lora, pickscore, sd, svd, t2v
from .kind import Kind

KINDS: dict[str, Kind] = {kind.name: kind for kind in (
    sd.KIND, controlnet.KIND, ip_adapter.KIND, depth.KIND, svd.KIND, t2v.KIND, lora.KIND, clip.KIND, pickscore.KIND,
)}
