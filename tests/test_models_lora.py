"""The `lora` kind against real files: LoRAs saved as diffusers writes them, applied to the tiny UNets and removed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from support import load_error, models_file

from cvgen.server.core.models import KINDS, ModelRegistry, ensure_builtin, load
from cvgen.server.core.models.lora import LoraWeights, applied, tiny_lora
from cvgen.server.core.models.t2v import tiny_unet
from cvgen.server.errors import ModelNotFound


pytestmark = pytest.mark.usefixtures("no_user_models")


@pytest.fixture(scope="module")
def t2v():
    return load(ModelRegistry.load().entry("tiny-t2v"))


@pytest.fixture(scope="module")
def sd():
    return load(ModelRegistry.load().entry("tiny"))


@pytest.fixture(scope="module")
def t2v_lora() -> LoraWeights:
    return load(ModelRegistry.load().entry("tiny-lora"))


def load_lora(tmp_path: Path, path: Path, extra: str = "") -> LoraWeights:
    return load(ModelRegistry.load(models_file(tmp_path, "lora", path, extra)).entry("mine", kind="lora"))


def save_lora(layers: dict[str, torch.Tensor], folder: Path) -> Path:
    """A LoRA file exactly as diffusers' `save_lora_weights` writes one."""
    from diffusers.loaders import StableDiffusionLoraLoaderMixin

    StableDiffusionLoraLoaderMixin.save_lora_weights(folder, unet_lora_layers=layers, weight_name="lora.safetensors")
    return folder / "lora.safetensors"


def output(model) -> torch.Tensor:
    """The model's UNet prediction on a fixed input (3 frames for a video UNet)."""
    generator = torch.Generator().manual_seed(0)
    shape = (1, 4, 3, 8, 8) if model.unet.config._class_name == "UNet3DConditionModel" else (1, 4, 8, 8)
    latents = torch.randn(*shape, generator=generator)
    embeds = torch.randn(1, 77, 32, generator=generator)
    with torch.no_grad():
        return model.unet(latents, 10, encoder_hidden_states=embeds).sample


def plain_state(model) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in model.unet.state_dict().items()}


def assert_plain(model, before: torch.Tensor, state: dict[str, torch.Tensor]) -> None:
    """Bit-identical output, the same parameter names, no peft module or config left behind."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    assert torch.equal(output(model), before)
    after = model.unet.state_dict()
    assert list(after) == list(state) and all(torch.equal(after[name], state[name]) for name in state)
    assert not any(isinstance(module, BaseTunerLayer) for module in model.unet.modules())
    assert not getattr(model.unet, "peft_config", None)


def test_the_saved_tiny_lora_is_the_in_memory_one(t2v_lora: LoraWeights) -> None:
    folder = ensure_builtin("lora")
    on_disk = load_file(folder / "lora.safetensors")
    reference = tiny_lora(tiny_unet())
    assert sorted(on_disk) == sorted("unet." + key for key in reference)
    assert all(torch.equal(t2v_lora.state_dict[key], value) for key, value in reference.items())
    assert len(t2v_lora.state_dict) == len(reference) and t2v_lora.rank == 4 and t2v_lora.applies_to == "t2v"
    assert all(value.abs().min() > 0 for value in reference.values())
    assert any(".temp_attentions." in key for key in reference)  # the temporal layers too
    assert "rank 4 LoRA for t2v models" in KINDS["lora"].probe(t2v_lora)


def test_a_lora_changes_the_t2v_unet_by_its_scale_and_is_removed_after(t2v, t2v_lora: LoraWeights) -> None:
    before, state = output(t2v), plain_state(t2v)
    count = sum(p.numel() for p in t2v.unet.parameters())
    with applied(t2v, [(t2v_lora, 1.0)]) as model:
        assert model is t2v
        full = output(t2v)
    with applied(t2v, [(t2v_lora, 0.5)]):
        half = output(t2v)
    with applied(t2v, [(t2v_lora, 0.0)]):
        assert torch.equal(output(t2v), before)
    assert (full - before).abs().max() > 1e-2
    assert 0 < (half - before).norm() < (full - before).norm()
    assert_plain(t2v, before, state)
    assert sum(p.numel() for p in t2v.unet.parameters()) == count


def test_two_loras_add_up(t2v, t2v_lora: LoraWeights) -> None:
    before, state = output(t2v), plain_state(t2v)
    with applied(t2v, [(t2v_lora, 1.0)]):
        once = output(t2v)
    with applied(t2v, [(t2v_lora, 0.5), (t2v_lora, 0.5)]):
        torch.testing.assert_close(output(t2v), once, rtol=1e-5, atol=1e-5)
    assert_plain(t2v, before, state)


def test_the_plain_unet_is_back_after_an_error_in_the_block(t2v, t2v_lora: LoraWeights) -> None:
    before, state = output(t2v), plain_state(t2v)
    with pytest.raises(RuntimeError, match="job failed"):
        with applied(t2v, [(t2v_lora, 1.0)]):
            raise RuntimeError("job failed")
    assert_plain(t2v, before, state)


def test_a_lora_for_sd_from_a_models_file_works_the_same_way(sd, tmp_path: Path) -> None:
    file = save_lora(tiny_lora(sd.unet), tmp_path)
    lora = load_lora(tmp_path, file)  # applies_to defaults to "sd"
    assert lora.applies_to == "sd" and lora.name == "mine"
    before, state = output(sd), plain_state(sd)
    with applied(sd, [(lora, 1.0)]):
        full = output(sd)
    with applied(sd, [(lora, 0.5)]):
        half = output(sd)
    with applied(sd, [(lora, 0.0)]):
        assert torch.equal(output(sd), before)
    assert 0 < (half - before).norm() < (full - before).norm()
    assert_plain(sd, before, state)


def test_a_kohya_file_is_converted_and_its_alphas_scale_it(sd, tmp_path: Path) -> None:
    layers = tiny_lora(sd.unet)
    kohya = {}
    for key, value in layers.items():
        module, side = key.rsplit(".lora_", 1)
        name = "lora_unet_" + module.replace(".", "_")
        kohya[f"{name}.lora_{'down' if side.startswith('A') else 'up'}.weight"] = value
        kohya[f"{name}.alpha"] = torch.tensor(2.0)  # alpha 2 at rank 4: half strength
    save_file(kohya, tmp_path / "kohya.safetensors")
    (tmp_path / "diffusers").mkdir()
    converted = load_lora(tmp_path, tmp_path / "kohya.safetensors")
    reference = load_lora(tmp_path, save_lora(layers, tmp_path / "diffusers"))
    assert converted.state_dict.keys() == reference.state_dict.keys()
    with applied(sd, [(converted, 1.0)]):
        kohya_output = output(sd)
    with applied(sd, [(reference, 0.5)]):
        torch.testing.assert_close(kohya_output, output(sd), rtol=1e-6, atol=1e-6)


def test_a_lora_for_another_kind_of_model_is_refused_naming_its_file(sd, t2v_lora: LoraWeights) -> None:
    before = output(sd)
    with pytest.raises(ModelNotFound) as error:
        with applied(sd, [(t2v_lora, 1.0)]):
            pass
    assert str(t2v_lora.path) in str(error.value) and "applies_to = 't2v'" in str(error.value)
    assert torch.equal(output(sd), before)


def test_a_lora_for_a_model_without_loras_is_refused(t2v_lora: LoraWeights) -> None:
    with pytest.raises(ModelNotFound, match="LoRAs apply to Stable Diffusion or text-to-video models, not a dict"):
        with applied({"unet": None}, [(t2v_lora, 1.0)]):
            pass


def test_a_lora_whose_layers_do_not_fit_the_unet_is_refused_naming_its_file(sd, t2v, tmp_path: Path) -> None:
    before, state = output(t2v), plain_state(t2v)
    sd_layers = tiny_lora(sd.unet)  # SD's second down block has attention; the tiny t2v UNet's has none
    (tmp_path / "a").mkdir()
    wrong_model = load_lora(tmp_path, save_lora(sd_layers, tmp_path / "a"), 'applies_to = "t2v"\n')
    with pytest.raises(ModelNotFound, match=r"its layer 'down_blocks\.1\.attentions\.0\..*' is not a linear"):
        with applied(t2v, [(wrong_model, 1.0)]):
            pass
    layers = tiny_lora(tiny_unet())
    key = next(key for key in layers if key.endswith("lora_A.weight"))
    layers[key] = torch.ones(4, 7)
    (tmp_path / "b").mkdir()
    wrong_shape = load_lora(tmp_path, save_lora(layers, tmp_path / "b"), 'applies_to = "t2v"\n')
    with pytest.raises(ModelNotFound) as error:
        with applied(t2v, [(wrong_shape, 1.0)]):
            pass
    assert str(tmp_path / "b" / "lora.safetensors") in str(error.value) and "(4, 7)" in str(error.value)
    assert_plain(t2v, before, state)


def test_an_unknown_applies_to_is_refused_when_the_models_file_is_read(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound, match="applies_to 'svd' is not one of sd, t2v"):
        ModelRegistry.load(models_file(tmp_path, "lora", tmp_path / "x.safetensors", 'applies_to = "svd"\n'))


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    message = load_error(tmp_path, "lora", tmp_path / "nowhere.safetensors")
    assert str(tmp_path / "nowhere.safetensors") in message and "does not exist" in message


def test_a_pickle_is_refused(tmp_path: Path) -> None:
    shutil.copy(ensure_builtin("lora") / "lora.safetensors", tmp_path / "lora.bin")
    message = load_error(tmp_path, "lora", tmp_path / "lora.bin")
    assert str(tmp_path / "lora.bin") in message and "pickle" in message


def test_a_safetensors_file_without_lora_layers_is_named(tmp_path: Path) -> None:
    save_file({"conv_in.weight": torch.zeros(2, 2)}, tmp_path / "weights.safetensors")
    message = load_error(tmp_path, "lora", tmp_path / "weights.safetensors")
    assert str(tmp_path / "weights.safetensors") in message and "holds no LoRA layers" in message


def test_a_stable_diffusion_folder_is_named_as_such(tmp_path: Path) -> None:
    sd_folder = ensure_builtin("sd")
    message = load_error(tmp_path, "lora", sd_folder)
    assert str(sd_folder) in message and 'it is a folder, not a .safetensors file; it looks like a Stable Diffusion' \
        in message


def test_asking_for_another_kind_names_both() -> None:
    with pytest.raises(ModelNotFound, match=r"'tiny-lora' is a LoRA model \(kind 'lora'\).*"
                                            r"Stable Diffusion model \(kind 'sd'\)"):
        ModelRegistry.load().entry("tiny-lora", kind="sd")
