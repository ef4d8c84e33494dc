"""Which device and precision a model runs on, and how much memory that device has."""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

from cvgen.protocol.errors import CvgenError

if TYPE_CHECKING:
    import torch

DTYPES = ("float16", "bfloat16", "float32")
DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


class DeviceError(CvgenError):
    """A requested device or precision does not exist on this machine or is not supported."""

    code = "bad_request"


def choose_device(device: str | None = None, dtype: str | None = None) -> tuple[torch.device, torch.dtype]:
    """The device and precision to run on: the first GPU in half precision if there is one, else CPU.

    Explicit choices are checked against this machine so a typo in a job or models file fails
    up front with a sentence, not deep inside torch halfway through a render.
    """
    import torch

    chosen = _device(device)
    name = dtype or ("float16" if chosen.type == "cuda" else "float32")
    if name not in DTYPES:
        raise DeviceError(f"Unknown precision {name!r}: use one of {', '.join(DTYPES)}.")
    if name == "float16" and chosen.type == "cpu":
        raise DeviceError("float16 is not supported on the CPU (too slow and inexact there): "
                          "use float32 or bfloat16, or run on a GPU.")
    return chosen, getattr(torch, name)


def _device(device: str | None) -> torch.device:
    import torch

    if device in (None, "auto"):
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if not DEVICE_PATTERN.fullmatch(device):
        raise DeviceError(f"Unknown device {device!r}: use auto, cpu, cuda, cuda:N or mps.")
    chosen = torch.device(device)
    if chosen.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = chosen.index or 0
        if index >= count:
            found = f"GPUs cuda:0 to cuda:{count - 1}" if count else "no CUDA GPU"
            raise DeviceError(f"Device {device!r} is not on this machine: it has {found}.")
        return torch.device("cuda", index)
    if chosen.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError("Device 'mps' is not available: this machine has no Apple GPU torch can use.")
    return chosen


def device_memory(device: torch.device) -> int:
    """Bytes of memory on `device`: a GPU's own, else the machine's RAM (CPU and Apple GPUs share it)."""
    import torch

    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
