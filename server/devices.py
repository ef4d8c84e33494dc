"""Compute devices a worker can run on: each CUDA GPU torch can see, else the CPU."""

from __future__ import annotations

import importlib.util


def available_devices() -> list[str]:
    if importlib.util.find_spec("torch") is None:
        return ["cpu"]
    import torch

    if torch.cuda.is_available():
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return ["cpu"]
