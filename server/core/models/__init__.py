"""The model registry: every kind of model the ops use, named in a models file, loaded offline.

Everything here is offline: weights never download at run time (render nodes and artists'
workstations often have no internet, and a silent multi-gigabyte download mid-render is worse
than a clear error). `HF_HUB_OFFLINE=1` is set on import and every loader gets
`local_files_only=True`. The models file is described in `registry.py`; each kind in its module.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Loading progress bars and import-time notices (optional torchvision, ...) are noise in a
# server log and a farm task's output; errors still surface as ModelNotFound.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

from .builtin import builtin_folder, ensure_builtin  # noqa: E402
from .cache import Lease, ModelCache, ModelMemoryError, parse_size  # noqa: E402
from .devices import DeviceError, choose_device  # noqa: E402
from .entry import ModelEntry, cache_dir  # noqa: E402
from .kinds import KINDS  # noqa: E402
from .loading import load  # noqa: E402
from .registry import ModelRegistry  # noqa: E402
from .sd import SDModel, load_sd_model  # noqa: E402

__all__ = [
    "KINDS", "DeviceError", "Lease", "ModelCache", "ModelEntry", "ModelMemoryError", "ModelRegistry", "SDModel",
    "builtin_folder", "cache_dir", "choose_device", "ensure_builtin", "load", "load_sd_model", "parse_size",
]
