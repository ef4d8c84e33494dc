"""The `svd` kind against real files: the tiny Stable Video Diffusion saved, loaded and run by diffusers."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from support import load_error, models_file

from cvgen.server.core.models import KINDS, ModelRegistry, ensure_builtin, load
from cvgen.server.core.models.svd import SVDModel, tiny_parts
from cvgen.server.errors import ModelNotFound

UNET_WEIGHTS = Path("unet") / "diffusion_pytorch_model.safetensors"


pytestmark = pytest.mark.usefixtures("no_user_models")


@pytest.fixture(scope="module")
def tiny_folder() -> Path:
    return ensure_builtin("svd")


@pytest.fixture(scope="module")
def loaded(tiny_folder: Path) -> SVDModel:
    return load(ModelRegistry.load().entry("tiny-svd"))


def unet_output(unet: torch.nn.Module) -> torch.Tensor:
    """The UNet's prediction for 3 frames of fixed noise: equal outputs mean equal weights."""
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 3, 8, 8, 8, generator=generator)
    image = torch.randn(1, 1, 32, generator=generator)
    time_ids = torch.tensor([[6.0, 127.0, 0.02]])
    with torch.no_grad():
        return unet(latents, 1.5, encoder_hidden_states=image, added_time_ids=time_ids).sample


def first_frame() -> Image.Image:
    pixels = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def test_the_saved_tiny_model_is_the_in_memory_one(loaded: SVDModel) -> None:
    parts = tiny_parts()
    assert loaded.window == 4 and loaded.unet.config.num_frames == 4
    # Same weights (read from disk, so differently aligned in memory): equal to float rounding.
    assert torch.equal(loaded.unet.state_dict()["conv_in.weight"], parts["unet"].state_dict()["conv_in.weight"])
    torch.testing.assert_close(unet_output(loaded.unet), unet_output(parts["unet"]), rtol=1e-5, atol=1e-5)
    pixels = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        latents = loaded.vae.encode(pixels).latent_dist.mean
        torch.testing.assert_close(latents, parts["vae"].encode(pixels).latent_dist.mean, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(loaded.vae.decode(latents, num_frames=2).sample,
                                   parts["vae"].decode(latents, num_frames=2).sample, rtol=1e-5, atol=1e-5)
        image = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(2))
        torch.testing.assert_close(loaded.image_encoder(image).image_embeds,
                                   parts["image_encoder"](image).image_embeds, rtol=1e-5, atol=1e-5)
    assert type(loaded.scheduler).__name__ == "EulerDiscreteScheduler"
    assert loaded.scheduler.config.prediction_type == "v_prediction" and loaded.scheduler.config.use_karras_sigmas
    assert all(not module.training for module in loaded.modules())
    assert not any(p.requires_grad for module in loaded.modules() for p in module.parameters())


def test_diffusers_pipeline_gives_the_same_latents_on_the_loaded_and_the_in_memory_model(loaded: SVDModel) -> None:
    from diffusers import StableVideoDiffusionPipeline

    def latents(parts: dict) -> torch.Tensor:
        pipe = StableVideoDiffusionPipeline(**parts)
        pipe.set_progress_bar_config(disable=True)
        return pipe(first_frame(), height=16, width=16, num_frames=3, num_inference_steps=2, decode_chunk_size=3,
                    output_type="latent", generator=torch.Generator().manual_seed(0)).frames

    parts = {part: getattr(loaded, part) for part in ("unet", "vae", "image_encoder", "feature_extractor", "scheduler")}
    ours, reference = latents(parts), latents(tiny_parts())
    assert ours.shape == (1, 3, 4, 8, 8)
    # sigma_max 700 scales the start noise, so float rounding grows to ~1e-4 over two steps.
    torch.testing.assert_close(ours, reference, rtol=1e-3, atol=1e-3)
    assert not torch.allclose(ours[:, 0], ours[:, 2])  # frames differ: the temporal path ran


def test_a_models_file_entry_for_a_copy_loads_the_same_weights(loaded: SVDModel, tiny_folder: Path,
                                                               tmp_path: Path) -> None:
    copy = shutil.copytree(tiny_folder, tmp_path / "svd-copy")
    model = load(ModelRegistry.load(models_file(tmp_path, "svd", copy)).entry("mine", kind="svd"))
    assert isinstance(model, SVDModel) and model.name == "mine" and model.window == 4
    assert torch.equal(unet_output(model.unet), unet_output(loaded.unet))
    assert model.fingerprint == loaded.fingerprint
    assert "one UNet step on 2 frames" in KINDS["svd"].probe(model)


def test_a_missing_folder_is_named(tmp_path: Path) -> None:
    message = load_error(tmp_path, "svd", tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in message and "does not exist" in message


def test_a_missing_part_is_named(tiny_folder: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(tiny_folder, tmp_path / "svd")
    shutil.rmtree(copy / "feature_extractor")
    message = load_error(tmp_path, "svd", copy)
    assert str(copy) in message and "lacks feature_extractor/" in message
    shutil.copytree(tiny_folder / "feature_extractor", copy / "feature_extractor")
    (copy / "image_encoder" / "config.json").unlink()
    message = load_error(tmp_path, "svd", copy)
    assert str(copy / "image_encoder") in message and "lacks config.json" in message


def test_pickled_weights_are_refused(tiny_folder: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(tiny_folder, tmp_path / "svd")
    (copy / UNET_WEIGHTS).rename(copy / "unet" / "diffusion_pytorch_model.bin")
    message = load_error(tmp_path, "svd", copy)
    assert str(copy / "unet") in message and "pickle" in message


def test_a_stable_diffusion_folder_is_named_as_such(tmp_path: Path) -> None:
    sd = ensure_builtin("sd")
    message = load_error(tmp_path, "svd", sd)
    assert str(sd) in message and 'looks like a Stable Diffusion model (kind = "sd")' in message


def test_asking_for_another_kind_names_both() -> None:
    with pytest.raises(ModelNotFound, match=r"'tiny-svd' is a Stable Video Diffusion model \(kind 'svd'\).*"
                                            r"Stable Diffusion model \(kind 'sd'\)"):
        ModelRegistry.load().entry("tiny-svd", kind="sd")
