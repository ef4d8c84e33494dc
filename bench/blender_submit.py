"""How long the Blender UI is blocked before a 1080p render is sent (issue 14).

Run with the bpy virtualenv's Python: `.venv-blender/bin/python bench/blender_submit.py [--addon DIR]`.
It starts a real `cvgen serve` (the main virtualenv's), builds a 1920x1080 shot of two PNG strips
(plate and foreground, 10 frames: PNGs must be rendered to EXR before the server can read them), and
times Render from the operator call to the moment the job would go to the server (where the panel
hands it to a worker thread), twice: a first render, and a second one with nothing changed.
`--addon` names another copy of blender_addon/ to compare with (an older one, say).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
FRAMES = range(1001, 1011)
SIZE = (1920, 1080)


def free_address() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{probe.getsockname()[1]}"


def start_server(folder: Path, address: str) -> subprocess.Popen[bytes]:
    """`cvgen serve` from the main virtualenv, once it listens."""
    proc = subprocess.Popen([str(REPO / ".venv" / "bin" / "python"), "-m", "cvgen.server.cli", "serve", "--bind",
                             address, "--jobs-dir", str(folder / "jobs")], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    for line in proc.stdout:
        if b"listening on" in line:
            return proc
    raise SystemExit(f"cvgen serve did not start (exit code {proc.wait()})")


def write_pngs(bpy: Any, folder: Path, name: str, seed: int) -> str:
    """A 1080p PNG sequence of frame-varying colour with film-like grain (which makes EXRs as large
    as footage's); returns its first file."""
    import numpy as np

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:SIZE[1], 0:SIZE[0]].astype(np.float32)
    for frame in FRAMES:
        phase = seed + frame * 0.1
        rgba = np.dstack([0.5 + 0.4 * np.sin(x / 200 + phase), 0.5 + 0.4 * np.cos(y / 150 + phase),
                          np.full_like(x, 0.3), np.ones_like(x)])
        rgba[..., :3] += rng.normal(0, 0.03, (SIZE[1], SIZE[0], 3))
        image = bpy.data.images.new(f"{name}{frame}", *SIZE, alpha=True)
        image.pixels.foreach_set(rgba.astype(np.float32).ravel())
        image.filepath_raw = str(folder / f"{name}.{frame}.png")
        image.file_format = "PNG"
        image.save()
        bpy.data.images.remove(image)
    return str(folder / f"{name}.{FRAMES[0]}.png")


def enable_addon(bpy: Any, addon: Path) -> str:
    import addon_utils

    repo_dir = Path(bpy.utils.user_resource("EXTENSIONS")) / "user_default"
    repo_dir.mkdir(parents=True, exist_ok=True)
    (repo_dir / "cvgen").symlink_to(addon, target_is_directory=True)
    module = "bl_ext.user_default.cvgen"
    addon_utils.enable(module, default_set=True)
    return module


def shot(bpy: Any, work: Path, address: str, module: str) -> Any:
    bpy.ops.wm.read_homefile(use_empty=True)
    scene = bpy.context.scene
    scene.name = "bench"
    scene.frame_start, scene.frame_end = FRAMES.start, FRAMES.stop - 1
    scene.render.resolution_x, scene.render.resolution_y = SIZE
    scene.render.resolution_percentage = 100
    (work / "project").mkdir()
    bpy.ops.wm.save_as_mainfile(filepath=str(work / "project" / "bench.blend"))
    editor = scene.sequence_editor_create()
    for channel, name in enumerate(("plate", "fg"), start=1):
        first = write_pngs(bpy, work / "footage" / name, name, channel)
        strip = editor.strips.new_image(name, first, channel, FRAMES.start)
        for frame in FRAMES[1:]:
            strip.elements.append(f"{name}.{frame}.png")
        setattr(scene.cvgen, name, strip.name)
    bpy.context.preferences.addons[module].preferences.address = address
    bpy.ops.cvgen.connect()
    scene.cvgen.op = "colormatch"
    return scene


class Sent(Exception):
    """Raised where the job would go to the server: the time up to here is what the UI waits."""


def time_until_sent(bpy: Any, operators: Any) -> float:
    """Seconds from calling Render to the job being handed on (the job itself is not sent)."""
    start = time.perf_counter()
    marks: list[float] = []

    def stop(*_args: Any, **_kwargs: Any) -> None:
        marks.append(time.perf_counter() - start)
        raise Sent

    operators.run_job = stop
    try:
        bpy.ops.cvgen.render()
    except RuntimeError:
        pass  # the report of `Sent`
    if not marks:
        raise SystemExit("Render stopped before it would send the job")
    return marks[0]


def exr_sizes(folder: Path) -> list[int]:
    return [f.stat().st_size for f in folder.rglob("*.exr")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addon", type=Path, default=REPO / "blender_addon")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cvgen-bench-") as tmp:
        work = Path(tmp)
        os.environ.update(HOME=str(work / "home"), XDG_CONFIG_HOME=str(work / "home" / ".config"),
                          BLENDER_USER_EXTENSIONS=str(work / "extensions"))
        import bpy  # after the user folders are set: Blender reads them when it starts

        address = free_address()
        server = start_server(work, address)
        try:
            module = enable_addon(bpy, args.addon.resolve())
            operators = sys.modules[f"{module}.blender.operators"]
            shot(bpy, work, address, module)
            first = time_until_sent(bpy, operators)
            second = time_until_sent(bpy, operators)
        finally:
            server.terminate()
            server.wait()
        sizes = exr_sizes(work / "project" / "cvgen")
    frames = len(FRAMES)
    print(f"add-on {args.addon}: two {SIZE[0]}x{SIZE[1]} PNG strips, {frames} frames")
    print(f"UI blocked before the job is sent: first render {first:.2f} s, second (unchanged strips) {second:.2f} s")
    print(f"converted EXRs written by both renders: {len(sizes)} files, {sum(sizes) / 1e6:.0f} MB "
          f"({sum(sizes) / 1e6 / max(len(sizes), 1):.1f} MB each)")


if __name__ == "__main__":
    main()
