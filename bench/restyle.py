"""restyle: seconds per frame split into depth, VAE, UNet + ControlNet and I/O, and peak memory
for a shot of 8 frames against one of 48 (goal: within 1.2x).

Runs the real job path (`run_job`: EXR in, op, EXR out) on a synthetic shot, timing the op's own
steps by wrapping them (exclusive times): `ShotDepth` (the shot's percentiles and each frame's
normalised depth, reading the depth input or running the depth model on the plate) is depth,
`Restyler.decode` and the latents' `encode` are the VAE, `Restyler.generate` (ControlNet + UNet,
every step, cross-frame attention included) is UNet + ControlNet, reading plates and writing EXRs
is I/O; "other" is the rest (prompt embeddings, control image, colour, the job's own work). Each
shot runs in a fresh process, so peak memory (RSS on the CPU, allocated memory on a GPU) belongs
to that run alone; the cross-frame attention's K/V cache (`CrossFrameAttention.cache_bytes`) is
sampled before every step and at every frame's end, and its maximum printed. CPU time (all
threads) is printed beside wall time: on a shared machine it is the steadier figure.

  python bench/restyle.py                                     # tiny models on the CPU, 128x128
  python bench/restyle.py --depth model                       # depth from the tiny depth model
  python bench/restyle.py --seams --size 64x64 --strength 0.5  # a farm chunk against the full render
  python bench/restyle.py --arch sd15 --device cuda --size 512x512 1024x576 --steps 20 --frames 8 48

`--arch sd15` builds Stable Diffusion 1.5's UNet and VAE and a depth ControlNet made from that
UNet (`ControlNetModel.from_unet`) from their configs, with random weights, in memory, in half
precision on a GPU (float on the CPU): it times like the real models and its pictures are noise.
Prompt embeddings are random (1, 77, 768) tensors: the text encoder runs only as a job starts.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from phases import PhaseTimer, answer_child, parse_size, parser, run_child, split


def build_sd15(device: str) -> tuple[Any, Any]:
    """SD 1.5's UNet and VAE and a depth ControlNet from its UNet, random weights, as the op loads them."""
    import torch
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel

    from cvgen.server.core.models.controlnet import ControlNet
    from cvgen.server.core.models.kind import modules_ready
    from cvgen.server.core.models.sd import SDModel, ddim

    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    torch.manual_seed(0)
    with torch.device(device):  # random initialisation of 1.3 billion weights runs where they will run
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
        controlnet = ControlNetModel.from_unet(unet)
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2, sample_size=512,
        )
    modules_ready(unet, vae, controlnet, device=torch.device(device), dtype=dtype)
    scheduler = ddim({"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                      "set_alpha_to_one": False})  # SD 1.5's noise schedule
    model = SDModel("sd15-random", torch.device(device), dtype, "sd15-random", unet=unet, vae=vae,
                    text_encoder=None, tokenizer=None, scheduler=scheduler, prediction_type="epsilon")
    embeddings = torch.Generator().manual_seed(1)
    model.encode_prompt = lambda prompts: torch.randn(  # type: ignore[method-assign]
        len(prompts), 77, 768, generator=embeddings).to(device, dtype)
    return model, ControlNet("sd15-depth-random", torch.device(device), dtype, "sd15-depth-random", model=controlnet)


def write_shot(folder: Path, frames: int, width: int, height: int) -> dict[str, str]:
    """A textured plate with a disc moving across it, and its distance Z pass (the disc nearer)."""
    from cvgen.protocol.images import Image
    from cvgen.server.io.exr import write_exr

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    texture = rng.uniform(0.0, 0.1, (height, width, 3)).astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    for f in range(1, frames + 1):
        cx = width * (0.25 + 0.5 * (f - 1) / max(1, frames - 1))
        disc = np.hypot(x - cx, y - height / 2) < 0.25 * min(width, height)
        rgb = 0.1 + 0.5 * (y / height)[..., None] * np.array([0.4, 0.6, 0.8], np.float32) + texture
        rgb[disc] = (0.9, 0.4, 0.2)
        z = np.where(disc, 2.0, 10.0 - 6.0 * y / height).astype(np.float32)
        write_exr(folder / f"plate.{f:04d}.exr", Image(np.dstack([rgb, np.ones_like(x)]).astype(np.float16),
                                                      ("R", "G", "B", "A")))
        write_exr(folder / f"depth.{f:04d}.exr", Image(z[..., None], ("Z",)))
    return {"plate": str(folder / "plate.####.exr"), "depth": str(folder / "depth.####.exr")}


def measure(args: argparse.Namespace) -> dict:
    """One run in this process: returns seconds per phase, peak memory and the largest K/V cache."""
    from cvgen.protocol.jobs import JobSpec
    from cvgen.server.core import inversion_cache, latents
    from cvgen.server.core.attention import CrossFrameAttention
    from cvgen.server.core.models import ModelCache, ModelRegistry
    from cvgen.server.core.models.cache import Lease
    from cvgen.server.jobs import runner, shot as shot_module
    from cvgen.server.ops import structure
    from cvgen.server.ops.restyle import Restyler

    timer = PhaseTimer(args.device)
    timed = timer.timed
    cache_peak = [0]

    def sampled(fn: Callable) -> Callable:
        def wrapper(self, *a, **kw):
            cache_peak[0] = max(cache_peak[0], self.cache_bytes)
            return fn(self, *a, **kw)
        return wrapper

    structure.ShotDepth.__init__ = timed("depth", structure.ShotDepth.__init__)
    structure.ShotDepth.normalised = timed("depth", structure.ShotDepth.normalised)
    Restyler.decode, Restyler.generate = timed("vae", Restyler.decode), timed("unet_controlnet", Restyler.generate)
    latents.encode = timed("vae", latents.encode)
    inversion_cache.invert_cached = timed("inversion", inversion_cache.invert_cached)
    shot_module.FileShot.read = timed(lambda shot, role, frame: "depth" if role == "depth" else "io",
                                      shot_module.FileShot.read)
    runner.write_exr = timed("io", runner.write_exr)
    CrossFrameAttention.set_step = sampled(CrossFrameAttention.set_step)
    CrossFrameAttention.end_frame = sampled(CrossFrameAttention.end_frame)

    width, height = parse_size(args.one_size)
    work = Path(tempfile.mkdtemp(prefix="cvgen-bench-"))
    runner._cache_dir = lambda: work / "cache"  # no inversion cache hits from earlier runs; tiny models stay shared
    models_file = work / "models.toml"
    models_file.write_text('default = "tiny"\ndefault_controlnet = "tiny-controlnet"\n')
    models = ModelCache(ModelRegistry.load(models_file))
    if args.arch == "sd15":
        sd, controlnet = build_sd15(args.device)
        plain_get = Lease.get

        def get(lease: Lease, name: str = "", kind: str = "sd") -> Any:
            return {"sd": sd, "controlnet": controlnet}.get(kind) or plain_get(lease, name, kind)

        Lease.get = get  # the random SD 1.5 parts stand in for the configured models
    else:
        models.get("", "sd", args.device)  # loaded before the clock starts, as in a warm server
        models.get("", "controlnet", args.device)
    if args.depth == "model":
        models.get("tiny-depth", "depth", args.device)
    shot = write_shot(work / "shot", args.one_frames, width, height)
    if args.depth == "model":
        del shot["depth"]
    params = {"steps": args.steps, "omega": args.omega, "strength": args.strength, "prompt": "an oil painting",
              **({"depth_model": "tiny-depth"} if args.depth == "model" else {})}
    spec = JobSpec("restyle", (1, args.one_frames), shot, params=params)
    cpu_started = time.process_time()
    result = timer.measure(lambda: runner.run_job(spec, work / "out", models=models, device=args.device),
                           args.one_frames, args.one_size)
    return {**result, "cache_bytes": cache_peak[0], "cpu_s": time.process_time() - cpu_started}


def seams(args: argparse.Namespace, warmups: list[int]) -> None:
    """How far a farm chunk's first frames are from the full render's, per warm-up length.

    The last quarter of a 12-frame shot rendered as a chunk with `warmup` frames before it (and
    the anchor) against the same frames of the full render; the full render's own change from
    one frame to the next is the scale. A warm-up that reaches back to the frame after the
    anchor renders exactly what the full render does (difference 0).
    """
    from cvgen.protocol.jobs import JobSpec
    from cvgen.server.core.models import ModelCache, ModelRegistry
    from cvgen.server.io.exr import read_exr
    from cvgen.server.jobs import runner
    from cvgen.server.jobs.store import output_name

    frames, chunk = 12, list(range(10, 13))
    width, height = parse_size(args.size[0])
    work = Path(tempfile.mkdtemp(prefix="cvgen-bench-"))
    (work / "models.toml").write_text('default = "tiny"\ndefault_controlnet = "tiny-controlnet"\n')
    models = ModelCache(ModelRegistry.load(work / "models.toml"))
    spec = JobSpec("restyle", (1, frames), write_shot(work / "shot", frames, width, height),
                   params={"steps": args.steps, "omega": args.omega, "strength": args.strength,
                           "prompt": "an oil painting"})

    def rendered(folder: Path, frame: int) -> np.ndarray:
        return read_exr(folder / output_name(spec, frame)).pixels[..., :3].astype(np.float64)

    runner.run_job(spec, work / "full", models=models, device=args.device)
    motion = np.mean([np.abs(rendered(work / "full", f) - rendered(work / "full", f - 1)).mean() for f in chunk])
    print(f"restyle chunk seams, {args.size[0]}, {args.steps} steps, omega {args.omega}, strength {args.strength}: "
          f"frames {chunk[0]}-{chunk[-1]} of {frames} as a chunk; the full render changes by {motion:.3g} per frame "
          "(mean |difference|)")
    for warmup in warmups:
        out = work / f"chunk-{warmup}"
        runner.run_job(spec, out, frames=chunk, models=models, device=args.device, warmup=warmup)
        error = [np.abs(rendered(out, f) - rendered(work / "full", f)).mean() for f in chunk]
        print(f"  warm-up {warmup}: mean |chunk - full| per frame {', '.join(f'{e:.3g}' for e in error)} "
              f"({error[0] / motion:.2g}x the frame-to-frame change at the chunk's first frame)")


def main() -> None:
    cli = parser(__doc__, ("tiny", "sd15"))
    cli.add_argument("--size", nargs="+", default=["128x128"], help="WIDTHxHEIGHT, several allowed")
    cli.add_argument("--frames", nargs="+", type=int, default=[8, 48], help="shot lengths to compare")
    cli.add_argument("--steps", type=int, default=10)
    cli.add_argument("--omega", type=float, default=1.0)
    cli.add_argument("--strength", type=float, default=1.0)
    cli.add_argument("--depth", choices=("input", "model"), default="input",
                        help="a Z pass as the depth input, or the tiny depth model's estimate of the plate")
    cli.add_argument("--seams", type=int, nargs="*", metavar="WARMUP",
                        help="instead: a farm chunk's difference from the full render for these warm-up lengths")
    args = cli.parse_args()
    if answer_child(args, measure):
        return
    if args.seams is not None:
        seams(args, args.seams or [0, 1, 2, 4, 8])
        return
    print(f"restyle, {args.arch} architecture on {args.device}, {args.steps} steps, omega {args.omega}, "
          f"strength {args.strength}, depth from the {args.depth}")
    for size in args.size:
        peaks, caches = {}, {}
        for frames in args.frames:
            result = run_child(__file__, ["--arch", args.arch, "--device", args.device, "--steps", str(args.steps),
                                          "--omega", str(args.omega), "--strength", str(args.strength),
                                          "--depth", args.depth, "--one-frames", str(frames), "--one-size", size])
            peaks[frames], caches[frames] = result["peak_bytes"], result["cache_bytes"]
            print(f"  {size} x {frames:3d} frames: {result['total_s'] / frames:.3f} s/frame "
                  f"({split(result['per_frame'])}; "
                  f"CPU time {result['cpu_s'] / frames:.3f} s/frame); "
                  f"peak memory {result['peak_bytes'] / 2**20:.0f} MiB, "
                  f"K/V cache {result['cache_bytes'] / 2**20:.2f} MiB")
        short, long = min(peaks), max(peaks)
        kv = f"K/V cache {caches[long] / caches[short]:.2f}x" if caches[short] else "no K/V cache (omega 0)"
        print(f"  {size}: {long} vs {short} frames: peak memory {peaks[long] / peaks[short]:.2f}x, {kv}")


if __name__ == "__main__":
    main()
