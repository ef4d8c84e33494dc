"""The `controlnet` kind against real files: the tiny ControlNet saved to disk, models files, broken folders.

The tiny ControlNet is built once per test run (in the session's cache) from the tiny SD's UNet;
every test reads no user models file.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from support import models_file

from cvgen.server.core.models import KINDS, ModelRegistry, ensure_builtin, load
from cvgen.server.core.models.controlnet import WEIGHTS, ControlNet, tiny_parts
from cvgen.server.core.models.loading import model_bytes
from cvgen.server.errors import ModelNotFound


pytestmark = pytest.mark.usefixtures("no_user_models")


@pytest.fixture(scope="module")
def tiny_folder() -> Path:
    return ensure_builtin("controlnet")


@pytest.fixture(scope="module")
def builtin() -> ControlNet:
    return load(ModelRegistry.load().entry("tiny-controlnet"))


def outputs(net: torch.nn.Module) -> list[torch.Tensor]:
    """The ControlNet's residuals on a fixed input: equal residuals mean equal weights."""
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(1, 4, 8, 8, generator=generator)
    embeds = torch.randn(1, 77, 32, generator=generator)
    control = torch.rand(1, 3, 64, 64, generator=generator)
    with torch.no_grad():
        down, mid = net(latents, 10, encoder_hidden_states=embeds, controlnet_cond=control, return_dict=False)
    return [*down, mid]


def entry_for(tmp_path: Path, path: Path):
    return ModelRegistry.load(models_file(tmp_path, "controlnet", path, name="cn")).entry("cn", kind="controlnet")


def test_the_loaded_tiny_matches_the_one_built_in_memory(builtin: ControlNet) -> None:
    expected = outputs(tiny_parts(ensure_builtin("sd")))
    got = outputs(builtin.model)
    assert len(got) == len(expected) == 5
    assert all(torch.equal(a, b) for a, b in zip(got, expected))
    assert any(r.abs().max() > 0 for r in got[:-1]), "the tiny ControlNet's zero layers must be random, not zero"
    assert not builtin.model.training and not any(p.requires_grad for p in builtin.model.parameters())
    assert tuple(builtin.model.config.conditioning_embedding_out_channels) == (16, 16, 16, 16) and builtin.downscale == 8
    assert model_bytes(builtin) == sum(p.numel() * 4 for p in builtin.model.parameters())


def test_the_tiny_matches_the_tiny_sd_unet(builtin: ControlNet) -> None:
    sd = load(ModelRegistry.load().entry("tiny"))
    encoder = {k: v for k, v in sd.unet.state_dict().items() if k.startswith(("down_blocks.", "conv_in.", "mid_block."))}
    controlnet = builtin.model.state_dict()
    assert all(torch.equal(controlnet[k], v) for k, v in encoder.items())


def test_a_models_file_entry_loads_a_copy(tiny_folder: Path, builtin: ControlNet, tmp_path: Path) -> None:
    copy = shutil.copytree(tiny_folder, tmp_path / "my controlnet")
    registry = ModelRegistry.load(models_file(tmp_path, "controlnet", copy, name="depth"))
    assert registry.default_for("controlnet") == "depth"
    model = load(registry.entry("", kind="controlnet"), dtype="bfloat16")
    assert isinstance(model, ControlNet) and model.name == "depth"
    assert model.dtype == model.model.dtype == torch.bfloat16
    as_float = load(registry.entry("depth"))
    assert all(torch.equal(a, b) for a, b in zip(outputs(as_float.model), outputs(builtin.model)))
    assert as_float.fingerprint == builtin.fingerprint  # same files, wherever they sit


def test_probe_runs_one_forward_pass(builtin: ControlNet) -> None:
    summary = KINDS["controlnet"].probe(builtin)
    assert summary.startswith("4 down residuals")
    assert "(1, 64, 4, 4)" in summary and "64x64 control image" in summary


def test_recognise_tells_a_controlnet_folder_from_others(tiny_folder: Path) -> None:
    kind = KINDS["controlnet"]
    assert kind.recognise(tiny_folder)
    assert not kind.recognise(ensure_builtin("sd"))
    assert not kind.recognise(ensure_builtin("sd") / "unet")
    assert not kind.recognise(tiny_folder / WEIGHTS)


def test_a_missing_folder_is_named(tmp_path: Path) -> None:
    gone = tmp_path / "nowhere"
    with pytest.raises(ModelNotFound, match=f"{gone}: it does not exist"):
        load(entry_for(tmp_path, gone))


def test_missing_weights_are_named(tiny_folder: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(tiny_folder, tmp_path / "cn")
    (copy / WEIGHTS).unlink()
    with pytest.raises(ModelNotFound, match=f"{copy}: the folder lacks {WEIGHTS}"):
        load(entry_for(tmp_path, copy))


def test_pickle_weights_are_refused(tiny_folder: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(tiny_folder, tmp_path / "cn")
    (copy / WEIGHTS).rename(copy / "diffusion_pytorch_model.bin")
    with pytest.raises(ModelNotFound, match=f"{copy}: its weights are pickles"):
        load(entry_for(tmp_path, copy))


def test_damaged_weights_are_one_sentence(tiny_folder: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(tiny_folder, tmp_path / "cn")
    data = (copy / WEIGHTS).read_bytes()
    (copy / WEIGHTS).write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelNotFound, match=f"{copy}: the ControlNet could not be loaded") as caught:
        load(entry_for(tmp_path, copy))
    assert "Traceback" not in str(caught.value)


def test_an_sd_folder_is_named_as_such(tmp_path: Path) -> None:
    sd = ensure_builtin("sd")
    with pytest.raises(ModelNotFound, match="it looks like a Stable Diffusion model") as caught:
        load(entry_for(tmp_path, sd))
    assert str(sd) in str(caught.value) and "lacks config.json" in str(caught.value)


def test_a_unet_folder_is_not_a_controlnet(tmp_path: Path) -> None:
    unet = ensure_builtin("sd") / "unet"
    with pytest.raises(ModelNotFound, match=f"{unet}: its config.json is a UNet2DConditionModel, not a ControlNetModel"):
        load(entry_for(tmp_path, unet))


def test_a_wrong_kind_is_named() -> None:
    registry = ModelRegistry.load()
    with pytest.raises(ModelNotFound, match="'tiny-controlnet' is a ControlNet model.*Stable Diffusion model"):
        registry.entry("tiny-controlnet", kind="sd")
    with pytest.raises(ModelNotFound, match="'tiny' is a Stable Diffusion model.*ControlNet model"):
        registry.entry("tiny", kind="controlnet")


def test_it_runs_with_the_tiny_sd_in_diffusers_controlnet_pipeline(builtin: ControlNet) -> None:
    from diffusers import StableDiffusionControlNetPipeline

    sd = load(ModelRegistry.load().entry("tiny"))
    pipe = StableDiffusionControlNetPipeline(
        vae=sd.vae, text_encoder=sd.text_encoder, tokenizer=sd.tokenizer, unet=sd.unet, controlnet=builtin.model,
        scheduler=sd.scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    control = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))

    def run(scale: float) -> torch.Tensor:
        return pipe("a house", image=control, height=32, width=32, num_inference_steps=2, output_type="latent",
                    controlnet_conditioning_scale=scale, generator=torch.Generator().manual_seed(0)).images

    latents = run(1.0)
    assert latents.shape == (1, 4, 4, 4) and torch.isfinite(latents).all()
    assert torch.equal(latents, run(1.0))
    assert not torch.allclose(latents, run(0.0), atol=1e-4)


def test_the_tiny_follows_its_control_image(builtin: ControlNet) -> None:
    """A blank and a square control image must move the tiny SD's prediction visibly, or tests of
    ops that follow depth would pass whatever depth they were given."""
    sd = load(ModelRegistry.load().entry("tiny"))
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    prompt = sd.encode_prompt(["a house"])
    blank = torch.zeros(1, 3, 64, 64)
    square = blank.clone()
    square[..., 16:48, 16:48] = 1.0

    def prediction(control: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            down, mid = builtin.model(latents, 500, encoder_hidden_states=prompt, controlnet_cond=control,
                                      return_dict=False)
            return sd.unet(latents, 500, encoder_hidden_states=prompt, down_block_additional_residuals=down,
                           mid_block_additional_residual=mid).sample

    blank_out, square_out = prediction(blank), prediction(square)
    assert (blank_out - square_out).abs().max() > 0.05 * blank_out.abs().mean()
