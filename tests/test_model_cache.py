"""The worker's model cache under a memory budget: real tiny models, bytes counted from their tensors."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from cvgen.server.core.models import KINDS, ModelCache, ModelMemoryError, ModelRegistry, parse_size
from cvgen.server.core.models.loading import model_bytes


def tensor_bytes(model) -> int:
    """Bytes of a model's parameters and buffers, counted here independently of the cache's own count."""
    seen, total = set(), 0
    for module in model.modules():
        for tensor in (*module.parameters(), *module.buffers()):
            if tensor.data_ptr() not in seen:
                seen.add(tensor.data_ptr())
                total += tensor.numel() * tensor.element_size()
    return total


def aliases(tmp_path: Path, tiny_model_path: Path, names: list[str]) -> ModelRegistry:
    """Models file entries that are each a separate model to the cache (same weights, different names)."""
    text = "".join(f'[models.{name}]\npath = "{tiny_model_path}"\n' for name in names)
    (tmp_path / "models.toml").write_text(text)
    return ModelRegistry.load(tmp_path / "models.toml")


@pytest.fixture
def one_size(tiny_model_path: Path, tmp_path: Path) -> int:
    return tensor_bytes(ModelCache(aliases(tmp_path, tiny_model_path, ["probe"])).get("probe"))


def test_least_recently_used_models_no_job_holds_are_evicted_to_stay_in_budget(
        tiny_model_path: Path, tmp_path: Path, one_size: int) -> None:
    cache = ModelCache(aliases(tmp_path, tiny_model_path, ["a", "b", "c"]), budget=int(one_size * 2.5))
    loaded = {}
    for job, name in enumerate(["a", "b", "a", "c", "b", "a"]):
        with cache.lease("cpu") as lease:
            loaded[name] = lease.get(name)
            held = sum(tensor_bytes(loaded[key[0]]) for key in cache.loaded())
            assert held <= cache.budget, f"job {job}: {held} bytes loaded, budget {cache.budget}"
    # a, b (miss, miss), a (hit), c evicts b (LRU), b evicts a, a evicts c.
    assert cache.stats.loads == 5 and cache.stats.evictions == 3
    assert [key[0] for key in cache.loaded()] == ["b", "a"]
    assert cache.stats.peak["cpu"] <= cache.budget


def test_a_model_a_running_job_holds_is_never_evicted(tiny_model_path: Path, tmp_path: Path, one_size: int) -> None:
    cache = ModelCache(aliases(tmp_path, tiny_model_path, ["a", "b"]), budget=int(one_size * 1.5))
    with cache.lease("cpu") as running:
        held = running.get("a")
        with cache.lease("cpu") as other, pytest.raises(ModelMemoryError) as refused:
            other.get("b")
        assert refused.value.code == "out_of_memory"
        assert "'b'" in str(refused.value) and "a (" in str(refused.value) and "--model-memory" in str(refused.value)
        assert running.get("a") is held and [key[0] for key in cache.loaded()] == ["a"]
    with cache.lease("cpu") as after:
        after.get("b")
    assert [key[0] for key in cache.loaded()] == ["b"] and cache.stats.evictions == 1


def test_concurrent_jobs_wanting_one_model_load_it_once(tiny_model_path: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    sd = KINDS["sd"]
    plain_load, loads = sd.load, []
    monkeypatch.setattr(sd, "load", lambda *args: loads.append(args[0].name) or plain_load(*args))
    cache = ModelCache(aliases(tmp_path, tiny_model_path, ["a"]))
    got = []
    threads = [threading.Thread(target=lambda: got.append(cache.get("a"))) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert loads == ["a"] and len(got) == 6 and all(model is got[0] for model in got)


def test_the_cache_counts_what_the_model_holds(tiny_model_path: Path, tmp_path: Path) -> None:
    cache = ModelCache(aliases(tmp_path, tiny_model_path, ["a"]))
    model = cache.get("a")
    assert cache.held_bytes("cpu") == model_bytes(model) == tensor_bytes(model) > 1_000_000


def test_alternating_kinds_stay_in_budget_and_report_loads(tmp_path: Path) -> None:
    """Jobs that alternate between kinds, as restyle, propagate, smooth and eval would."""
    registry = ModelRegistry.load()
    sizes = {}
    for name in ("tiny", "tiny-controlnet", "tiny-svd", "tiny-t2v", "tiny-depth", "tiny-clip"):
        sizes[name] = tensor_bytes(ModelCache(registry).get(name, registry.entry(name).kind))
    budget = max(sizes["tiny"] + sizes["tiny-controlnet"], sizes["tiny-svd"], sizes["tiny-t2v"]) + 2 * 2**20
    cache = ModelCache(registry, budget=budget)
    notes: list[str] = []
    jobs = [("tiny", "tiny-controlnet"), ("tiny-svd",), ("tiny-t2v",), ("tiny", "tiny-controlnet"), ("tiny-svd",),
            ("tiny-depth", "tiny-clip")]
    for needs in jobs:
        with cache.lease("cpu", notes.append) as lease:
            for name in needs:
                lease.get(name, registry.entry(name).kind)
                held = sum(sizes[key[0]] for key in cache.loaded())
                assert held <= budget
    # Every job but the first's second half misses: the budget never holds two jobs' models.
    assert cache.stats.loads == 9 and cache.stats.evictions >= 5 and cache.stats.peak["cpu"] <= budget
    assert any(note.startswith("loading svd 'tiny-svd'") for note in notes)
    assert any(note.startswith("unloading 'tiny-svd'") for note in notes)


@pytest.mark.parametrize("text, size", [("1000", 1000), ("512M", 512 * 2**20), ("24G", 24 * 2**30),
                                        ("1.5T", int(1.5 * 2**40)), ("20GiB", 20 * 2**30), ("8gb", 8 * 2**30)])
def test_memory_sizes_read_like_an_artist_writes_them(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "lots", "-1G", "0", "12Q"])
def test_nonsense_memory_sizes_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a memory size"):
        parse_size(text)


def test_a_job_reports_what_it_loads_and_holds_its_models_only_while_it_runs(tmp_path: Path) -> None:
    from support import make_shot

    from cvgen.protocol import JobSpec
    from cvgen.server.io.exr import read_exr
    from cvgen.server.jobs.runner import run_job

    cache = ModelCache(ModelRegistry.load())
    progress: list[dict] = []
    spec = JobSpec("harmonize", (1, 1), make_shot(tmp_path, range(1, 2)), params={"steps": 2, "strength": 0.5}, name="h")
    run_job(spec, tmp_path / "out", models=cache, on_progress=progress.append)
    notes = [p["note"] for p in progress if "note" in p]
    assert notes == ["loading sd 'tiny' (5.6 MiB) on cpu as float32"]
    assert progress[0]["note"] and progress[0]["fraction"] == 0.0
    assert all(slot.users == 0 for slot in cache._slots.values())
    frame = read_exr(tmp_path / "out" / "h.0001.exr")
    assert frame.attributes["cvgen:model"] == "tiny" and frame.attributes["cvgen:models"] == '{"model": "tiny"}'


def test_a_precision_variant_beside_the_weights_is_not_counted_twice(tiny_model_path: Path, tmp_path: Path) -> None:
    import shutil

    from cvgen.server.core.models.loading import estimated_bytes

    registry = aliases(tmp_path, tiny_model_path, ["plain"])
    copy = shutil.copytree(tiny_model_path, tmp_path / "variant")
    for weights in list(copy.rglob("*.safetensors")):
        shutil.copy(weights, weights.with_name(weights.name.replace(".safetensors", ".fp16.safetensors")))
    (tmp_path / "v.toml").write_text(f'[models.variant]\npath = "{copy}"\n')
    variant = ModelRegistry.load(tmp_path / "v.toml").entry("variant")
    assert estimated_bytes(variant, 4) == estimated_bytes(registry.entry("plain"), 4)
