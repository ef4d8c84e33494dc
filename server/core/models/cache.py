"""A worker's loaded models, kept between jobs within a memory budget per device.

A GPU cannot hold an SD model, a ControlNet, SVD and a video UNet at once, so the cache plans
each load before it happens: the model's size comes from its safetensors headers, and the least
recently used models that no running job holds are evicted until it fits. A model a job holds
(through its `Lease`) is never evicted, and a model is never loaded twice: a second caller waits
for the first one's load. A model that cannot fit beside what running jobs hold is refused with
`out_of_memory` before a byte loads, rather than failing halfway on the device.

The budget is bytes of weights per device: `--model-memory`, else 70 % of the device's memory
(the rest is for activations, the VAE's decode and other processes).
"""

from __future__ import annotations

import gc
import logging
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from cvgen.protocol.errors import CvgenError

from .builtin import ensure_builtin
from .devices import choose_device, device_memory
from .kinds import KINDS
from .loading import estimated_bytes, model_bytes

if TYPE_CHECKING:
    from .registry import ModelRegistry

log = logging.getLogger("cvgen.models")
DEFAULT_SHARE = 0.7
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?", re.IGNORECASE)


class ModelMemoryError(CvgenError):
    """A model does not fit in the device's model budget beside the models running jobs hold."""

    code = "out_of_memory"


def parse_size(text: str) -> int:
    """Bytes from "24G", "1.5T", "512MiB" or "1000000" (binary units: G = 2**30)."""
    match = _SIZE.fullmatch(text.strip())
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"{text!r} is not a memory size: use a number of bytes or e.g. 512M, 24G, 1.5T")
    return int(float(match.group(1)) * 1024 ** " KMGT".index(match.group(2).upper() or " "))


def human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


@dataclass
class _Slot:
    key: tuple[str, str, str]
    bytes: int
    model: Any = None
    users: int = 0
    loading: bool = True


@dataclass
class CacheStats:
    """What the cache did, for logs, benchmarks and tests."""

    loads: int = 0
    evictions: int = 0
    peak: dict[str, int] = field(default_factory=dict)


class ModelCache:
    """Loaded models per (name, device, precision); thread-safe; one per server or render process."""

    def __init__(self, registry: ModelRegistry, budget: int | None = None) -> None:
        self.registry = registry
        self.budget = budget
        self.stats = CacheStats()
        self._slots: OrderedDict[tuple[str, str, str], _Slot] = OrderedDict()
        self._changed = threading.Condition()

    def lease(self, device: str | None = None, note: Callable[[str], None] = lambda text: None) -> Lease:
        """A job's hold on the models it uses: they stay loaded until the lease closes."""
        return Lease(self, device, note)

    def get(self, name: str = "", kind: str = "sd", device: str | None = None) -> Any:
        """A model without holding it (tools and tests): it may be evicted by the next load."""
        with self.lease(device) as lease:
            return lease.get(name, kind)

    def budget_for(self, device: str) -> int:
        import torch

        return self.budget if self.budget is not None else int(device_memory(torch.device(device)) * DEFAULT_SHARE)

    def held_bytes(self, device: str) -> int:
        """Bytes of the models loaded (or being loaded) on `device`."""
        with self._changed:
            return sum(slot.bytes for slot in self._slots.values() if slot.key[1] == device)

    def loaded(self) -> list[tuple[str, str, str]]:
        with self._changed:
            return [key for key, slot in self._slots.items() if not slot.loading]

    def _acquire(self, name: str, kind: str, device: str | None, note: Callable[[str], None]) -> tuple[_Slot, bool]:
        entry = self.registry.entry(name, kind)
        torch_device, torch_dtype = choose_device(device or entry.device, entry.dtype)
        key = (entry.name, str(torch_device), str(torch_dtype).removeprefix("torch."))
        spec = KINDS[entry.kind]
        with self._changed:
            slot = self._wait_for(key)
            if slot is not None:
                return slot, False
        if entry.builtin:
            ensure_builtin(entry.kind)
        spec.check(entry)
        need = estimated_bytes(entry, torch_dtype.itemsize)
        with self._changed:
            slot = self._wait_for(key)
            if slot is not None:
                return slot, False
            self._make_room(key, need, note)
            slot = self._slots[key] = _Slot(key, need, users=1)
        where = f"{key[1]} as {key[2]}"
        note(f"loading {entry.kind} {entry.name!r} ({human(need)}) on {where}")
        log.info("loading %s model %r (%s) on %s", entry.kind, entry.name, human(need), where)
        try:
            model = spec.load(entry, torch_device, torch_dtype)
        except BaseException:
            with self._changed:
                del self._slots[key]
                self._changed.notify_all()
            raise
        with self._changed:
            slot.model, slot.bytes, slot.loading = model, model_bytes(model), False
            self.stats.loads += 1
            held = sum(s.bytes for s in self._slots.values() if s.key[1] == key[1])
            self.stats.peak[key[1]] = max(self.stats.peak.get(key[1], 0), held)
            self._changed.notify_all()
        return slot, True

    def _wait_for(self, key: tuple[str, str, str]) -> _Slot | None:
        """The loaded slot of `key`, held once more (waiting out another caller's load); None to load it."""
        while True:
            slot = self._slots.get(key)
            if slot is None:
                return None
            if not slot.loading:
                slot.users += 1
                self._slots.move_to_end(key)
                return slot
            self._changed.wait()

    def _make_room(self, key: tuple[str, str, str], need: int, note: Callable[[str], None]) -> None:
        """Evict the least recently used models on the device that no job holds until `need` fits."""
        device = key[1]
        budget = self.budget_for(device)
        on_device = [slot for slot in self._slots.values() if slot.key[1] == device]
        held = sum(slot.bytes for slot in on_device)
        for slot in on_device:
            if held + need <= budget:
                break
            if slot.users or slot.loading:
                continue
            del self._slots[slot.key]
            held -= slot.bytes
            self.stats.evictions += 1
            note(f"unloading {slot.key[0]!r} ({human(slot.bytes)}) from {device} to make room")
            log.info("evicting model %r (%s) from %s to make room for %r", slot.key[0], human(slot.bytes),
                     device, key[0])
            slot.model = None
            _release_memory(device)
        if held + need > budget:
            holding = [f"{s.key[0]} ({human(s.bytes)})" for s in self._slots.values() if s.key[1] == device]
            raise ModelMemoryError(
                f"model {key[0]!r} needs {human(need)} on {device}, but the model memory budget there is "
                f"{human(budget)} and running jobs hold {', '.join(holding) or 'nothing'}; raise it with "
                "--model-memory or use smaller models")

    def _release(self, slot: _Slot) -> None:
        with self._changed:
            slot.users -= 1


class Lease:
    """The models one job uses, held (never evicted) from its first `get` until `close`."""

    def __init__(self, cache: ModelCache, device: str | None, note: Callable[[str], None]) -> None:
        self._cache = cache
        self._device = device
        self._note = note
        self._held: dict[tuple[str, str, str], _Slot] = {}

    def get(self, name: str = "", kind: str = "sd") -> Any:
        """The model `name` of `kind` (the kind's default when empty), loaded on the lease's device."""
        slot, _ = self._cache._acquire(name, kind, self._device, self._note)
        if slot.key in self._held:
            self._cache._release(slot)
        self._held[slot.key] = slot
        return slot.model

    def close(self) -> None:
        for slot in self._held.values():
            self._cache._release(slot)
        self._held.clear()

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _release_memory(device: str) -> None:
    """Give an evicted model's memory back now, not at the next collection."""
    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()
