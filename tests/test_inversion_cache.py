"""The inversion cache: what changes the key, and that a damaged entry is recomputed, not trusted."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cvgen.server.core.inversion_cache import InversionCache
from cvgen.server.core.models import ModelCache, ModelRegistry


@pytest.fixture(scope="module")
def model():
    return ModelCache(ModelRegistry.load()).get("tiny")


def test_entries_round_trip_and_keys_follow_content_and_schedule(tmp_path, model):
    cache = InversionCache(tmp_path)
    image = np.random.default_rng(0).uniform(-1, 1, (3, 16, 16)).astype(np.float32)
    key = cache.key(image, model, 20, 10)
    levels = [torch.randn(1, 4, 2, 2) for _ in range(10)]
    assert cache.load(key, "cpu") is None
    cache.save(key, levels)
    loaded = cache.load(key, "cpu")
    assert loaded is not None and all(torch.equal(a, b) for a, b in zip(levels, loaded))
    changed = image.copy()
    changed[0, 0, 0] += 1e-3
    others = {cache.key(changed, model, 20, 10), cache.key(image, model, 30, 10), cache.key(image, model, 20, 9)}
    assert key not in others and len(others) == 3
    assert not [p for p in (tmp_path / "inversion").iterdir() if p.name.startswith(".")]


def test_a_damaged_entry_reads_as_missing(tmp_path, model):
    cache = InversionCache(tmp_path)
    key = cache.key(np.zeros((3, 8, 8), np.float32), model, 4, 2)
    cache.save(key, [torch.zeros(1, 4, 1, 1), torch.ones(1, 4, 1, 1)])
    path = tmp_path / "inversion" / f"{key}.safetensors"
    path.write_bytes(path.read_bytes()[:20])
    assert cache.load(key, "cpu") is None


def test_no_folder_means_no_cache(model):
    cache = InversionCache(None)
    key = cache.key(np.zeros((3, 8, 8), np.float32), model, 4, 2)
    cache.save(key, [torch.zeros(1)])
    assert cache.load(key, "cpu") is None


def test_entries_written_on_another_device_type_are_a_miss(tmp_path, model):
    """GPU kernels invert to slightly different latents than the CPU: a GPU entry must not stand in
    for a CPU inversion (or the other way round)."""
    from dataclasses import replace

    cache = InversionCache(tmp_path)
    image = np.zeros((3, 8, 8), np.float32)
    on_gpu = replace(model, device=torch.device("cuda", 1))
    cache.save(cache.key(image, on_gpu, 4, 2), [torch.ones(1, 4, 1, 1), torch.ones(1, 4, 1, 1)])
    assert cache.load(cache.key(image, model, 4, 2), "cpu") is None
    keys = {cache.key(image, replace(model, device=torch.device(d)), 4, 2) for d in ("cpu", "cuda", "mps")}
    assert len(keys) == 3
    assert cache.key(image, on_gpu, 4, 2) == cache.key(image, replace(model, device=torch.device("cuda", 0)), 4, 2)
