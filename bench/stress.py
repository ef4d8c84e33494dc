"""Load: many hosts at once against one server, every frame accounted for.

Starts `cvgen serve` on a free 127.0.0.1 port with a scratch jobs folder, runs `--clients`
concurrent clients (threads, each with its own DEALER socket) that each submit `--jobs` small
`colormatch` jobs one after another, then checks that every job completed and that every frame
arrived exactly once and exists on disk. Prints jobs per second and p50/p99 job latency, stops
the server and exits non-zero if anything was lost. Talks to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support import ServerProcess, make_shot  # noqa: E402

from cvgen.protocol import JobSpec  # noqa: E402
from cvgen.protocol.client import Client, Done, FrameReady  # noqa: E402


def client_run(endpoint: str, shot: dict[str, str], frames: tuple[int, int], jobs: int, index: int,
               latencies: list[float], problems: list[str]) -> None:
    with Client(endpoint, timeout=120) as client:
        for j in range(jobs):
            started = time.perf_counter()
            seen: list[int] = []
            done = None
            try:
                for event in client.submit(JobSpec("colormatch", frames, shot, name=f"c{index}j{j}")):
                    if isinstance(event, FrameReady):
                        seen.append(event.frame)
                    elif isinstance(event, Done):
                        done = event
            except Exception as exc:  # every failure is a finding to report, not a crash of the bench
                problems.append(f"client {index} job {j}: {type(exc).__name__}: {exc}")
                continue
            latencies.append(time.perf_counter() - started)
            expected = list(range(frames[0], frames[1] + 1))
            if sorted(seen) != expected:
                problems.append(f"client {index} job {j}: frames {sorted(seen)}, expected {expected}")
            if done is None or sorted(done.frames) != expected:
                problems.append(f"client {index} job {j}: no done event with every frame")
            elif not all(Path(p).is_file() for p in done.frames.values()):
                problems.append(f"client {index} job {j}: a finished frame is missing on disk")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--jobs", type=int, default=4, help="jobs per client, one after another")
    parser.add_argument("--frames", type=int, default=2, help="frames per job")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cvgen-stress-"))
    frames = (1, args.frames)
    shot = make_shot(work / "shot", range(1, args.frames + 1), size=(64, 64))
    server = ServerProcess(work / "jobs").start()
    latencies: list[float] = []
    problems: list[str] = []
    try:
        threads = [threading.Thread(target=client_run,
                                    args=(server.endpoint, shot, frames, args.jobs, i, latencies, problems))
                   for i in range(args.clients)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - started
    finally:
        rc = server.stop()
    total = args.clients * args.jobs
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] if ordered else float("nan")
    print(f"{args.clients} clients x {args.jobs} colormatch jobs of {args.frames} frames (64x64), one server")
    print(f"  completed {len(latencies)}/{total} jobs in {elapsed:.1f} s: {len(latencies) / elapsed:.2f} jobs/s")
    if ordered:
        print(f"  job latency p50 {statistics.median(ordered):.2f} s, p99 {p99:.2f} s (queueing included)")
    print(f"  server exit code {rc}; problems: {len(problems)}")
    for problem in problems[:20]:
        print(f"    {problem}")
    return 0 if not problems and len(latencies) == total and rc == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
