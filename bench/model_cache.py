"""The model registry's numbers: build time of every tiny built-in, and the model cache under jobs
that alternate between kinds with a budget smaller than all models together.

    .venv/bin/python bench/model_cache.py

Builds into a fresh temporary $CVGEN_CACHE (so the build is measured from nothing, imports
included) and prints one line per kind, then per job: what it loaded, what was evicted, bytes held.
"""

from __future__ import annotations

import os
import tempfile
import time

os.environ["CVGEN_CACHE"] = tempfile.mkdtemp(prefix="cvgen-bench-cache-")

start = time.perf_counter()
from cvgen.server.core.models import KINDS, ModelCache, ModelRegistry, ensure_builtin  # noqa: E402
from cvgen.server.core.models.cache import human  # noqa: E402
from cvgen.server.core.models.loading import estimated_bytes, model_bytes  # noqa: E402

JOBS = [("tiny", "tiny-controlnet", "tiny-depth"), ("tiny-svd",), ("tiny-t2v", "tiny-lora"),
        ("tiny", "tiny-controlnet", "tiny-ip-adapter"), ("tiny-svd",), ("tiny-clip", "tiny-pickscore"),
        ("tiny", "tiny-controlnet", "tiny-depth"), ("tiny-t2v",)]


def main() -> None:
    import diffusers  # noqa: F401  (imports are part of a first build)
    import peft  # noqa: F401
    import transformers  # noqa: F401

    imported = time.perf_counter()
    print(f"imports: {imported - start:.2f} s")
    for kind in KINDS:
        began = time.perf_counter()
        ensure_builtin(kind)
        print(f"build {kind:11s} {time.perf_counter() - began:6.2f} s")
    print(f"all tiny models, imports included: {time.perf_counter() - start:.2f} s")

    registry = ModelRegistry.load()
    sizes = {name: model_bytes(ModelCache(registry).get(name, registry.entry(name).kind))
             for job in JOBS for name in job}
    planned = {name: estimated_bytes(registry.entry(name), 4) for name in sizes}
    budget = max(sum(planned[name] for name in job) for job in JOBS)
    print(f"\nbudget {human(budget)} (what the cache plans for the largest job's models); all models together "
          f"{human(sum(sizes.values()))}")
    cache = ModelCache(registry, budget=budget)
    for number, job in enumerate(JOBS, 1):
        notes: list[str] = []
        before = (cache.stats.loads, cache.stats.evictions)
        with cache.lease("cpu", notes.append) as lease:
            for name in job:
                lease.get(name, registry.entry(name).kind)
            held = cache.held_bytes("cpu")
        print(f"job {number} {'+'.join(job):45s} loads {cache.stats.loads - before[0]}  evictions "
              f"{cache.stats.evictions - before[1]}  held {human(held)}")
    print(f"total: {cache.stats.loads} loads, {cache.stats.evictions} evictions, peak {human(cache.stats.peak['cpu'])} "
          f"of {human(budget)}")


if __name__ == "__main__":
    main()
