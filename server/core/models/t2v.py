"""Text to video with a UNet3D (kind `t2v`): a diffusers folder in ZeroScope / ModelScope layout.

    [models.zeroscope]
    kind = "t2v"
    path = "/models/zeroscope_v2_576w"     # model_index.json, unet/ (UNet3DConditionModel), vae/,
                                           # text_encoder/, tokenizer/, scheduler/

These models are Stable Diffusion 1.5 with temporal layers: the same VAE latent space, CLIP text
encoder and noise schedule. So the parts load through `sd.load_parts` with only the UNet class
swapped, prompts encode with `sd.encode_prompt`, and every op samples and inverts with DDIM from
the model's own schedule (`sd.ddim`), exactly as for an SD model.

`window` is the clip length the model suggests: the `num_frames` of its unet/config.json when a
folder says so (diffusers' UNet3D config has no such field, so ZeroScope and ModelScope folders do
not), else None and the op decides.

The tiny built-in is the tiny SD's VAE, text encoder, tokenizer and scheduler (copied files, so
bit-identical) with a tiny UNet3D from docs/TINY_MODELS.md.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .entry import ModelEntry
from .kind import LoadedModel, TinyFolder, modules_ready
from .files import read_config
from .pipeline import PipelineKind
from .sd import SEED, ddim, encode_prompt, load_parts

if TYPE_CHECKING:
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet3DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
NETWORKS = ("unet", "vae", "text_encoder")
#: Parts the tiny built-in takes from the tiny SD unchanged: ZeroScope shares SD 1.5's.
SHARED_WITH_SD = ("vae", "text_encoder", "tokenizer", "scheduler")
UNET_CLASS = "UNet3DConditionModel"


@dataclasses.dataclass
class T2VModel(LoadedModel):
    """A loaded text-to-video model, its parts on one device and in one precision, ready for inference."""

    unet: UNet3DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler: DDIMScheduler
    window: int | None

    def encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        """CLIP embeddings (N, 77, dim), computed as diffusers' pipelines do (shared with SD)."""
        return encode_prompt(self.tokenizer, self.text_encoder, self.device, prompts)


class TextToVideo(PipelineKind):
    name = "t2v"
    label = "text-to-video"
    expected = (f"a diffusers text-to-video folder (ZeroScope/ModelScope layout) with model_index.json and unet/ "
                f"({UNET_CLASS}), vae/, text_encoder/, tokenizer/, scheduler/")
    components = COMPONENTS
    networks = NETWORKS
    unet_class = UNET_CLASS

    def load(self, entry: ModelEntry, device: torch.device, dtype: torch.dtype) -> T2VModel:
        from diffusers import AutoencoderKL, UNet3DConditionModel
        from transformers import CLIPTextModel

        networks = {"unet": UNet3DConditionModel, "vae": AutoencoderKL, "text_encoder": CLIPTextModel}
        parts = load_parts(self, entry, entry.path, networks, dtype)
        parts["scheduler"] = ddim(parts["scheduler"])
        modules_ready(parts["unet"], parts["vae"], parts["text_encoder"], device=device)
        window = read_config(entry.path / "unet" / "config.json").get("num_frames")
        return T2VModel(entry.name, device, dtype, self.fingerprint(entry),
                        window=window if isinstance(window, int) and window > 0 else None, **parts)

    def build_tiny(self, folder: Path, tiny: TinyFolder) -> None:
        import diffusers

        sd = tiny("sd")
        for part in SHARED_WITH_SD:
            shutil.copytree(sd / part, folder / part)
        tiny_unet().save_pretrained(folder / "unet", safe_serialization=True)
        index = {
            "_class_name": "TextToVideoSDPipeline", "_diffusers_version": diffusers.__version__,
            "scheduler": ["diffusers", "DDIMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", UNET_CLASS],
            "vae": ["diffusers", "AutoencoderKL"],
        }
        (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")

    def probe(self, model: T2VModel) -> str:
        import torch

        frames = 2
        latents = torch.zeros(1, model.unet.config.in_channels, frames, 8, 8, device=model.device, dtype=model.dtype)
        with torch.no_grad():
            out = model.unet(latents, 10, encoder_hidden_states=model.encode_prompt([""])).sample
        return (f"window {model.window or 'not set'}, prediction {model.scheduler.config.prediction_type}, "
                f"VAE scale {model.vae.config.scaling_factor}; one UNet step on {frames} frames of 8x8 latents: "
                f"{tuple(out.shape)}")


def tiny_unet() -> Any:
    """The tiny built-in's UNet3D with seeded random weights (its other parts are the tiny SD's files)."""
    import torch
    from diffusers import UNet3DConditionModel

    torch.manual_seed(SEED)
    return UNet3DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"), up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=32,
    ).eval()


KIND = TextToVideo()
