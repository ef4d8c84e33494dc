"""Inline frame throughput: cvgen messages client -> server -> client vs raw pyzmq.

Both runs move the same 1920x1080 half RGBA frames over the same kind of sockets (DEALER to a
ROUTER that sends each frame straight back, over tcp on 127.0.0.1) with the same number of
frames in flight. The cvgen run packs, sends, decodes and re-packs every frame with
`cvgen.protocol.messages` on both sides, as the client and the server do; the raw run sends
bare bytes. The ratio is the protocol's cost; the goal is at least 0.8 of raw.
"""

from __future__ import annotations

import argparse
import threading
import time

import numpy as np
import zmq

from cvgen.protocol.images import Image
from cvgen.protocol.messages import Message, decode, encode, image_from_wire, image_to_wire, reply

WIDTH, HEIGHT, CHANNELS = 1920, 1080, 4


def raw_echo(router: zmq.Socket, count: int) -> None:
    for _ in range(count):
        router.send_multipart(router.recv_multipart(copy=False), copy=False)


def cvgen_echo(router: zmq.Socket, count: int) -> None:
    for _ in range(count):
        frames = router.recv_multipart(copy=False)
        request = decode(frames[1:])
        image = image_from_wire(request.content["image"], request.buffers)
        buffers: list = []
        content = {"frame": request.content["frame"], "path": "", "image": image_to_wire(image, buffers)}
        router.send_multipart([frames[0], *encode(reply(request, "frame", content, buffers))], copy=False)


def run(kind: str, frames: list[np.ndarray], window: int) -> float:
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect(f"tcp://127.0.0.1:{port}")
    count = len(frames)
    echo = threading.Thread(target=raw_echo if kind == "raw" else cvgen_echo, args=(router, count))
    echo.start()

    def send(i: int) -> None:
        if kind == "raw":
            dealer.send(memoryview(frames[i]).cast("B"), copy=False)
            return
        buffers: list = []
        image = Image(frames[i], ("R", "G", "B", "A"))
        dealer.send_multipart(encode(Message("submit", {"frame": i, "image": image_to_wire(image, buffers)},
                                             buffers=buffers)), copy=False)

    def receive() -> None:
        parts = dealer.recv_multipart(copy=False)
        if kind == "raw":
            np.frombuffer(parts[0].buffer, np.float16).reshape(HEIGHT, WIDTH, CHANNELS)
        else:
            msg = decode(parts)
            image_from_wire(msg.content["image"], msg.buffers)

    started = time.perf_counter()
    sent = 0
    for _ in range(min(window, count)):
        send(sent)
        sent += 1
    for _ in range(count):
        receive()
        if sent < count:
            send(sent)
            sent += 1
    elapsed = time.perf_counter() - started
    echo.join()
    dealer.close(0)
    router.close(0)
    ctx.term()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--window", type=int, default=4, help="frames in flight")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    frames = [rng.standard_normal((HEIGHT, WIDTH, CHANNELS)).astype(np.float16) for _ in range(4)]
    frames = [frames[i % 4] for i in range(args.frames)]
    nbytes = frames[0].nbytes
    best: dict[str, float] = {}
    for _ in range(args.repeats):
        for kind in ("raw", "cvgen"):
            best[kind] = min(best.get(kind, float("inf")), run(kind, frames, args.window))
    print(f"{args.frames} frames of {WIDTH}x{HEIGHT} half RGBA ({nbytes / 1e6:.1f} MB), "
          f"{args.window} in flight, best of {args.repeats}, each frame client -> server -> client")
    for kind in ("raw", "cvgen"):
        fps = args.frames / best[kind]
        print(f"  {kind:6s} {fps:7.1f} frames/s  {fps * nbytes * 2 / 1e9:6.2f} GB/s (both directions)")
    print(f"  ratio cvgen/raw: {best['raw'] / best['cvgen']:.3f}")


if __name__ == "__main__":
    main()
