"""Coverage-guided fuzzing of the wire decoder and the limits check, with atheris (see README.md).

    python fuzz/fuzz_decode.py -atheris_runs=1000000
    python fuzz/fuzz_decode.py -max_total_time=300 corpus/decode

`decode(frames)` must return a Message or raise ProtocolError, with and without the server's
limits; within them, nothing deeper than `max_map_depth` comes back. `Limits.check_message(sizes)`
must return or raise ProtocolError. Anything else (another exception, a buffer that is not a view
of its frame) is a crash: atheris stops and writes the input to crash-<hash>.
"""

from __future__ import annotations

import base64
import os
import sys
import time
import traceback
from typing import Any, Callable

import atheris

with atheris.instrument_imports(include=["cvgen", "msgpack"]):
    import msgpack

    from cvgen.protocol.errors import ProtocolError
    from cvgen.protocol.images import PIXEL_DTYPES
    from cvgen.protocol.limits import Limits
    from cvgen.protocol.messages import DELIMITER, REPLY_TYPES, REQUEST_TYPES, decode, make_header

import numpy as np

#: Values worth trying more often than chance gives them.
INTERESTING: list[Any] = [
    0, 1, -1, 2, 3, 4, 64, 65, 2**31 - 1, 2**31, 2**32, 2**53 + 1, 2**62, 2**63 - 1, 2**63, 2**64 - 1, -2**63,
    0.5, -0.0, 1e300, float("inf"), float("-inf"), float("nan"), True, False, None, "", "1.0", "2.0", "0x10",
    "..", "/", "a/b", "\x00", b"", b"\xff", [], {}, *PIXEL_DTYPES, "float64", "int8", "object", "O", "V8", "S3",
    "<f2", ">u2", *sorted(REQUEST_TYPES | REPLY_TYPES),
]


class Values:
    """Turns fuzzer bytes into the values msgpack can carry (and a few chosen ones)."""

    def __init__(self, fdp: atheris.FuzzedDataProvider) -> None:
        self.fdp = fdp

    def int(self) -> int:
        return self.fdp.ConsumeIntInRange(-2**63, 2**64 - 1)

    def small_int(self, low: int = -2, high: int = 8) -> int:
        return self.fdp.ConsumeIntInRange(low, high)

    def text(self, limit: int = 16) -> str:
        return self.fdp.ConsumeUnicodeNoSurrogates(self.fdp.ConsumeIntInRange(0, limit))

    def binary(self, limit: int = 16) -> bytes:
        return self.fdp.ConsumeBytes(self.fdp.ConsumeIntInRange(0, limit))

    def pick(self, options: list[Any]) -> Any:
        return self.fdp.PickValueInList(list(options))

    def key(self) -> Any:
        return self.binary(4) if self.fdp.ConsumeIntInRange(0, 3) == 0 else self.text(8)

    def value(self, depth: int = 0) -> Any:
        kind = self.fdp.ConsumeIntInRange(0, 10 if depth < 3 else 7)
        if kind == 0:
            return None
        if kind == 1:
            return self.fdp.ConsumeBool()
        if kind == 2:
            return self.int()
        if kind == 3:
            return self.fdp.ConsumeFloat()
        if kind == 4:
            return self.text()
        if kind == 5:
            return self.binary()
        if kind == 6:
            return msgpack.ExtType(self.fdp.ConsumeIntInRange(0, 127), self.binary(6))
        if kind == 7:
            return self.pick(INTERESTING)
        if kind == 8:
            return [self.value(depth + 1) for _ in range(self.fdp.ConsumeIntInRange(0, 4))]
        return self.map(depth + 1)

    def map(self, depth: int = 0) -> dict[Any, Any]:
        return {self.key(): self.value(depth) for _ in range(self.fdp.ConsumeIntInRange(0, 4))}


def pack(value: Any) -> bytes:
    return msgpack.packb(value)


def described_size(desc: Any) -> int:
    """Bytes a buffer description asks for, where that is a small number (else 0)."""
    try:
        count = 1
        for dim in desc["shape"]:
            count *= int(dim)
        size = count * np.dtype(str(desc["dtype"])).itemsize
    except Exception:
        return 0
    return size if 0 <= size <= 4096 else 0


def buffer_desc(v: Values) -> Any:
    choice = v.small_int(0, 4)
    if choice == 0:
        return v.value()
    dtype = v.pick(PIXEL_DTYPES) if choice < 3 else v.value()
    shape_kind = v.small_int(0, 3)
    if shape_kind == 0:
        shape: Any = [v.small_int(0, 4) for _ in range(v.small_int(0, 4))]
    elif shape_kind == 1:
        shape = [v.pick(INTERESTING) for _ in range(v.small_int(0, 4))]
    elif shape_kind == 2:
        shape = [1] * v.small_int(60, 70)
    else:
        shape = v.value()
    return {"dtype": dtype, "shape": shape}


def header(v: Values, msg_type: Any, buffers: list[Any]) -> dict[Any, Any]:
    head: dict[Any, Any] = make_header("", None)
    head["msg_type"] = msg_type
    head["buffers"] = buffers
    for _ in range(v.small_int(0, 2)):
        key = v.pick(["version", "msg_type", "job_id", "buffers", "msg_id"]) if v.fdp.ConsumeBool() else v.key()
        head[key] = v.value()
    return head


LIMITS = Limits()


def costly_map(fdp: atheris.FuzzedDataProvider) -> bytes:
    """A packed map of arrays nested up to past msgpack's own 1024 levels, each level holding some
    values: the shapes that cost the decoder time and memory (at most about 50,000 values)."""
    depth = fdp.ConsumeIntInRange(0, 1100)
    width = fdp.ConsumeIntInRange(0, 50_000 // max(depth, 1))
    filler = fdp.PickValueInList([b"\xc0", b"\x90", b"\x80", b"\x01"])
    level = b"\xdd" + (width + 1).to_bytes(4, "big") + filler * width
    return b"\x81\xa1x" + level * depth + b"\x90"


def build_frames(fdp: atheris.FuzzedDataProvider) -> list[bytes]:
    """Frames from fuzzer bytes: raw, or an envelope with fuzzed maps and buffer descriptions."""
    v = Values(fdp)
    mode = fdp.ConsumeIntInRange(0, 4)
    if mode == 4:
        return [DELIMITER, pack(header(v, v.pick(sorted(REQUEST_TYPES)), [])), pack({}), costly_map(fdp)]
    if mode == 0:
        return [v.binary(64) for _ in range(fdp.ConsumeIntInRange(0, 8))]
    if mode == 1:
        return [DELIMITER, *(v.binary(64) for _ in range(fdp.ConsumeIntInRange(0, 7)))]
    msg_type = v.pick(sorted(REQUEST_TYPES | REPLY_TYPES)) if fdp.ConsumeBool() else v.value()
    descs = [buffer_desc(v) for _ in range(fdp.ConsumeIntInRange(0, 3))]
    frames = [DELIMITER, pack(header(v, msg_type, descs)), pack(v.map()), pack(v.map())]
    for desc in descs:
        frames.append(bytes(described_size(desc)) if fdp.ConsumeBool() else v.binary(32))
    if mode == 3 and frames:  # then a little damage
        for _ in range(fdp.ConsumeIntInRange(0, 2)):
            i = fdp.ConsumeIntInRange(0, len(frames) - 1)
            raw = bytearray(frames[i])
            if raw:
                raw[fdp.ConsumeIntInRange(0, len(raw) - 1)] ^= 1 << fdp.ConsumeIntInRange(0, 7)
            frames[i] = bytes(raw[: fdp.ConsumeIntInRange(0, len(raw))]) if fdp.ConsumeBool() else bytes(raw)
    return frames


def depth(value: Any) -> int:
    level, levels = [value], 0
    while level:
        levels += 1
        level = [v for c in level if isinstance(c, (list, dict)) for v in (c.values() if isinstance(c, dict) else c)]
    return levels - 1


def check_decode(frames: list[bytes]) -> None:
    try:
        bounded = decode(frames, LIMITS)
    except ProtocolError:
        pass
    else:
        deepest = max(depth(bounded.header), depth(bounded.parent), depth(bounded.content))
        if deepest > LIMITS.max_map_depth:
            raise AssertionError(f"decoded a map {deepest} deep within max_map_depth = {LIMITS.max_map_depth}")
    try:
        msg = decode(frames)
    except ProtocolError:
        return
    if not isinstance(msg.msg_type, str):
        raise AssertionError(f"decoded msg_type {msg.msg_type!r} is not a string")
    for array, frame in zip(msg.buffers, frames[4:]):
        if array.nbytes != len(frame):
            raise AssertionError(f"buffer of {array.nbytes} bytes from a frame of {len(frame)}")


def check_limits(fdp: atheris.FuzzedDataProvider) -> None:
    sizes = [fdp.ConsumeIntInRange(-2**40, 2**40) for _ in range(fdp.ConsumeIntInRange(0, 12))]
    if fdp.ConsumeBool():
        sizes += [1] * fdp.ConsumeIntInRange(0, 5000)
    try:
        Limits().check_message(sizes)
    except ProtocolError:
        pass


def TestOneInput(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    if fdp.ConsumeIntInRange(0, 7) == 0:
        check_limits(fdp)
    else:
        check_decode(build_frames(fdp))


def keep_going(test: Callable[[bytes], None]) -> Callable[[bytes], None]:
    """With CVGEN_FUZZ_KEEP_GOING=1, a crash is reported (the first of each kind, with its input in
    base64 and a traceback) and counted, and fuzzing goes on: for surveying while known bugs are open.
    Kinds are told apart by exception type and the line that raised it (and
    the start of the message, for the harness's own checks); a tally is printed at most
    every 10 s (libFuzzer ends the process without running Python's exit handlers)."""
    if os.environ.get("CVGEN_FUZZ_KEEP_GOING") != "1":
        return test
    seen: dict[str, int] = {}
    total = [0]
    runs = [0]
    shown = [time.monotonic(), 0]

    def wrapped(data: bytes) -> None:
        runs[0] += 1
        if total[0] != shown[1] and time.monotonic() - shown[0] > 10:  # libFuzzer exits without atexit
            shown[:] = [time.monotonic(), total[0]]
            print(f"=== {total[0]} crashes in {runs[0]} runs, by kind: {seen}", file=sys.stderr, flush=True)
        try:
            test(data)
        except Exception as exc:
            where = traceback.extract_tb(exc.__traceback__)[-1]
            kind = f"{type(exc).__name__} at {os.path.basename(where.filename)}:{where.lineno}"
            if isinstance(exc, AssertionError):  # the harness's own checks: told apart by what they say
                kind += f" ({str(exc)[:60]})"
            total[0] += 1
            seen[kind] = seen.get(kind, 0) + 1
            if seen[kind] == 1:
                print(f"\n=== crash kind {len(seen)} ({total[0]} crashes so far): {kind}: {exc}\n"
                      f"input (base64): {base64.b64encode(data).decode()}\n"
                      + "".join(traceback.format_exception(exc)), file=sys.stderr, flush=True)

    return wrapped


def main() -> None:
    atheris.Setup(sys.argv, keep_going(TestOneInput))
    atheris.Fuzz()


if __name__ == "__main__":
    main()
