"""`cvgen eval` on real footage: do the ops harmonise a composite, by the harmonisation protocol?

The protocol is iHarmony4's, on video: a region of each real frame has its colour and exposure
perturbed (here a fixed soft-edged ellipse over the frame's centre, where the runner mostly is:
+0.7 stop and a warm cast, applied in scene-linear light); that is the input composite, the
untouched frames are the original, the ellipse is the matte. A perfect harmoniser gives the
original back. The ops get the layers of that composite, as a host sends them: the element (the
perturbed frame premultiplied by the matte), the plate behind it (the untouched frame, which the
element covers: both ops read the plate under the matte only through `C = M * F + (1 - M) * B`)
and the matte.

colormatch and harmonize run through the real job path (`run_job`: EXR in, op, EXR out), then
`evaluate` scores every result and the input composite against the original, inside the matte,
with the optical flow computed on the original; the original itself is scored too, as the floor
(harmonisation error 0; the warp error and flicker the footage has of itself). The weight-free
rows (input composite, colormatch) are real quality figures, and the bench checks colormatch's
goal: lower fMSE than the input composite, and warp error and flicker at most 5 % above it; it
exits 1 when the goal is missed. harmonize runs on the built-in `tiny` model, whose weights are
random: its row shows the plumbing works, not what harmonize does. So do the two video ops, also
on random-weight tiny models: smooth (`tiny` and `tiny-t2v`, strength 0.5) on harmonize's result,
inside the matte; propagate (`tiny-svd`) with the input composite as the plate, the original first frame as
the edit (the fix an artist paints on frame one) and the region as the matte. restyle is not
built yet. CLIP and PickScore are scored only with the models named by --clip /
--pickscore (from the models file); otherwise they are listed as not computed, with the reason.

  python bench/eval_ops.py                         # 16 frames at 256 px wide, about 40 s on 2 cores
  python bench/eval_ops.py --frames 12 --width 192 --out /tmp/eval-bench   # keep the shot and report
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from cvgen.protocol.images import Image
from cvgen.protocol.jobs import JobSpec
from cvgen.server.core.models import ModelCache, ModelRegistry
from cvgen.server.eval import EvalReport, evaluate
from cvgen.server.eval.report import format_table, write_json
from cvgen.server.io.exr import write_exr
from cvgen.server.io.video import read_video
from cvgen.server.jobs.runner import run_job

FOOTAGE = Path(__file__).resolve().parents[2] / "shared" / "data" / "video" / "woman-running.mp4"
FIRST_FRAME = 1001
#: The perturbation of the region: an exposure gain in stops and a per-channel colour cast (warm).
GAIN_STOPS = 0.7
CAST = (1.12, 1.0, 0.85)
#: The fixed ellipse: centre and semi-axes as fractions of width and height.
ELLIPSE = (0.5, 0.62, 0.22, 0.3)
PROMPT = "a woman running by a river, overcast light"
TINY = "random weights: plumbing only, not quality"
#: Diffusion ops the issue names that do not exist yet.
NOT_BUILT = ("restyle",)
#: colormatch may raise warp error and flicker by at most this fraction of the input composite's.
TOLERANCE = 0.05


def ellipse_matte(height: int, width: int) -> np.ndarray:
    """The region, with an edge about 1/8 of its radius soft, as real mattes are."""
    cx, cy, rx, ry = ELLIPSE
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = np.hypot((x - cx * width) / (rx * width), (y - cy * height) / (ry * height))
    return np.clip((1.0 - r) * 8.0, 0.0, 1.0)


def build_shot(folder: Path, video: Path, count: int, width: int) -> dict[str, str]:
    """original, composite, fg (the perturbed frame premultiplied by the matte) and matte EXR sequences."""
    frames = [image.stack(("R", "G", "B")) for image in read_video(video, count=count)]
    if len(frames) < count:
        sys.exit(f"{video} has {len(frames)} frames; the bench needs {count}")
    height = round(frames[0].shape[0] * width / frames[0].shape[1])
    matte = ellipse_matte(height, width)[..., None]
    perturb = np.float32(2.0**GAIN_STOPS) * np.array(CAST, np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames):
        original = cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)
        fg = matte * original * perturb
        layers = {"original": original, "composite": fg + (1.0 - matte) * original, "fg": np.dstack([fg, matte]),
                  "matte": matte}
        for name, pixels in layers.items():
            channels = {1: ("A",), 3: ("R", "G", "B"), 4: ("R", "G", "B", "A")}[pixels.shape[2]]
            write_exr(folder / f"{name}.{FIRST_FRAME + i:04d}.exr", Image(pixels.astype(np.float16), channels))
    return {name: str(folder / f"{name}.####.exr") for name in ("original", "composite", "fg", "matte")}


def run_op(op: str, shot: dict[str, str], count: int, out: Path, models: ModelCache, params: dict,
           inputs: dict[str, str] | None = None) -> tuple[str, float]:
    """One op through the job path (by default on the composite's layers); returns its output
    sequence and seconds taken."""
    inputs = inputs or {"plate": shot["original"], "fg": shot["fg"], "matte": shot["matte"]}
    spec = JobSpec(op, (FIRST_FRAME, FIRST_FRAME + count - 1), inputs, params=params, name=op)
    started = time.perf_counter()
    run_job(spec, out / op, models=models, device="cpu")
    return str(out / op / f"{op}.####.exr"), time.perf_counter() - started


def value(report: EvalReport, label: str, key: str) -> float:
    result = next(r for r in report.results if r.label == label)
    metric = next(m for m in result.metrics if m.key == key)
    if metric.value is None:
        sys.exit(f"{key} of {label} was not computed: {metric.not_computed}")
    return metric.value


def check_colormatch(report: EvalReport, composite: str, colormatch: str) -> bool:
    """Print colormatch's goal against the input composite, figure by figure; True when all are met."""
    ok = True
    for key, limit, goal in (("harmonization_fmse", 1.0, "lower"),
                             ("warp_error", 1.0 + TOLERANCE, f"at most {TOLERANCE:.0%} higher"),
                             ("flicker_stops", 1.0 + TOLERANCE, f"at most {TOLERANCE:.0%} higher")):
        before, after = value(report, composite, key), value(report, colormatch, key)
        met = after < before if limit == 1.0 else after <= before * limit
        ok &= met
        print(f"  {key}: input composite {before:.5g}, colormatch {after:.5g} ({after / before - 1:+.1%}); "
              f"goal {goal}: {'met' if met else 'MISSED'}")
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video", type=Path, default=FOOTAGE)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10, help="harmonize's sampling steps")
    parser.add_argument("--clip", default="", help="CLIP model from the models file (default: not computed)")
    parser.add_argument("--pickscore", default="", help="PickScore model from the models file")
    parser.add_argument("--out", type=Path, help="keep the shot, results and report.json here")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="cvgen-eval-bench-"))
    if out.exists() and any(out.iterdir()):
        sys.exit(f"{out} is not empty: frames already there would be kept, not rendered and timed again")
    os.environ["CVGEN_CACHE"] = str(out / "cache")  # no inversion cache hits from earlier runs
    started = time.perf_counter()
    shot = build_shot(out / "shot", args.video, args.frames, args.width)
    print(f"{args.frames} frames of {args.video.name} at {args.width} px wide; region: fixed ellipse "
          f"{ELLIPSE}, +{GAIN_STOPS} stop, cast {CAST}; shot built in {time.perf_counter() - started:.1f} s")
    models = ModelCache(ModelRegistry.load())
    colormatch, cm_s = run_op("colormatch", shot, args.frames, out, models, {})
    harmonize, hz_s = run_op("harmonize", shot, args.frames, out, models,
                             {"prompt": PROMPT, "steps": args.steps, "model": "tiny"})
    smooth, sm_s = run_op("smooth", shot, args.frames, out, models,
                          {"prompt": PROMPT, "steps": args.steps, "strength": 0.5, "model": "tiny",
                           "video_model": "tiny-t2v"},  # half the schedule: keeps the bench short
                          {"plate": harmonize, "matte": shot["matte"]})
    first = shot["original"].replace("####", f"{FIRST_FRAME:04d}")
    propagate, pr_s = run_op("propagate", shot, args.frames, out, models, {"steps": args.steps, "model": "tiny-svd"},
                             {"plate": shot["composite"], "edit": first, "matte": shot["matte"]})
    print(f"colormatch {cm_s:.1f} s, harmonize (tiny, {args.steps} steps) {hz_s:.1f} s, smooth of harmonize's "
          f"result (tiny + tiny-t2v, {args.steps} steps, strength 0.5) {sm_s:.1f} s, "
          f"propagate (tiny-svd, {args.steps} steps) {pr_s:.1f} s")
    labels = ["original (reference)", "input composite", "colormatch", f"harmonize (tiny: {TINY})",
              f"smooth of harmonize (tiny, tiny-t2v: {TINY})", f"propagate (tiny-svd: {TINY})"]
    scoring = time.perf_counter()
    report = evaluate([shot["original"], shot["composite"], colormatch, harmonize, smooth, propagate],
                      source=shot["original"],
                      original=shot["original"], matte=shot["matte"], prompt=PROMPT, clip=args.clip,
                      pickscore=args.pickscore, labels=labels)
    write_json(report, out / "report.json")
    print(f"evaluated in {time.perf_counter() - scoring:.1f} s; total {time.perf_counter() - started:.1f} s; "
          f"report: {out / 'report.json'}\n")
    print(format_table(report))
    print(f"not built yet: {', '.join(NOT_BUILT)} (no rows)\n")
    print("colormatch against the input composite (weight-free, real quality figures):")
    if not check_colormatch(report, labels[1], labels[2]):
        sys.exit(1)


if __name__ == "__main__":
    main()
