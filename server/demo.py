"""The demo: a composite shot made from real footage, sent through a real server, with a preview.

It is what `make demo` runs on a fresh machine, so it needs nothing but the package: footage
from the shared sample clip when present (a procedural shot otherwise), a `cvgen serve`
subprocess on a free loopback port, and the same client a host uses.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np

from cvgen.protocol.client import Client, FrameReady, Progress
from cvgen.protocol.errors import CvgenError
from cvgen.protocol.images import Image
from cvgen.protocol.jobs import JobSpec, frame_path

from .io.exr import read_exr, write_exr
from .io.preview import contact_sheet
from .io.video import read_video

FIRST_FRAME = 1001
OPS = ("colormatch", "harmonize", "smooth", "propagate", "restyle")
#: harmonize, smooth (on harmonize's result) and propagate run on the first frames only: diffusion on
#: the CPU takes seconds per frame.
HARMONIZE_FRAMES = 6
#: restyle runs a ControlNet beside the UNet and attends across frames at the full 512 x 512: fewer frames still.
RESTYLE_FRAMES = 3
SAMPLE_CLIP = Path("shared") / "data" / "video" / "woman-running.mp4"


def find_sample_clip() -> Path | None:
    """The shared sample clip beside the checkout or the working directory, if it is there."""
    candidates = [Path(os.environ["CVGEN_DEMO_VIDEO"])] if os.environ.get("CVGEN_DEMO_VIDEO") else []
    for root in (Path.cwd(), Path(__file__).resolve().parents[1]):
        candidates += [root / ".." / SAMPLE_CLIP, root / SAMPLE_CLIP]
    return next((p.resolve() for p in candidates if p.is_file()), None)


def plate_frames(video: Path | None, count: int) -> Iterator[Image]:
    if video is not None:
        yield from read_video(video, count=count)
        return
    h, w = 256, 384
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    for i in range(count):
        sky = 0.6 * np.exp(-y / h)[..., None] * np.array([0.55, 0.7, 1.0], np.float32)
        ground = (y > h * 0.6)[..., None] * (0.08 + 0.04 * np.sin((x + 6 * i) / 9.0))[..., None]
        rgb = sky + ground * np.array([0.6, 0.5, 0.3], np.float32)
        yield Image(np.dstack([rgb, np.ones((h, w), np.float32)]), ("R", "G", "B", "A"))


def foreground(plate: Image, source: Image, index: int, count: int) -> Image:
    """An element that does not belong: footage from elsewhere in the clip, mirrored, graded
    warm and a stop hot, under a soft elliptical matte that drifts across the frame."""
    h, w = plate.height, plate.width
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    cx = w * (0.3 + 0.4 * index / max(count - 1, 1))
    r = ((x - cx) / (0.2 * w)) ** 2 + ((y - 0.55 * h) / (0.3 * h)) ** 2
    alpha = np.clip((1.0 - r) * 4.0, 0.0, 1.0)
    rgb = source.stack(("R", "G", "B"))[:, ::-1] * np.array([2.2, 1.7, 1.1], np.float32)
    return Image(np.dstack([rgb * alpha[..., None], alpha]).astype(np.float16), ("R", "G", "B", "A"))


def composite(plate: Image, fg: Image) -> Image:
    alpha = fg.channel("A").astype(np.float32)[..., None]
    rgb = fg.stack(("R", "G", "B")) + (1 - alpha) * plate.stack(("R", "G", "B"))
    return Image(rgb, ("R", "G", "B"))


def build_shot(folder: Path, video: Path | None, count: int) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    plates = list(plate_frames(video, count + 60))
    if len(plates) < count:
        raise CvgenError(f"{video} has only {len(plates)} frames; the demo needs {count}")
    for i in range(count):
        source = plates[min(i + 60, len(plates) - 1)]
        plate = Image(plates[i].pixels.astype(np.float16), plates[i].channels)
        write_exr(folder / f"plate.{FIRST_FRAME + i:04d}.exr", plate)
        write_exr(folder / f"fg.{FIRST_FRAME + i:04d}.exr", foreground(plate, source, i, count))
    return {"plate": str(folder / "plate.####.exr"), "fg": str(folder / "fg.####.exr")}


def paint_edit(inputs: dict[str, str], folder: Path) -> str:
    """The first plate frame with a warm patch painted on it, as an artist's paint fix would be."""
    plate = read_exr(frame_path(inputs["plate"], FIRST_FRAME))
    pixels = plate.pixels.astype(np.float32)
    h, w = pixels.shape[:2]
    pixels[h // 3 : h // 2, w // 3 : w // 2, :3] = (1.5, 0.35, 0.1)
    write_exr(folder / "edit.exr", Image(pixels.astype(np.float16), plate.channels))
    return str(folder / "edit.exr")


def edit_matte(inputs: dict[str, str], folder: Path, count: int) -> str:
    """Where the paint fix may change the shot: the patch with a margin, on every frame (an artist's roto)."""
    plate = read_exr(frame_path(inputs["plate"], FIRST_FRAME))
    h, w = plate.height, plate.width
    alpha = np.zeros((h, w, 1), np.float16)
    alpha[h // 4 : h * 7 // 12, w // 4 : w * 7 // 12] = 1.0
    template = str(folder / "edit-matte.####.exr")
    for frame in range(FIRST_FRAME, FIRST_FRAME + count):
        write_exr(Path(frame_path(template, frame)), Image(alpha, ("A",)))
    return template


def style_frame(inputs: dict[str, str], folder: Path) -> str:
    """The reference restyle takes its look from: the first foreground frame, as one RGB EXR (a style frame)."""
    fg = read_exr(frame_path(inputs["fg"], FIRST_FRAME))
    write_exr(folder / "style.exr", Image(fg.stack(("R", "G", "B")).astype(np.float16), ("R", "G", "B")))
    return str(folder / "style.exr")


def depth_model(info: dict) -> str:
    """"" (the server's default depth model) when one is configured; else the built-in `tiny-depth`, named,
    since restyle never estimates depth with random weights unless told to."""
    configured = any(m["kind"] == "depth" and m.get("default") and not m.get("builtin") for m in info.get("models", []))
    return "" if configured else "tiny-depth"


def start_server(jobs_dir: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "cvgen.server.cli", "serve", "--bind", "tcp://127.0.0.1:*", "--jobs-dir", str(jobs_dir)],
        stdout=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        raise CvgenError(f"the demo server did not start: {line.strip() or 'no output'}")
    return proc, line.split("listening on ", 1)[1].split()[0]


def stop_server(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def render(client: Client, op: str, inputs: dict[str, str], count: int, out: Path, params: dict) -> None:
    """One job through the server, with a one-line progress display."""
    job = JobSpec(op, (FIRST_FRAME, FIRST_FRAME + count - 1), inputs, params=params, name="demo", output=str(out / op))
    started = time.monotonic()
    frames = 0
    shown = -1
    for event in client.submit(job):
        if isinstance(event, Progress) and int(event.fraction * 100) > shown:
            shown = int(event.fraction * 100)
            print(f"\r  {op} {shown:3d}%", end="", flush=True)
        elif isinstance(event, FrameReady):
            frames += 1
    print(f"\r  {op}: {frames} frames in {time.monotonic() - started:.1f} s -> {out / op}/demo.####.exr")


def run_demo(out: Path, count: int, video: Path | None = None) -> None:
    out = out.resolve()
    video = video or find_sample_clip()
    print(f"building a {count}-frame composite shot from {video or 'a procedural plate (sample clip not found)'}")
    inputs = build_shot(out / "inputs", video, count)
    proc, endpoint = start_server(out / "jobs")
    try:
        with Client(endpoint, timeout=60) as client:
            info = client.hello()
            print(f"server {info['server_version']} at {endpoint}: ops {', '.join(o['name'] for o in info['ops'])}")
            render(client, "colormatch", inputs, count, out, {})
            model = info["default_model"]
            prompt = "a woman running by a river, overcast light"
            render(client, "harmonize", inputs, min(count, HARMONIZE_FRAMES), out, {"prompt": prompt, "steps": 10})
            # harmonize then smooth: the harmonized frames made coherent by the video model, inside the fg's matte
            render(client, "smooth", {"plate": str(out / "harmonize" / "demo.####.exr"), "matte": inputs["fg"]},
                   min(count, HARMONIZE_FRAMES), out, {"prompt": prompt, "steps": 4, "strength": 0.5})
            edited = {"plate": inputs["plate"], "edit": paint_edit(inputs, out / "inputs"),
                      "matte": edit_matte(inputs, out / "inputs", min(count, HARMONIZE_FRAMES))}
            render(client, "propagate", edited, min(count, HARMONIZE_FRAMES), out, {"steps": 10})
            # restyle: the plate from a prompt and a style frame, inside the fg's matte; the demo has no depth
            # pass, so depth comes from the server's depth model, or the built-in one when none is configured
            restyled = {"plate": inputs["plate"], "matte": inputs["fg"],
                        "reference": style_frame(inputs, out / "inputs")}
            render(client, "restyle", restyled, min(count, RESTYLE_FRAMES), out,
                   {"prompt": "an oil painting of a woman running by a river", "depth_model": depth_model(info),
                    "steps": 2})
    finally:
        stop_server(proc)
    rows = []
    for i in np.linspace(0, min(count, RESTYLE_FRAMES) - 1, num=min(3, count)).astype(int):
        frame = FIRST_FRAME + int(i)
        plate = read_exr(frame_path(inputs["plate"], frame))
        fg = read_exr(frame_path(inputs["fg"], frame))
        rows.append([composite(plate, fg)] + [read_exr(out / op / f"demo.{frame:04d}.exr") for op in OPS])
    contact_sheet(rows, out / "preview.png")
    print(f"results:  {out}/{{{','.join(OPS)}}}/demo.####.exr (scene-linear Rec.709, half)")
    print(f"preview:  {out / 'preview.png'} (columns: input composite, {', '.join(OPS)})")
    print(f"job data: {out / 'jobs'}")
    if model == "tiny":
        print("note: harmonize ran on the built-in `tiny` model and smooth on `tiny` with the built-in `tiny-t2v` video "
              "model, whose weights are random: their results show the pipeline works, not what harmonize or smooth "
              "look like. Real results need a real Stable Diffusion model (and a text-to-video model such as "
              "ZeroScope for smooth): name their folders in a models file (see README, 'Models').")
        print("note: propagate ran on the built-in `tiny-svd` model, random weights too: it shows the windows, "
              "the matte and the colour handling work, not what a propagated edit looks like. Real results need "
              "Stable Video Diffusion img2vid (see README, 'propagate').")
        print("note: restyle ran on `tiny` with the built-in `tiny-controlnet`, `tiny-ip-adapter` and `tiny-depth`, "
              "random weights too: it shows depth, the reference, cross-frame attention and the matte reach the "
              "result, not what a restyled shot looks like. Real results need real models: Stable Diffusion 1.5, "
              "its depth ControlNet, an IP-Adapter and Depth Anything (see README, 'restyle').")
