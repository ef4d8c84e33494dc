"""Stable Video Diffusion, image to video (kind `svd`): a diffusers `StableVideoDiffusionPipeline` folder.

    [models.svd]
    kind = "svd"
    path = "/models/stable-video-diffusion-img2vid-xt"   # model_index.json, unet/, vae/, image_encoder/,
                                                         # feature_extractor/, scheduler/

The scheduler is the folder's own `EulerDiscreteScheduler` (SVD is a continuous-time v-prediction
model whose sigmas, Karras spacing and `timestep = 0.25 * log(sigma)` conditioning live in that
config; DDIM from its betas would be a different sampler). `window` is the number of frames the
UNet was trained on (its config's `num_frames`: 14 for SVD, 25 for SVD-XT): ops generate longer
clips window by window.

The tiny built-in follows docs/TINY_MODELS.md. Its CLIP image encoder takes 224 x 224 images, as
the real one does (diffusers' pipeline resizes PIL and numpy images to 224 before CLIP), with
32-pixel patches so a forward pass is 49 tokens; its window is 4 frames, so a clip of 6 to 8 frames
already spans several windows in a test.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .entry import ModelEntry
from .kind import LoadedModel, TinyFolder, modules_ready
from .pipeline import PipelineKind
from .sd import SEED

if TYPE_CHECKING:
    import torch
    from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler, UNetSpatioTemporalConditionModel
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

NETWORKS = ("unet", "vae", "image_encoder")
COMPONENTS = (*NETWORKS, "feature_extractor", "scheduler")
UNET_CLASS = "UNetSpatioTemporalConditionModel"
TINY_WINDOW = 4


@dataclasses.dataclass
class SVDModel(LoadedModel):
    """A loaded Stable Video Diffusion model, ready for inference on one device in one precision."""

    unet: UNetSpatioTemporalConditionModel
    vae: AutoencoderKLTemporalDecoder
    image_encoder: CLIPVisionModelWithProjection
    feature_extractor: CLIPImageProcessor
    scheduler: EulerDiscreteScheduler
    window: int


class StableVideoDiffusion(PipelineKind):
    name = "svd"
    label = "Stable Video Diffusion"
    expected = ("a diffusers StableVideoDiffusionPipeline folder with model_index.json and unet/ "
                f"({UNET_CLASS}), vae/, image_encoder/, feature_extractor/, scheduler/")
    components = COMPONENTS
    networks = NETWORKS
    unet_class = UNET_CLASS

    def load(self, entry: ModelEntry, device: torch.device, dtype: torch.dtype) -> SVDModel:
        from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler, UNetSpatioTemporalConditionModel
        from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

        path = entry.path
        loaders = {
            "unet": lambda: UNetSpatioTemporalConditionModel.from_pretrained(
                path, subfolder="unet", local_files_only=True, torch_dtype=dtype, use_safetensors=True),
            "vae": lambda: AutoencoderKLTemporalDecoder.from_pretrained(
                path, subfolder="vae", local_files_only=True, torch_dtype=dtype, use_safetensors=True),
            "image_encoder": lambda: CLIPVisionModelWithProjection.from_pretrained(
                path, subfolder="image_encoder", local_files_only=True, dtype=dtype, use_safetensors=True),
            "feature_extractor": lambda: CLIPImageProcessor.from_pretrained(
                path, subfolder="feature_extractor", local_files_only=True),
            "scheduler": lambda: EulerDiscreteScheduler.from_pretrained(
                path, subfolder="scheduler", local_files_only=True),
        }
        parts: dict[str, Any] = {}
        for part, loader in loaders.items():
            try:
                parts[part] = loader()
            except Exception as exc:  # diffusers/transformers raise many types; the artist needs one sentence
                raise self.load_error(entry, f"its {part}/", exc) from exc
        modules_ready(parts["unet"], parts["vae"], parts["image_encoder"], device=device)
        return SVDModel(entry.name, device, dtype, self.fingerprint(entry),
                        window=int(parts["unet"].config.num_frames), **parts)

    def build_tiny(self, folder: Path, tiny: TinyFolder) -> None:
        from diffusers import StableVideoDiffusionPipeline

        StableVideoDiffusionPipeline(**tiny_parts()).save_pretrained(folder, safe_serialization=True)

    def probe(self, model: SVDModel) -> str:
        import torch

        unet = model.unet
        frames = 2
        latents = torch.zeros(1, frames, unet.config.in_channels, 8, 8, device=model.device, dtype=model.dtype)
        image = torch.zeros(1, 1, unet.config.cross_attention_dim, device=model.device, dtype=model.dtype)
        time_ids = torch.tensor([[6.0, 127.0, 0.02]], device=model.device, dtype=model.dtype)
        with torch.no_grad():
            out = unet(latents, 1.0, encoder_hidden_states=image, added_time_ids=time_ids).sample
        return (f"window {model.window} frames, prediction {model.scheduler.config.prediction_type}, "
                f"image encoder {model.image_encoder.config.image_size}px; one UNet step on {frames} frames "
                f"of 8x8 latents: {tuple(out.shape)}")


def tiny_parts() -> dict[str, Any]:
    """The tiny built-in's components, with seeded random weights: the same objects on every call."""
    import torch
    from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler, UNetSpatioTemporalConditionModel
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(SEED)
    unet = UNetSpatioTemporalConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=8, out_channels=4,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        cross_attention_dim=32, num_attention_heads=(2, 4), projection_class_embeddings_input_dim=96,
        addition_time_embed_dim=32, num_frames=TINY_WINDOW,
    )
    vae = AutoencoderKLTemporalDecoder(block_out_channels=[32, 64], down_block_types=["DownEncoderBlock2D"] * 2,
                                       latent_channels=4, layers_per_block=1)
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, projection_dim=32, num_hidden_layers=2, num_attention_heads=4, image_size=224,
        intermediate_size=37, patch_size=32,
    ))
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", prediction_type="v_prediction",
        sigma_max=700.0, sigma_min=0.002, steps_offset=1, timestep_spacing="leading",
        timestep_type="continuous", use_karras_sigmas=True,
    )
    for module in (unet, vae, image_encoder):
        module.eval()
    return {"unet": unet, "vae": vae, "image_encoder": image_encoder,
            "feature_extractor": CLIPImageProcessor(), "scheduler": scheduler}


KIND = StableVideoDiffusion()
