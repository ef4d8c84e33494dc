"""smooth: seconds per frame split into VAE, image inversion, video inversion, video sampling and
I/O, and peak memory for a shot of 1 window against one of 4 windows (goal: within 1.2x).

Runs the real job path (`run_job`: EXR in, op, EXR out) on a synthetic flickering shot, timing the
op's own steps by wrapping them (exclusive times): `Smoother.encode` and `Smoother.decode` are the
VAE, `ddim_invert` on a frame batch (F, C, h, w) is the image inversion and on a clip
(1, C, F, h, w) the video inversion, `Smoother.sample` is video sampling, EXR reads and writes are
I/O; "other" is the rest (prompt embeddings, colour, cross-fade bookkeeping, the job's own work).
Each shot runs in a fresh process so peak memory (RSS on the CPU, allocated memory on a GPU)
belongs to that run alone.

The bench runs `mix` 0.25 (METHODS.md's value for prompt edits) so that both inversions run; the
op's default, 1, runs the image inversion only.

  python bench/smooth.py                                      # tiny + tiny-t2v on the CPU, ~20 s on 2 cores
  python bench/smooth.py --arch zeroscope --device cuda --size 576x320 --window 24 --steps 50

`--arch zeroscope` builds a ZeroScope 576w-size UNet3D and SD 1.5's UNet, VAE and CLIP text encoder
with random weights: it times like the real models and its pictures are noise. Models run in the
device's default precision (half on a GPU).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np

from phases import PhaseTimer, answer_child, compare_windows, parse_size, parser


def build_zeroscope(folder: Path) -> None:
    """SD 1.5's image model and a ZeroScope 576w-size text-to-video model with seeded random
    weights, saved in diffusers layout (`sd` and `t2v` subfolders); they share VAE, text encoder
    and schedule, as the real pair does."""
    import torch
    from diffusers import (AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, TextToVideoSDPipeline,
                           UNet2DConditionModel, UNet3DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), latent_channels=4, layers_per_block=2,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        sample_size=512)
    text = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                        num_attention_heads=12, max_position_embeddings=77, projection_dim=768))
    from cvgen.server.core.models.tokenizer import tiny_clip_tokenizer
    tokenizer: CLIPTokenizer = tiny_clip_tokenizer()
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    image_unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)  # diffusers' defaults are SD 1.5's
    video_unet = UNet3DConditionModel(sample_size=64, cross_attention_dim=1024, attention_head_dim=64)
    # ZeroScope's text encoder is OpenCLIP ViT-H (1024 wide); the pair must share latents and schedule,
    # not the text encoder, so the video model gets its own
    video_text = CLIPTextModel(CLIPTextConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
                                              num_attention_heads=16, max_position_embeddings=77,
                                              projection_dim=1024))
    StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=image_unet, scheduler=scheduler,
                            safety_checker=None, feature_extractor=None, requires_safety_checker=False
                            ).save_pretrained(folder / "sd", safe_serialization=True)
    TextToVideoSDPipeline(vae=vae, text_encoder=video_text, tokenizer=tokenizer, unet=video_unet,
                          scheduler=scheduler).save_pretrained(folder / "t2v", safe_serialization=True)


def write_shot(folder: Path, frames: int, width: int, height: int) -> dict[str, str]:
    """A drifting gradient with texture (so frames move) and a per-frame exposure flicker, as a
    frame-by-frame result has."""
    from cvgen.protocol.images import Image
    from cvgen.server.io.exr import write_exr

    rng = np.random.default_rng(0)
    texture = rng.uniform(0.0, 0.1, (height, width + frames * 4, 3)).astype(np.float32)
    flicker = rng.uniform(0.85, 1.15, frames).astype(np.float32)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    for f in range(1, frames + 1):
        gradient = 0.05 + 0.5 * (x / width)[..., None] * np.array([0.8, 0.6, 0.4], np.float32)
        rgb = (gradient + texture[:, 4 * f : 4 * f + width]) * flicker[f - 1]
        rgb[: height // 6, : width // 6] = 4.0  # a highlight
        write_exr(folder / f"plate.{f:04d}.exr", Image(np.dstack([rgb, np.ones_like(x)]).astype(np.float16),
                                                      ("R", "G", "B", "A")))
    return {"plate": str(folder / "plate.####.exr")}


def measure(args: argparse.Namespace) -> dict:
    """One run in this process: returns seconds per phase and peak memory."""
    from cvgen.protocol.jobs import JobSpec
    from cvgen.server.core import inversion
    from cvgen.server.core.models import ModelCache, ModelRegistry
    from cvgen.server.jobs import runner, shot as shot_module
    from cvgen.server.ops.smooth import Smoother

    timer = PhaseTimer(args.device)
    timed = timer.timed
    s = Smoother
    s.encode, s.decode, s.sample = timed("vae", s.encode), timed("vae", s.decode), timed("video_sampling", s.sample)
    # smooth's mixed_inversion imports ddim_invert from the module at call time, so this wrapper is what it runs
    inversion.ddim_invert = timed(lambda eps, scheduler, z0, *a, **kw: "video_inversion" if z0.ndim == 5
                                  else "image_inversion", inversion.ddim_invert)
    shot_module.FileShot.read = timed("io", shot_module.FileShot.read)
    runner.write_exr = timed("io", runner.write_exr)
    width, height = parse_size(args.one_size)
    work = Path(tempfile.mkdtemp(prefix="cvgen-bench-"))
    os.environ["CVGEN_CACHE"] = str(work / "cache")
    models_file = work / "models.toml"
    if args.arch == "zeroscope":
        build_zeroscope(work / "zs")
        models_file.write_text(f'default_sd = "bench-sd"\ndefault_t2v = "bench-t2v"\n'
                               f'[models.bench-sd]\nkind = "sd"\npath = "{work / "zs" / "sd"}"\n'
                               f'[models.bench-t2v]\nkind = "t2v"\npath = "{work / "zs" / "t2v"}"\n')
    else:
        models_file.write_text('default_sd = "tiny"\ndefault_t2v = "tiny-t2v"\n')
    models = ModelCache(ModelRegistry.load(models_file))
    models.get("", "sd", args.device)  # loaded before the clock starts, as in a warm server
    models.get("", "t2v", args.device)
    shot = write_shot(work / "shot", args.one_frames, width, height)
    spec = JobSpec("smooth", (1, args.one_frames), shot,
                   params={"prompt": "a calm evening street", "steps": args.steps, "strength": args.strength,
                           "mix": args.mix, "window": args.window, "overlap": args.overlap})
    return timer.measure(lambda: runner.run_job(spec, work / "out", models=models, device=args.device),
                         args.one_frames, args.one_size)


def main() -> None:
    cli = parser(__doc__, ("tiny", "zeroscope"))
    cli.add_argument("--size", default="128x72", help="WIDTHxHEIGHT of the plate")
    cli.add_argument("--window", type=int, default=8, help="frames per window (0: the video model's own)")
    cli.add_argument("--overlap", type=int, default=2)
    cli.add_argument("--steps", type=int, default=10)
    cli.add_argument("--strength", type=float, default=1.0)
    cli.add_argument("--mix", type=float, default=0.25)
    args = cli.parse_args()
    if answer_child(args, measure):
        return
    window = args.window or 8  # the tiny t2v and ZeroScope's config name no clip length: the op's default
    print(f"smooth, {args.arch} architecture on {args.device}, {args.size}, {window}-frame windows overlapping "
          f"by {args.overlap}, {args.steps} steps, strength {args.strength}, mix {args.mix}")
    compare_windows(__file__, ["--arch", args.arch, "--device", args.device, "--steps", str(args.steps),
                               "--strength", str(args.strength), "--mix", str(args.mix), "--window", str(window),
                               "--overlap", str(args.overlap)], args.size,
                    lambda windows: window + (windows - 1) * (window - args.overlap))  # neighbours share `overlap`


if __name__ == "__main__":
    main()
