"""The `t2v` kind against real files: the tiny text-to-video model saved, loaded and run by diffusers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from support import load_error, models_file

from cvgen.server.core.models import KINDS, ModelRegistry, ensure_builtin, load
from cvgen.server.core.models.t2v import T2VModel, tiny_unet
from cvgen.server.errors import ModelNotFound

UNET_WEIGHTS = Path("unet") / "diffusion_pytorch_model.safetensors"


pytestmark = pytest.mark.usefixtures("no_user_models")


@pytest.fixture(scope="module")
def tiny_folder() -> Path:
    return ensure_builtin("t2v")


@pytest.fixture(scope="module")
def loaded(tiny_folder: Path) -> T2VModel:
    return load(ModelRegistry.load().entry("tiny-t2v"))


def unet_output(unet: torch.nn.Module) -> torch.Tensor:
    """The UNet's prediction for 3 frames of fixed noise: equal outputs mean equal weights."""
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, 3, 8, 8, generator=generator)
    embeds = torch.randn(1, 77, 32, generator=generator)
    with torch.no_grad():
        return unet(latents, 10, encoder_hidden_states=embeds).sample


def test_the_saved_tiny_model_is_the_in_memory_one_with_the_tiny_sds_parts(loaded: T2VModel) -> None:
    reference = tiny_unet()
    assert torch.equal(loaded.unet.state_dict()["conv_in.weight"], reference.state_dict()["conv_in.weight"])
    torch.testing.assert_close(unet_output(loaded.unet), unet_output(reference), rtol=1e-5, atol=1e-5)
    sd_folder, folder = ensure_builtin("sd"), ensure_builtin("t2v")
    for part in ("vae", "text_encoder", "tokenizer", "scheduler"):
        for file in (sd_folder / part).iterdir():
            assert (folder / part / file.name).read_bytes() == file.read_bytes(), f"{part}/{file.name}"
    sd = load(ModelRegistry.load().entry("tiny", kind="sd"))
    assert all(torch.equal(value, sd.vae.state_dict()[key]) for key, value in loaded.vae.state_dict().items())
    prompts = ["a red car in the rain", ""]
    assert torch.equal(loaded.encode_prompt(prompts), sd.encode_prompt(prompts))
    assert type(loaded.scheduler).__name__ == "DDIMScheduler" and loaded.scheduler.config.steps_offset == 1
    assert loaded.window is None
    assert all(not module.training for module in loaded.modules())
    assert not any(p.requires_grad for module in loaded.modules() for p in module.parameters())


def test_diffusers_pipeline_gives_the_same_latents_on_the_loaded_and_the_in_memory_model(loaded: T2VModel) -> None:
    from diffusers import DDIMScheduler
    from diffusers.pipelines.deprecated.text_to_video_synthesis import TextToVideoSDPipeline

    def sample(unet: torch.nn.Module, scheduler: DDIMScheduler) -> torch.Tensor:
        pipe = TextToVideoSDPipeline(vae=loaded.vae, text_encoder=loaded.text_encoder, tokenizer=loaded.tokenizer,
                                     unet=unet, scheduler=scheduler)
        pipe.set_progress_bar_config(disable=True)
        start = torch.randn(1, 4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
        return pipe("a boat", num_frames=3, height=64, width=64, num_inference_steps=2, latents=start,
                    output_type="latent").frames

    sd_scheduler = DDIMScheduler.from_pretrained(ensure_builtin("sd"), subfolder="scheduler")
    ours, reference = sample(loaded.unet, loaded.scheduler), sample(tiny_unet(), sd_scheduler)
    assert ours.shape == (1, 4, 3, 8, 8)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(ours[:, :, 0], ours[:, :, 2])


def test_a_models_file_entry_for_a_copy_loads_the_same_weights(loaded: T2VModel, tiny_folder: Path,
                                                               tmp_path: Path) -> None:
    copy = shutil.copytree(tiny_folder, tmp_path / "t2v-copy")
    model = load(ModelRegistry.load(models_file(tmp_path, "t2v", copy)).entry("mine", kind="t2v"))
    assert isinstance(model, T2VModel) and model.name == "mine"
    assert torch.equal(unet_output(model.unet), unet_output(loaded.unet))
    assert "one UNet step on 2 frames" in KINDS["t2v"].probe(model)


def test_window_comes_from_the_unet_config_when_it_says(tiny_folder: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(tiny_folder, tmp_path / "t2v-24")
    config = json.loads((copy / "unet" / "config.json").read_text())
    (copy / "unet" / "config.json").write_text(json.dumps({**config, "num_frames": 24}))
    assert load(ModelRegistry.load(models_file(tmp_path, "t2v", copy)).entry("mine")).window == 24


def test_a_missing_folder_is_named(tmp_path: Path) -> None:
    message = load_error(tmp_path, "t2v", tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in message and "does not exist" in message


def test_a_missing_part_is_named(tiny_folder: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(tiny_folder, tmp_path / "t2v")
    shutil.rmtree(copy / "tokenizer")
    message = load_error(tmp_path, "t2v", copy)
    assert str(copy) in message and "lacks tokenizer/" in message
    shutil.copytree(tiny_folder / "tokenizer", copy / "tokenizer")
    (copy / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    message = load_error(tmp_path, "t2v", copy)
    assert str(copy / "vae") in message and "no .safetensors weights" in message


def test_pickled_weights_are_refused(tiny_folder: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(tiny_folder, tmp_path / "t2v")
    (copy / UNET_WEIGHTS).rename(copy / "unet" / "diffusion_pytorch_model.bin")
    message = load_error(tmp_path, "t2v", copy)
    assert str(copy / "unet") in message and "pickle" in message


def test_a_stable_diffusion_folder_is_named_as_such(tmp_path: Path) -> None:
    sd = ensure_builtin("sd")
    message = load_error(tmp_path, "t2v", sd)
    assert str(sd) in message and "is a UNet2DConditionModel, not a UNet3DConditionModel" in message
    assert 'looks like a Stable Diffusion model (kind = "sd")' in message


def test_asking_for_another_kind_names_both() -> None:
    with pytest.raises(ModelNotFound, match=r"'tiny-t2v' is a text-to-video model \(kind 't2v'\).*"
                                            r"Stable Diffusion model \(kind 'sd'\)"):
        ModelRegistry.load().entry("tiny-t2v", kind="sd")
