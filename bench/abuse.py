"""Abuse: how long one well-behaved client waits while another client attacks the server.

For each scenario a fresh `cvgen serve` starts on 127.0.0.1 (a free port, a scratch jobs folder);
one hostile client (its own process) attacks it for `--seconds` while a well-behaved client (this
process) sends `status` requests one after another. Prints that client's p50/p99 alone and under
each attack, and whether the goal holds: p99 under attack within 5x of p99 alone and below 100 ms.
A client that waits sends fewer requests, so one long stall hides from p99: see `max` and the
count of requests over 100 ms. rss MB is the server's peak resident memory.
The attacks are those of issue 11 (all within the advertised limits):

- a 16 MiB content map of empty arrays, and a map of maps of empty arrays (short maps, many values);
- a request nested 1,010 levels deep, and arrays nested 1,000 deep of 1,024 entries each;
- a message of 2,000,000 empty frames;
- 200 jobs of 10,000 frames submitted by path (every frame a hard link to one small EXR), then
  `jobs` requests one after another;
- 500 attaches to one running job.

Talks to 127.0.0.1 only, stops by itself (about a minute with the defaults) and removes its
scratch folder. Usage: python bench/abuse.py [--seconds 4] [--only NAME ...] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import msgpack  # noqa: E402
import numpy as np  # noqa: E402
import zmq  # noqa: E402
from support import ServerProcess, make_shot  # noqa: E402

from cvgen.protocol import JobSpec, ServerError, ServerUnavailable  # noqa: E402
from cvgen.protocol.client import Client  # noqa: E402
from cvgen.protocol.messages import DELIMITER, FINAL_TYPES, Message, decode, encode, make_header  # noqa: E402

LOOPBACK_BIND = re.compile(r"tcp://127\.0\.0\.1:(\*|\d+)")
MAP_BYTES = 16 * 2**20
LONG_JOB_FRAMES = 10_000


# -- the hostile client (runs in its own process) ------------------------------------------


@dataclass
class AttackReport:
    sent: int = 0
    answered: int = 0
    events: int = 0
    answer: str = ""
    latencies_ms: list[float] = field(default_factory=list)


class Hostile:
    """A raw DEALER socket: sends what it likes and reads every reply for `seconds` from the end
    of its first send (sending 2,000,000 frames takes a while), when it sets `started`."""

    def __init__(self, endpoint: str, seconds: float, started: Any) -> None:
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.SNDHWM, 0)
        self.socket.connect(endpoint)
        self.seconds = seconds
        self.started = started
        self.deadline: float | None = None
        self.report = AttackReport()

    def left(self) -> float:
        return self.seconds if self.deadline is None else self.deadline - time.monotonic()

    def send(self, frames: list[Any]) -> str:
        """Send one request; its msg_id (read back from its packed header)."""
        self.socket.send_multipart(frames, copy=False)
        self.report.sent += 1
        if self.deadline is None:
            self.deadline = time.monotonic() + self.seconds
            self.started.set()
        return str(msgpack.unpackb(frames[1])["msg_id"])

    def read(self, timeout: float) -> Message | None:
        if not self.socket.poll(max(int(timeout * 1000), 0)):
            return None
        msg = decode(self.socket.recv_multipart(copy=False))
        self.report.events += 1
        return msg

    def ask(self, frames: list[Any], until: frozenset[str] = FINAL_TYPES) -> Message | None:
        """Send, then read until a reply of a type in `until` to this request, or the deadline."""
        msg_id = self.send(frames)
        started = time.monotonic()
        while self.left() > 0:
            msg = self.read(self.left())
            # a request refused at decode names its parent only when its header could be read
            if msg is not None and msg.parent_id in (msg_id, "") and msg.msg_type in until:
                self.report.answered += 1
                self.report.latencies_ms.append(1000 * (time.monotonic() - started))
                if not self.report.answer:
                    self.report.answer = f"{msg.msg_type}: {msg.content.get('message', '')}"[:150]
                return msg
        return None

    def repeat(self, frames: list[Any]) -> None:
        while self.left() > 0:
            self.ask(frames)

    def drain(self) -> None:
        while self.left() > 0:
            self.read(self.left())

    def close(self) -> None:
        self.socket.close(0)
        self.context.term()


def envelope(msg_type: str, content: bytes) -> list[bytes]:
    return [DELIMITER, msgpack.packb({**make_header(msg_type), "buffers": []}), msgpack.packb({}), content]


def bin_keyed_map(entries: int, value: bytes) -> bytes:
    """A packed map of `entries` distinct 4-byte bin keys, each to `value` (packed)."""
    row = np.dtype([("tag", "u1"), ("size", "u1"), ("key", ">u4"), ("value", f"V{len(value)}")])
    table = np.zeros(entries, row)
    table["tag"], table["size"], table["key"] = 0xC4, 4, np.arange(entries)
    table["value"] = np.frombuffer(value, f"V{len(value)}")[0]
    return b"\xdf" + entries.to_bytes(4, "big") + table.tobytes()


def long_job(shot: dict[str, str], job_id: str | None = None) -> list[Any]:
    spec = JobSpec("colormatch", (1, LONG_JOB_FRAMES), shot, job_id=job_id)
    return encode(Message("submit", {"job": spec.to_dict(), "deliver": "path"}, job_id=job_id))


def attack_map(hostile: Hostile, shot: dict[str, str]) -> None:
    hostile.repeat(envelope("status", bin_keyed_map((MAP_BYTES - 5) // 7, b"\x90")))


def attack_map_of_maps(hostile: Hostile, shot: dict[str, str]) -> None:
    hostile.repeat(envelope("status", bin_keyed_map(1024, bin_keyed_map(1024, b"\x90"))))


def attack_deep(hostile: Hostile, shot: dict[str, str]) -> None:
    job = {"op": "colormatch", "frames": [1, 1], "inputs": shot, "params": {"strength": "DEEP"}}
    content = msgpack.packb({"job": job}).replace(msgpack.packb("DEEP"), b"\x91" * 1010 + b"\x90")
    hostile.repeat(envelope("submit", content))


def attack_deep_wide(hostile: Hostile, shot: dict[str, str]) -> None:
    level = b"\xdc" + (1024).to_bytes(2, "big") + b"\xc0" * 1023
    hostile.repeat(envelope("status", b"\x81\xa1x" + level * 1000 + b"\x90"))


def attack_frames(hostile: Hostile, shot: dict[str, str]) -> None:
    hostile.repeat([*encode(Message("status")), *([b""] * 2_000_000)])


def attack_jobs(hostile: Hostile, shot: dict[str, str]) -> None:
    for _ in range(200):
        hostile.send(long_job(shot))
    while hostile.left() > 0:
        hostile.ask(encode(Message("jobs")))


def attack_attach(hostile: Hostile, shot: dict[str, str]) -> None:
    job_id = "abuse-attach"
    hostile.ask(long_job(shot, job_id), until=frozenset({"accepted", "error"}))
    for _ in range(499):
        hostile.send(long_job(shot, job_id))
    hostile.drain()


def run_attack(name: str, endpoint: str, seconds: float, shot: dict[str, str], started: Any, reports: Any) -> None:
    attack = ATTACKS[name][1]
    hostile = Hostile(endpoint, seconds, started)
    try:
        attack(hostile, shot)
    finally:
        reports.put(asdict(hostile.report))
        hostile.close()


# -- the well-behaved client and the table -------------------------------------------------


@dataclass
class Result:
    name: str
    latencies_ms: list[float]
    failures: int
    peak_rss_mb: float
    attack: dict[str, Any] = field(default_factory=dict)

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def measure_status(endpoint: str, seconds: float) -> tuple[list[float], int]:
    """`status` requests one after another for `seconds`: their latencies (ms) and failures."""
    latencies: list[float] = []
    failures = 0
    with Client(endpoint, timeout=30) as client:
        client.status()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            started = time.perf_counter()
            try:
                client.status()
            except (ServerError, ServerUnavailable):
                failures += 1
            latencies.append(1000 * (time.perf_counter() - started))
    return latencies, failures


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def scenario(name: str, bind: str, work: Path, shot: dict[str, str], seconds: float) -> Result:
    """One fresh server; the well-behaved client alone, or beside the attack `name`."""
    server = ServerProcess(Path(tempfile.mkdtemp(prefix=f"{name}-", dir=work)), bind=bind).start()
    assert server.proc is not None
    try:
        if name == "alone":
            latencies, failures = measure_status(server.endpoint, seconds)
            return Result(name, latencies, failures, peak_rss_mb(server.proc.pid))
        spawn = mp.get_context("spawn")
        started, reports = spawn.Event(), spawn.Queue()
        hostile = spawn.Process(target=run_attack, args=(name, server.endpoint, seconds, shot, started, reports))
        hostile.start()
        if not started.wait(60):
            raise RuntimeError(f"the {name} attacker did not start")
        latencies, failures = measure_status(server.endpoint, seconds)
        report = reports.get(timeout=seconds + 60)
        hostile.join(10)
        if hostile.is_alive():
            hostile.kill()
        attack_ms = report.pop("latencies_ms")
        report["p50_ms"] = statistics.median(attack_ms) if attack_ms else None
        return Result(name, latencies, failures, peak_rss_mb(server.proc.pid), report)
    finally:
        server.stop(signal.SIGKILL)


def long_shot(folder: Path) -> dict[str, str]:
    """A 10,000-frame plate and foreground: one small EXR of each, hard-linked under every name."""
    shot = make_shot(folder, range(1, 2))
    for role, template in shot.items():
        first = Path(template.replace("####", "0001"))
        for frame in range(2, LONG_JOB_FRAMES + 1):
            os.link(first, template.replace("####", f"{frame:04d}"))
    return shot


ATTACKS: dict[str, tuple[str, Callable[[Hostile, dict[str, str]], None]]] = {
    "map": ("16 MiB content map of empty arrays", attack_map),
    "map-of-maps": ("map of 1,024 maps of 1,024 empty arrays", attack_map_of_maps),
    "deep": ("submit nested 1,010 levels deep", attack_deep),
    "deep-wide": ("arrays 1,000 deep of 1,024 entries each", attack_deep_wide),
    "frames": ("message of 2,000,000 empty frames", attack_frames),
    "jobs": ("200 jobs x 10,000 frames, then `jobs`", attack_jobs),
    "attach": ("500 attaches to one running job", attack_attach),
}


def print_table(alone: Result, results: list[Result]) -> None:
    base = alone.percentile(0.99)
    print(f"\nwell-behaved client's `status` latency, alone and under each attack (ms); goal: p99 <= "
          f"{5 * base:.2f} (5x alone) and < 100")
    print(f"{'scenario':42} {'p50':>8} {'p99':>8} {'max':>8} {'requests':>8} {'>100ms':>6} {'goal':>5} {'rss MB':>7}"
          "  attacker")
    for result in [alone, *results]:
        label = ATTACKS[result.name][0] if result.name in ATTACKS else "alone"
        p99 = result.percentile(0.99)
        goal = "-" if result is alone else ("yes" if p99 <= 5 * base and p99 < 100 else "NO")
        attack = result.attack
        hostile = (f"sent {attack['sent']}, answered {attack['answered']}, messages in {attack['events']}"
                   + (f", its p50 {attack['p50_ms']:.0f} ms" if attack.get("p50_ms") is not None else "")
                   if attack else "")
        failures = f" ({result.failures} failed)" if result.failures else ""
        stalls = sum(1 for ms in result.latencies_ms if ms >= 100)
        print(f"{label:42} {statistics.median(result.latencies_ms):8.2f} {p99:8.2f} {max(result.latencies_ms):8.2f} "
              f"{len(result.latencies_ms):8d} {stalls:6d} {goal:>5} {result.peak_rss_mb:7.0f}  {hostile}{failures}")
    print("\nfirst final reply each attacker got:")
    for result in results:
        print(f"  {result.name:12} {result.attack.get('answer') or '(none)'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each scenario (default %(default)s)")
    parser.add_argument("--only", nargs="+", choices=sorted(ATTACKS), help="run only these attacks")
    parser.add_argument("--bind", default="tcp://127.0.0.1:*", help="address for the servers: 127.0.0.1 only")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args()
    if not LOOPBACK_BIND.fullmatch(args.bind):
        parser.error(f"--bind {args.bind}: this benchmark attacks servers on tcp://127.0.0.1 only")
    if not 0.5 <= args.seconds <= 20:
        parser.error("--seconds must be between 0.5 and 20")
    work = Path(tempfile.mkdtemp(prefix="cvgen-abuse-"))
    try:
        shot = long_shot(work / "shot")
        alone = scenario("alone", args.bind, work, shot, args.seconds)
        results = [scenario(name, args.bind, work, shot, args.seconds) for name in args.only or ATTACKS]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_table(alone, results)
    if args.json:
        args.json.write_text(json.dumps([{"name": r.name, "p50_ms": statistics.median(r.latencies_ms),
                                          "p99_ms": r.percentile(0.99), "max_ms": max(r.latencies_ms),
                                          "requests": len(r.latencies_ms), "failures": r.failures,
                                          "peak_rss_mb": r.peak_rss_mb, "attack": r.attack}
                                         for r in [alone, *results]], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
