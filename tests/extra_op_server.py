"""`cvgen serve` with one more op, `still`, that no host knows: for tests that hosts build their
inputs and parameters from `hello` alone. Run as `python extra_op_server.py serve ...`.

`still` mixes each plate frame with one reference image (an `image` role) and, when given, a guide
sequence; `count` is an int with a range, so a host's range check can be seen.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import numpy as np

from cvgen.protocol.images import Image
from cvgen.server.cli import main
from cvgen.server.ops import all_ops
from cvgen.server.ops.base import OpContext, OpSpec, Param, Role, Shot


def run(shot: Shot, params: dict[str, Any], ctx: OpContext) -> Iterator[tuple[int, Image]]:
    """Half plate, half reference (and guide); the result's red records `count`, so tests see it was sent."""
    ref = shot.read("ref", ctx.todo[0]).pixels[..., :3].astype(np.float32)
    for frame in ctx.todo:
        ctx.step(frame, 1, 1)
        mix = 0.5 * shot.read("plate", frame).pixels[..., :3].astype(np.float32) + 0.5 * ref
        if shot.has("guide"):
            mix = 0.5 * mix + 0.5 * shot.read("guide", frame).pixels[..., :3].astype(np.float32)
        mix[0, 0, 0] = params["count"]
        yield frame, Image(np.dstack([mix, np.ones(mix.shape[:2], np.float32)]), ("R", "G", "B", "A"))


OP = OpSpec(
    name="still",
    summary="Test op: mixes the plate with one reference image",
    params=(Param("count", "int", 2, "how many times (a test value with a range)", 1, 8),),
    roles=(
        Role("plate", "Plate", "sequence", True, ("R", "G", "B"), "the footage"),
        Role("ref", "Reference", "image", True, ("R", "G", "B"), "one picture mixed into every frame"),
        Role("guide", "Guide", "sequence", False, ("R", "G", "B"), "a sequence mixed in too"),
    ),
    run=run,
)

if __name__ == "__main__":
    all_ops()[OP.name] = OP
    sys.exit(main(sys.argv[1:]))
