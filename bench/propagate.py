"""propagate: seconds per frame split into VAE encode, inversion, generation, decode and I/O, and
peak memory for a shot of 1 window against one of 4 windows (goal: within 1.2x).

Runs the real job path (`run_job`: EXR in, op, EXR out) on a synthetic shot, timing the op's own
steps by wrapping them (exclusive times: the VAE encodes inside inversion count as VAE encode).
Each shot runs in a fresh process so peak memory (RSS on the CPU, allocated memory on a GPU)
belongs to that run alone.

  python bench/propagate.py                                   # tiny-svd on the CPU
  python bench/propagate.py --arch svd --device cuda --size 1024x576 --window 14 --steps 25

`--arch svd` builds Stable Video Diffusion img2vid's architecture (spatio-temporal UNet,
temporal-decoder VAE, CLIP ViT-H vision encoder) with random weights: it times like the real
model and its pictures are noise. Models run in the device's default precision (half on a GPU).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np

from phases import PhaseTimer, answer_child, compare_windows, parse_size, parser


def build_svd(folder: Path, window: int) -> None:
    """SVD img2vid's component configs with seeded random weights, saved in diffusers layout."""
    import torch
    from diffusers import (AutoencoderKLTemporalDecoder, EulerDiscreteScheduler, StableVideoDiffusionPipeline,
                           UNetSpatioTemporalConditionModel)
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    unet = UNetSpatioTemporalConditionModel(num_frames=window, sample_size=96)  # diffusers' defaults are SVD's UNet
    vae = AutoencoderKLTemporalDecoder(block_out_channels=(128, 256, 512, 512), latent_channels=4,
                                       down_block_types=("DownEncoderBlock2D",) * 4, layers_per_block=2,
                                       sample_size=768)
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=1280, intermediate_size=5120, projection_dim=1024, num_hidden_layers=32, num_attention_heads=16,
        image_size=224, patch_size=14, hidden_act="gelu"))
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", prediction_type="v_prediction",
        sigma_max=700.0, sigma_min=0.002, steps_offset=1, timestep_spacing="leading",
        timestep_type="continuous", use_karras_sigmas=True,
    )
    pipe = StableVideoDiffusionPipeline(vae=vae, image_encoder=encoder, unet=unet, scheduler=scheduler,
                                        feature_extractor=CLIPImageProcessor())
    pipe.save_pretrained(folder, safe_serialization=True)


def write_shot(folder: Path, frames: int, width: int, height: int) -> dict[str, str]:
    """A drifting gradient with texture (so frames move), and a first frame with a painted patch."""
    from cvgen.protocol.images import Image
    from cvgen.server.io.exr import write_exr

    rng = np.random.default_rng(0)
    texture = rng.uniform(0.0, 0.1, (height, width + frames * 4, 3)).astype(np.float32)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    for f in range(1, frames + 1):
        gradient = 0.05 + 0.5 * (x / width)[..., None] * np.array([0.8, 0.6, 0.4], np.float32)
        rgb = gradient + texture[:, 4 * f : 4 * f + width]
        rgb[: height // 6, : width // 6] = 4.0  # a highlight
        write_exr(folder / f"plate.{f:04d}.exr", Image(np.dstack([rgb, np.ones_like(x)]).astype(np.float16),
                                                      ("R", "G", "B", "A")))
        if f == 1:
            rgb[height // 3 : height // 2, width // 3 : width // 2] = (1.5, 0.3, 0.1)
            write_exr(folder / "edit.exr", Image(np.dstack([rgb, np.ones_like(x)]).astype(np.float16),
                                                 ("R", "G", "B", "A")))
    return {"plate": str(folder / "plate.####.exr"), "edit": str(folder / "edit.exr")}


def measure(args: argparse.Namespace) -> dict:
    """One run in this process: returns seconds per phase and peak memory."""
    from cvgen.protocol.jobs import JobSpec
    from cvgen.server.core.models import ModelCache, ModelRegistry
    from cvgen.server.jobs import runner, shot as shot_module
    from cvgen.server.ops.propagate import Propagator

    timer = PhaseTimer(args.device)
    timed = timer.timed
    p = Propagator
    p.encode_mode, p.clip_embedding = timed("vae_encode", p.encode_mode), timed("clip", p.clip_embedding)
    p.invert, p.generate = timed("inversion", p.invert), timed("generation", p.generate)
    p.decode = timed("decode", p.decode)
    shot_module.FileShot.read = timed("io", shot_module.FileShot.read)
    runner.write_exr = timed("io", runner.write_exr)
    width, height = parse_size(args.one_size)
    work = Path(tempfile.mkdtemp(prefix="cvgen-bench-"))
    os.environ["CVGEN_CACHE"] = str(work / "cache")
    models_file = work / "models.toml"
    if args.arch == "svd":
        build_svd(work / "svd", args.window or 14)
        models_file.write_text(f'default_svd = "bench"\n[models.bench]\nkind = "svd"\npath = "{work / "svd"}"\n')
    else:
        models_file.write_text('default_svd = "tiny-svd"\n')
    models = ModelCache(ModelRegistry.load(models_file))
    models.get("", "svd", args.device)  # loaded before the clock starts, as in a warm server
    shot = write_shot(work / "shot", args.one_frames, width, height)
    spec = JobSpec("propagate", (1, args.one_frames), shot,
                   params={"steps": args.steps, "strength": args.strength, "window": args.window})
    return timer.measure(lambda: runner.run_job(spec, work / "out", models=models, device=args.device),
                         args.one_frames, args.one_size)


def main() -> None:
    cli = parser(__doc__, ("tiny", "svd"))
    cli.add_argument("--size", default="512x288", help="WIDTHxHEIGHT of the plate")
    cli.add_argument("--window", type=int, default=0, help="frames per window (0: the model's own)")
    cli.add_argument("--steps", type=int, default=25)
    cli.add_argument("--strength", type=float, default=0.55)
    args = cli.parse_args()
    if answer_child(args, measure):
        return
    window = args.window or (14 if args.arch == "svd" else 4)
    print(f"propagate, {args.arch} architecture on {args.device}, {args.size}, {window}-frame windows, "
          f"{args.steps} steps, strength {args.strength}")
    compare_windows(__file__, ["--arch", args.arch, "--device", args.device, "--steps", str(args.steps),
                               "--strength", str(args.strength), "--window", str(window)], args.size,
                    lambda windows: 1 + windows * (window - 1))  # windows share one frame


if __name__ == "__main__":
    main()
