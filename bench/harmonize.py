"""harmonize: seconds per frame split into VAE, inversion, generation and I/O, and peak memory
against shot length.

Runs the real job path (`run_job`: EXR in, op, EXR out) on a synthetic shot, timing the op's
own steps by wrapping them. Each shot length runs in a fresh process so peak memory (RSS on the
CPU, allocated memory on a GPU) belongs to that run alone.

  python bench/harmonize.py                      # tiny model on the CPU, 8 and 48 frames
  python bench/harmonize.py --arch sd15 --device cuda --size 512x512 1024x576 --frames 8 48

`--arch sd15` builds Stable Diffusion 1.5's architecture (UNet, VAE, CLIP text encoder) with
random weights: it times exactly like the real model, and its pictures are noise. Models run
in the device's default precision (half on a GPU, float on the CPU).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np

from phases import PhaseTimer, answer_child, parse_size, parser, run_child, split


def build_sd15(folder: Path) -> None:
    """SD 1.5's component configs with seeded random weights, saved in diffusers layout."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from cvgen.server.core.models.tokenizer import tiny_clip_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2, sample_size=512,
    )
    text = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                                        num_hidden_layers=12, vocab_size=49408, max_position_embeddings=77,
                                        hidden_act="quick_gelu", bos_token_id=0, eos_token_id=1, pad_token_id=1))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tiny_clip_tokenizer(), unet=unet, scheduler=scheduler,
                            safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(folder, safe_serialization=True)


def write_shot(folder: Path, frames: int, width: int, height: int) -> dict[str, str]:
    from cvgen.protocol.images import Image
    from cvgen.server.io.exr import write_exr

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    alpha = np.clip(1.5 - np.hypot((x - width / 2) / (0.25 * width), (y - height / 2) / (0.3 * height)), 0, 1)
    folder.mkdir(parents=True, exist_ok=True)
    for f in range(1, frames + 1):
        plate = rng.uniform(0.02, 0.6, (height, width, 3)).astype(np.float32)
        fg = rng.uniform(0.3, 1.5, (height, width, 3)).astype(np.float32) * alpha[..., None]
        write_exr(folder / f"plate.{f:04d}.exr", Image(np.dstack([plate, np.ones_like(alpha)]).astype(np.float16),
                                                      ("R", "G", "B", "A")))
        write_exr(folder / f"fg.{f:04d}.exr", Image(np.dstack([fg, alpha]).astype(np.float16), ("R", "G", "B", "A")))
    return {"plate": str(folder / "plate.####.exr"), "fg": str(folder / "fg.####.exr")}


def measure(args: argparse.Namespace) -> dict:
    """One run in this process: returns seconds per phase and peak memory."""
    from cvgen.protocol.jobs import JobSpec
    from cvgen.server.core.models import ModelCache, ModelRegistry
    from cvgen.server.jobs.runner import run_job
    from cvgen.server.ops import harmonize

    timer = PhaseTimer(args.device)
    timed = timer.timed
    h = harmonize.Harmonizer
    h.encode, h.decode = timed("vae", h.encode), timed("vae", h.decode)
    h.invert, h.generate = timed("inversion", h.invert), timed("generation", h.generate)
    width, height = parse_size(args.one_size)
    work = Path(tempfile.mkdtemp(prefix="cvgen-bench-"))
    os.environ["CVGEN_CACHE"] = str(work / "cache")  # no inversion cache hits from earlier runs
    models_file = work / "models.toml"
    if args.arch == "sd15":
        build_sd15(work / "sd15")
        models_file.write_text(f'default = "bench"\n[models.bench]\npath = "{work / "sd15"}"\n')
    else:
        models_file.write_text('default = "tiny"\n')
    models = ModelCache(ModelRegistry.load(models_file))
    models.get("", "sd", args.device)  # loaded before the clock starts, as in a warm server
    shot = write_shot(work / "shot", args.one_frames, width, height)
    spec = JobSpec("harmonize", (1, args.one_frames), shot, params={"steps": args.steps, "strength": args.strength,
                                                                    "prompt": "a photo"})
    return timer.measure(lambda: run_job(spec, work / "out", models=models, device=args.device), args.one_frames,
                         args.one_size, rest="io_and_other")


def main() -> None:
    cli = parser(__doc__, ("tiny", "sd15"))
    cli.add_argument("--size", nargs="+", default=["256x256"], help="WIDTHxHEIGHT, several allowed")
    cli.add_argument("--frames", nargs="+", type=int, default=[8, 48], help="shot lengths to compare")
    cli.add_argument("--steps", type=int, default=20)
    cli.add_argument("--strength", type=float, default=0.5)
    args = cli.parse_args()
    if answer_child(args, measure):
        return
    print(f"harmonize, {args.arch} architecture on {args.device}, {args.steps} steps, strength {args.strength}")
    for size in args.size:
        peaks = {}
        for frames in args.frames:
            result = run_child(__file__, ["--arch", args.arch, "--device", args.device, "--steps", str(args.steps),
                                          "--strength", str(args.strength), "--one-frames", str(frames),
                                          "--one-size", size])
            per_frame, shares = result["total_s"] / frames, split(result["per_frame"], ordered=False)
            peaks[frames] = result["peak_bytes"]
            print(f"  {size} x {frames:3d} frames: {per_frame:.3f} s/frame ({shares}); "
                  f"peak memory {result['peak_bytes'] / 2**20:.0f} MiB")
        lengths = sorted(peaks)
        print(f"  {size}: peak memory {lengths[-1]} vs {lengths[0]} frames: {peaks[lengths[-1]] / peaks[lengths[0]]:.2f}x")


if __name__ == "__main__":
    main()
