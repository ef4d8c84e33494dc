"""The op benches' shared harness: phase timing, peak memory, and one measured run per process.

Each op bench (`harmonize.py`, `smooth.py`, `propagate.py`, `restyle.py`) times a real job by
wrapping the op's own steps, so its numbers split the same wall time the user waits for. A
bench runs every shot in a fresh child process of itself (the hidden `--one-frames` and
`--one-size` arguments) so that peak memory belongs to that shot alone; the child prints its
result as one JSON line for the parent to read.

The benches run as `python bench/NAME.py`, which puts this folder first on `sys.path`, so they
import this module as `phases`.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Any


def cuda(device: str) -> bool:
    """Whether `device` names a GPU, whose work runs asynchronously and whose memory torch counts."""
    return device.startswith("cuda")


def reset_peak(device: str) -> None:
    """Start a fresh peak count on a GPU; on the CPU the process's peak RSS cannot be reset, which
    is why each shot runs in a process of its own."""
    if cuda(device):
        import torch

        torch.cuda.reset_peak_memory_stats()


def peak_bytes(device: str) -> int:
    """Peak memory: allocated memory on a GPU (since `reset_peak`), RSS of this process on the CPU."""
    if cuda(device):
        import torch

        return int(torch.cuda.max_memory_allocated())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PhaseTimer:
    """Seconds per phase, each wrapped call timed exclusive of the timed calls nested in it, so the
    phases add up to no more than the wall time and the rest of a job is one remainder."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)
        self._stack: list[float] = []  # time spent in timed calls nested inside the open ones

    def sync(self) -> None:
        """Wait for queued GPU work, so that a phase is charged for the kernels it launched."""
        if cuda(self.device):
            import torch

            torch.cuda.synchronize()

    def timed(self, name: str | Callable[..., str], fn: Callable[..., Any]) -> Callable[..., Any]:
        """`fn`, charging its time to `name`: a phase, or a function of the call's arguments that
        returns one (when one function serves two phases, told apart by what it is given)."""

        def wrapper(*a: Any, **kw: Any) -> Any:
            self.sync()
            self._stack.append(0.0)
            started = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.sync()
                elapsed = time.perf_counter() - started
                nested = self._stack.pop()
                self.seconds[name if isinstance(name, str) else name(*a, **kw)] += elapsed - nested
                if self._stack:
                    self._stack[-1] += elapsed

        return wrapper

    def measure(self, job: Callable[[], object], frames: int, size: str, rest: str = "other") -> dict[str, Any]:
        """Run `job` on the clock from a fresh peak-memory count; what no phase took is charged to
        `rest`. Returns the result a child prints: total seconds, seconds per frame per phase and
        peak memory."""
        reset_peak(self.device)
        started = time.perf_counter()
        job()
        total = time.perf_counter() - started
        self.seconds[rest] = total - sum(self.seconds.values())
        return {"frames": frames, "size": size, "total_s": total,
                "per_frame": {k: v / frames for k, v in self.seconds.items()}, "peak_bytes": peak_bytes(self.device)}


def parser(doc: str | None, archs: tuple[str, ...]) -> argparse.ArgumentParser:
    """A bench's command line: the script's docstring as its help, `--arch` (the first of `archs`
    the default), `--device`, and the hidden arguments of a child run."""
    result = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    result.add_argument("--arch", choices=archs, default=archs[0])
    result.add_argument("--device", default="cpu")
    result.add_argument("--one-frames", type=int, help=argparse.SUPPRESS)
    result.add_argument("--one-size", help=argparse.SUPPRESS)
    return result


def parse_size(text: str) -> tuple[int, int]:
    """`WIDTHxHEIGHT` as (width, height)."""
    width, height = (int(v) for v in text.split("x"))
    return width, height


def answer_child(args: argparse.Namespace, measure: Callable[[argparse.Namespace], dict[str, Any]]) -> bool:
    """In a child run (`--one-frames` given), measure and print the result as the JSON line that
    `run_child` reads, and say so; in the parent, do nothing."""
    if not args.one_frames:
        return False
    print(json.dumps(measure(args)))
    return True


def run_child(script: str, args: list[str]) -> dict[str, Any]:
    """Run `script` with `args` in a fresh Python process and return the JSON result it prints last."""
    out = subprocess.run([sys.executable, script, *args], check=True, capture_output=True, text=True).stdout
    result: dict[str, Any] = json.loads(out.splitlines()[-1])
    return result


def split(per_frame: Mapping[str, float], ordered: bool = True) -> str:
    """Seconds per frame per phase as `name 0.123, ...`: by name, or as measured with `ordered` false."""
    items = sorted(per_frame.items()) if ordered else per_frame.items()
    return ", ".join(f"{k} {v:.3f}" for k, v in items)


def compare_windows(script: str, args: list[str], size: str, frames_for: Callable[[int], int]) -> None:
    """Print seconds per frame, its split and peak memory for a shot of 1 window and one of 4
    (`frames_for(windows)` frames), each run as a child of `script` with `args`, then the ratio of
    their peaks: a windowed op's memory must not grow with the shot."""
    peaks = {}
    for windows in (1, 4):
        frames = frames_for(windows)
        result = run_child(script, [*args, "--one-frames", str(frames), "--one-size", size])
        peaks[windows] = result["peak_bytes"]
        print(f"  {windows} window(s), {frames:3d} frames: {result['total_s'] / frames:.3f} s/frame "
              f"({split(result['per_frame'])}); "
              f"peak memory {result['peak_bytes'] / 2**20:.0f} MiB")
    print(f"  peak memory 4 vs 1 window(s): {peaks[4] / peaks[1]:.2f}x")
