"""The `clip` kind against real files: the tiny CLIP saved to disk, models files, broken folders."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cvgen.server.core.models import ModelEntry, ModelRegistry, ensure_builtin, load
from cvgen.server.core.models.clip import Clip, tiny_parts, to_uint8
from cvgen.server.errors import ModelNotFound

PROMPTS = ["a red car in the rain", "", "x " * 100]  # the last is cut to 77 tokens


pytestmark = pytest.mark.usefixtures("no_user_models")


@pytest.fixture
def tiny_copy(tmp_path: Path) -> Path:
    return Path(shutil.copytree(ensure_builtin("clip"), tmp_path / "clip"))


def frames(count: int = 2, height: int = 40, width: int = 56) -> torch.Tensor:
    return torch.rand(count, 3, height, width, generator=torch.Generator().manual_seed(3))


def failure(entry: ModelEntry) -> str:
    with pytest.raises(ModelNotFound) as caught:
        load(entry)
    return str(caught.value)


def test_the_saved_tiny_embeds_as_the_one_built_in_memory() -> None:
    model = load(ModelRegistry.load().entry("tiny-clip", kind="clip"))
    built, processor = tiny_parts()
    reference = Clip("built", torch.device("cpu"), torch.float32, "", model=built, processor=processor)
    assert isinstance(model, Clip)
    torch.testing.assert_close(model.image_features(frames()), reference.image_features(frames()), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(model.text_features(PROMPTS), reference.text_features(PROMPTS), rtol=1e-6, atol=1e-6)
    assert not model.model.training and not any(p.requires_grad for p in model.model.parameters())


def test_image_features_equal_the_processor_on_8_bit_images() -> None:
    model = load(ModelRegistry.load().entry("tiny-clip"))
    images = frames()
    pil = [Image.fromarray((image.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()) for image in images]
    with torch.no_grad():
        expected = model.model.get_image_features(**model.processor(images=pil, return_tensors="pt")).pooler_output
    got = model.image_features(images)
    assert got.shape == (2, 16) and got.dtype == torch.float32
    torch.testing.assert_close(got, expected / expected.norm(dim=-1, keepdim=True), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.norm(dim=-1), torch.ones(2))


def test_text_features_are_unit_and_cut_to_the_context_length() -> None:
    model = load(ModelRegistry.load().entry("tiny-clip"))
    tokens = model.processor(text=PROMPTS, padding=True, truncation=True, max_length=77, return_tensors="pt")
    with torch.no_grad():
        expected = model.model.get_text_features(**tokens).pooler_output
    got = model.text_features(PROMPTS)
    assert tokens.input_ids.shape[1] == 77 and got.shape == (3, 16)
    torch.testing.assert_close(got, expected / expected.norm(dim=-1, keepdim=True), rtol=1e-5, atol=1e-6)
    assert (got[0] - got[1]).abs().max() > 1e-3


def test_images_are_quantised_to_8_bits_and_clipped() -> None:
    images = torch.tensor([-0.5, 0.0, 0.5, 1.0, 2.0]).view(1, 1, 1, 5).expand(1, 3, 1, 5)
    (array,) = to_uint8(images)
    assert array.shape == (1, 5, 3) and array.dtype == np.uint8
    assert array[0, :, 0].tolist() == [0, 0, 128, 255, 255]


def test_a_models_file_entry_loads_a_copy_of_the_tiny(tiny_copy: Path, tmp_path: Path) -> None:
    file = tmp_path / "models.toml"
    file.write_text('[models.mine]\nkind = "clip"\npath = "clip"\n')
    registry = ModelRegistry.load(file)
    mine, builtin = load(registry.entry("mine", kind="clip")), load(registry.entry("tiny-clip"))
    assert mine.name == "mine" and mine.fingerprint == builtin.fingerprint
    torch.testing.assert_close(mine.image_features(frames()), builtin.image_features(frames()), rtol=1e-6, atol=1e-6)


def test_missing_folder_and_missing_tokenizer_are_named(tiny_copy: Path, tmp_path: Path) -> None:
    message = failure(ModelEntry("gone", "clip", tmp_path / "nowhere"))
    assert str(tmp_path / "nowhere") in message and "does not exist" in message
    (tiny_copy / "tokenizer.json").unlink()
    message = failure(ModelEntry("m", "clip", tiny_copy))
    assert str(tiny_copy) in message and "tokenizer.json (or vocab.json and merges.txt)" in message


def test_pickle_weights_are_refused(tiny_copy: Path) -> None:
    (tiny_copy / "model.safetensors").rename(tiny_copy / "pytorch_model.bin")
    message = failure(ModelEntry("m", "clip", tiny_copy))
    assert str(tiny_copy) in message and "pickle" in message


def test_a_clip_model_without_its_processor_looks_like_pickscore(tiny_copy: Path) -> None:
    for name in ("processor_config.json", "tokenizer.json", "tokenizer_config.json"):
        (tiny_copy / name).unlink()
    message = failure(ModelEntry("m", "clip", tiny_copy))
    assert "preprocessor_config.json or processor_config.json" in message
    assert 'looks like a PickScore model (kind = "pickscore")' in message


def test_a_folder_of_another_kind_says_what_it_looks_like() -> None:
    sd = ensure_builtin("sd")
    message = failure(ModelEntry("m", "clip", sd))
    assert str(sd) in message and 'looks like a Stable Diffusion model (kind = "sd")' in message
    depth = ensure_builtin("depth")
    message = failure(ModelEntry("m", "clip", depth))
    assert "depth_anything model, not a CLIP one" in message and "looks like a depth estimator" in message


def test_the_tiny_clip_requested_as_another_kind_names_both() -> None:
    with pytest.raises(ModelNotFound, match="'tiny-clip' is a CLIP model.*kind 'depth'"):
        ModelRegistry.load().entry("tiny-clip", kind="depth")
