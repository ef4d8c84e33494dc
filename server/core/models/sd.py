"""Stable Diffusion 1.x/2.x (kind `sd`): a diffusers folder, or a single `.safetensors` checkpoint.

    [models.sd15]
    path = "/models/stable-diffusion-v1-5"          # model_index.json, unet/, vae/, text_encoder/, ...

    [models.sd21]
    path = "/models/v2-1_768-ema-pruned.safetensors"   # a single-file checkpoint
    config = "/models/stable-diffusion-2-1"         # a diffusers folder of the same architecture
    prediction_type = "v_prediction"                # "epsilon" or "v_prediction"

Every op samples and inverts with DDIM built from the model's own noise schedule (`ddim`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import ModelNotFound
from . import files
from .entry import ModelEntry
from .kind import Kind, LoadedModel, TinyFolder, modules_ready
from .pipeline import PipelineKind
from .tokenizer import tiny_clip_tokenizer

if TYPE_CHECKING:
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
PREDICTION_TYPES = ("epsilon", "v_prediction")
SEED = 0


@dataclasses.dataclass
class SDModel(LoadedModel):
    """A loaded Stable Diffusion model, its parts on one device and in one precision, ready for inference."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler: DDIMScheduler
    prediction_type: str

    def encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        """CLIP embeddings (N, 77, dim), computed exactly as diffusers' pipelines do, so ours match theirs."""
        return encode_prompt(self.tokenizer, self.text_encoder, self.device, prompts)


def encode_prompt(tokenizer: Any, text_encoder: Any, device: torch.device, prompts: list[str]) -> torch.Tensor:
    import torch

    tokens = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length,
                       truncation=True, return_tensors="pt")
    use_mask = getattr(text_encoder.config, "use_attention_mask", False)
    mask = tokens.attention_mask.to(device) if use_mask else None
    with torch.no_grad():
        embeds = text_encoder(tokens.input_ids.to(device), attention_mask=mask)[0]
    return embeds.to(device=device, dtype=text_encoder.dtype)


def ddim(config: Any, prediction_type: str | None = None) -> DDIMScheduler:
    """Every op samples and inverts with DDIM, built from the model's own noise schedule.

    Folders ship older configs (Stable Diffusion 1.4's is PNDM's, with no `clip_sample`, which
    DDIM defaults to on): clamping or thresholding the predicted clean latent is meant for pixel
    models, changes every step and cannot be inverted, so both are off whatever the config says.
    `steps_offset` is 1 as diffusers' Stable Diffusion pipelines make it for every config (the
    oldest lack it, and DDIM's default 0 shifts every timestep), so our steps are diffusers' steps.
    """
    from diffusers import DDIMScheduler

    overrides: dict[str, Any] = {"clip_sample": False, "thresholding": False, "steps_offset": 1}
    if prediction_type:
        overrides["prediction_type"] = prediction_type
    return DDIMScheduler.from_config(config, **overrides)


def load_parts(kind: Kind, entry: ModelEntry, path: Path, networks: dict[str, Any], dtype: torch.dtype) -> dict[str, Any]:
    """Components of a diffusers pipeline folder, one subfolder each; the scheduler only as its config.

    Weights load only from safetensors (a .bin is a pickle, which can run code when loaded).
    """
    from diffusers import DDIMScheduler
    from transformers import CLIPTokenizer

    parts: dict[str, Any] = {}
    for part in COMPONENTS:
        try:
            if part == "scheduler":
                parts[part] = DDIMScheduler.load_config(path, subfolder=part, local_files_only=True)
            elif part == "tokenizer":
                parts[part] = CLIPTokenizer.from_pretrained(path, subfolder=part, local_files_only=True)
            else:
                parts[part] = networks[part].from_pretrained(path, subfolder=part, local_files_only=True,
                                                             torch_dtype=dtype, use_safetensors=True)
        except Exception as exc:  # diffusers/transformers raise many types; the artist needs one sentence
            if files.pickle_only(path / part):
                raise kind.broken(entry, f"its {part}/ has only pickle (.bin) weights, which cvgen does not load "
                                  "because a pickle can run code; convert them to .safetensors") from exc
            raise kind.load_error(entry, f"its {part}/", exc) from exc
    return parts


class StableDiffusion(PipelineKind):
    name = "sd"
    label = "Stable Diffusion"
    expected = ("a diffusers folder with model_index.json and unet/, vae/, text_encoder/, tokenizer/, "
                "scheduler/ or a .safetensors checkpoint")
    options = {"config": "path", "prediction_type": PREDICTION_TYPES}
    components = COMPONENTS
    networks = ("unet", "vae", "text_encoder")
    unet_class = "UNet2DConditionModel"

    def validate(self, where: str, path: Path, options: dict[str, Any]) -> None:
        if "config" in options and path.suffix != ".safetensors":
            raise ModelNotFound(f"{where}: `config` is only used with a .safetensors checkpoint, and {path} is not one.")

    def recognise(self, path: Path) -> bool:
        return super().recognise(path) and (path / "text_encoder").is_dir()

    def check(self, entry: ModelEntry) -> None:
        if entry.path.suffix == ".safetensors" or entry.path.suffix in files.PICKLE_SUFFIXES:
            config = entry.option("config")
            if config is None and entry.path.suffix == ".safetensors":
                raise self.broken(entry, "offline single-file checkpoints need "
                                  "`config = \"<diffusers folder of the same architecture>\"` in the models file")
            self.require_file(entry)
            if not (config / "model_index.json").is_file():
                raise self.broken(entry, "its `config` folder has no model_index.json", path=config)
            return
        super().check(entry)

    def weight_files(self, entry: ModelEntry) -> list[Path]:
        return files.weight_files(entry.path) if entry.path.is_file() else [
            file for part in ("unet", "vae", "text_encoder") for file in files.weight_files(entry.path / part)]

    def defining_files(self, entry: ModelEntry) -> dict[str, Path]:
        if entry.path.is_file():
            config = entry.option("config")
            return {f"checkpoint/{entry.path.name}": entry.path,
                    **(files.folder_files(config, "config/") if config else {})}
        return files.folder_files(entry.path)

    def load(self, entry: ModelEntry, device: torch.device, dtype: torch.dtype) -> SDModel:
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel

        prediction_type = entry.option("prediction_type")
        if entry.path.is_file():
            parts = self._load_single_file(entry, dtype)
        else:
            networks = {"unet": UNet2DConditionModel, "vae": AutoencoderKL, "text_encoder": CLIPTextModel}
            parts = load_parts(self, entry, entry.path, networks, dtype)
        parts["scheduler"] = ddim(parts["scheduler"], prediction_type)
        modules_ready(parts["unet"], parts["vae"], parts["text_encoder"], device=device)
        return SDModel(entry.name, device, dtype, self.fingerprint(entry, f"prediction_type={prediction_type}"),
                       prediction_type=parts["scheduler"].config.prediction_type, **parts)

    def _load_single_file(self, entry: ModelEntry, dtype: torch.dtype) -> dict[str, Any]:
        from diffusers import StableDiffusionPipeline

        try:
            pipe = StableDiffusionPipeline.from_single_file(
                str(entry.path), config=str(entry.option("config")), local_files_only=True, torch_dtype=dtype,
                safety_checker=None, feature_extractor=None, requires_safety_checker=False,
            )
        except Exception as exc:  # a damaged file or one for another architecture: say which file
            raise self.broken(entry, "it is damaged or does not match the architecture of "
                              f"its config {entry.option('config')}", exc) from exc
        return {**{part: getattr(pipe, part) for part in COMPONENTS}, "scheduler": pipe.scheduler.config}

    def build_tiny(self, folder: Path, tiny: TinyFolder) -> None:
        import torch
        from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

        torch.manual_seed(SEED)
        unet = UNet2DConditionModel(
            block_out_channels=(32, 64), layers_per_block=1, sample_size=32, in_channels=4, out_channels=4,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32, attention_head_dim=8, norm_num_groups=16,
        )
        vae = AutoencoderKL(
            block_out_channels=(16, 16, 16, 16), in_channels=3, out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            latent_channels=4, layers_per_block=1, norm_num_groups=8, sample_size=256,
        )
        scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                  clip_sample=False, set_alpha_to_one=False, steps_offset=1)
        pipe = StableDiffusionPipeline(
            vae=vae, text_encoder=tiny_text_encoder(), tokenizer=tiny_clip_tokenizer(), unet=unet,
            scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
        pipe.save_pretrained(folder, safe_serialization=True)

    def probe(self, model: SDModel) -> str:
        import torch

        latents = torch.zeros(1, model.unet.config.in_channels, 8, 8, device=model.device, dtype=model.dtype)
        with torch.no_grad():
            out = model.unet(latents, 10, encoder_hidden_states=model.encode_prompt([""])).sample
        return (f"UNet sample size {model.unet.config.sample_size}, prediction {model.prediction_type}, "
                f"VAE scale {model.vae.config.scaling_factor}; one UNet step on 8x8 latents: {tuple(out.shape)}")


def tiny_text_encoder() -> Any:
    """The tiny CLIP text encoder the tiny SD and the tiny video model share (seeded by the caller)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=32, intermediate_size=37,
        layer_norm_eps=1e-05, num_attention_heads=4, num_hidden_layers=2, vocab_size=1000,
        max_position_embeddings=77,
    ))


KIND = StableDiffusion()


def load_sd_model(entry: ModelEntry, device: str | None = None, dtype: str | None = None) -> SDModel:
    """Load an SD entry onto a device (see `loading.load`); kept for callers that know the kind."""
    from .loading import load

    return load(entry, device, dtype)
