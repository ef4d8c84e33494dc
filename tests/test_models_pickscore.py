"""The `pickscore` kind against real files: the tiny PickScore (model and processor folders), models files, errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from cvgen.server.core.models import KINDS, ModelEntry, ModelRegistry, ensure_builtin, load
from cvgen.server.core.models.clip import Clip
from cvgen.server.core.models.pickscore import PickScore, tiny_parts
from cvgen.server.errors import ModelNotFound


pytestmark = pytest.mark.usefixtures("no_user_models")


@pytest.fixture
def tiny_copy(tmp_path: Path) -> Path:
    return Path(shutil.copytree(ensure_builtin("pickscore"), tmp_path / "pickscore"))


def frames(count: int = 3) -> torch.Tensor:
    return torch.rand(count, 3, 40, 56, generator=torch.Generator().manual_seed(5))


def failure(entry: ModelEntry) -> str:
    with pytest.raises(ModelNotFound) as caught:
        load(entry)
    return str(caught.value)


def test_the_tiny_entry_is_the_model_folder_with_its_processor_beside_it() -> None:
    entry = ModelRegistry.load().entry("tiny-pickscore", kind="pickscore")
    folder = ensure_builtin("pickscore")
    assert entry.path == folder / "model" and entry.option("processor") == folder / "processor"
    assert not (folder / "model" / "tokenizer.json").exists()


def test_the_saved_tiny_scores_as_the_one_built_in_memory() -> None:
    model = load(ModelRegistry.load().entry("tiny-pickscore"))
    built, processor = tiny_parts()
    reference = PickScore("built", torch.device("cpu"), torch.float32, "", model=built, processor=processor)
    assert isinstance(model, PickScore) and isinstance(model, Clip)
    torch.testing.assert_close(model.score(frames(), "a cat"), reference.score(frames(), "a cat"), rtol=1e-6, atol=1e-6)
    assert not model.model.training and not any(p.requires_grad for p in model.model.parameters())


def test_score_equals_pickscores_formula_by_hand() -> None:
    """PickScore's README: logit_scale.exp() * text_embs @ image_embs.T over unit embeddings, on PIL images."""
    model = load(ModelRegistry.load().entry("tiny-pickscore"))
    images = frames()
    pil = [Image.fromarray((image.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()) for image in images]
    image_inputs = model.processor(images=pil, return_tensors="pt")
    text_inputs = model.processor(text="a cat on a mat", padding=True, truncation=True, max_length=77,
                                  return_tensors="pt")
    with torch.no_grad():
        image_embs = model.model.get_image_features(**image_inputs).pooler_output
        image_embs = image_embs / torch.norm(image_embs, dim=-1, keepdim=True)
        text_embs = model.model.get_text_features(**text_inputs).pooler_output
        text_embs = text_embs / torch.norm(text_embs, dim=-1, keepdim=True)
        expected = model.model.logit_scale.exp() * (text_embs @ image_embs.T)[0]
    scores = model.score(images, "a cat on a mat")
    assert scores.shape == (3,) and scores.dtype == torch.float32
    assert model.model.logit_scale.exp().item() == pytest.approx(100.0)
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-5)
    assert scores.max() - scores.min() > 0.1


def test_a_models_file_entry_with_a_relative_processor_folder(tiny_copy: Path, tmp_path: Path) -> None:
    file = tmp_path / "models.toml"
    file.write_text('[models.mine]\nkind = "pickscore"\npath = "pickscore/model"\nprocessor = "pickscore/processor"\n')
    registry = ModelRegistry.load(file)
    entry = registry.entry("mine", kind="pickscore")
    assert entry.option("processor") == tiny_copy / "processor"
    mine, builtin = load(entry), load(registry.entry("tiny-pickscore"))
    assert mine.fingerprint == builtin.fingerprint
    torch.testing.assert_close(mine.score(frames(), "a cat"), builtin.score(frames(), "a cat"), rtol=1e-6, atol=1e-6)


def test_the_processor_defaults_to_the_model_folder(tiny_copy: Path) -> None:
    for file in (tiny_copy / "processor").iterdir():
        shutil.copy(file, tiny_copy / "model")
    alone = load(ModelEntry("alone", "pickscore", tiny_copy / "model"))
    builtin = load(ModelRegistry.load().entry("tiny-pickscore"))
    torch.testing.assert_close(alone.score(frames(), "a cat"), builtin.score(frames(), "a cat"), rtol=1e-6, atol=1e-6)


def test_the_processor_changes_the_fingerprint_but_its_folders_weights_do_not(tiny_copy: Path) -> None:
    entry = ModelEntry("m", "pickscore", tiny_copy / "model", options={"processor": tiny_copy / "processor"})
    before = KINDS["pickscore"].fingerprint(entry)
    (tiny_copy / "processor" / "open_clip_model.safetensors").write_bytes(b"not pickscore's weights")
    assert KINDS["pickscore"].fingerprint(entry) == before
    (tiny_copy / "processor" / "tokenizer_config.json").write_text('{"model_max_length": 77}\n')
    assert KINDS["pickscore"].fingerprint(entry) != before


def test_a_missing_processor_folder_is_named(tiny_copy: Path) -> None:
    shutil.rmtree(tiny_copy / "processor")
    message = failure(ModelEntry("m", "pickscore", tiny_copy / "model", options={"processor": tiny_copy / "processor"}))
    assert str(tiny_copy / "processor") in message and "processor folder does not exist" in message


def test_a_model_folder_without_processor_files_and_no_processor_key_says_so(tiny_copy: Path) -> None:
    message = failure(ModelEntry("m", "pickscore", tiny_copy / "model"))
    assert str(tiny_copy / "model") in message and "processor's preprocessor_config.json" in message


def test_missing_model_folder_and_pickle_weights(tiny_copy: Path, tmp_path: Path) -> None:
    message = failure(ModelEntry("gone", "pickscore", tmp_path / "nowhere"))
    assert str(tmp_path / "nowhere") in message and "does not exist" in message
    model = tiny_copy / "model"
    (model / "model.safetensors").rename(model / "pytorch_model.bin")
    message = failure(ModelEntry("m", "pickscore", model, options={"processor": tiny_copy / "processor"}))
    assert str(model) in message and "pickle" in message


def test_a_folder_of_another_kind_says_what_it_looks_like(tiny_copy: Path) -> None:
    sd = ensure_builtin("sd")
    message = failure(ModelEntry("m", "pickscore", sd, options={"processor": tiny_copy / "processor"}))
    assert str(sd) in message and 'looks like a Stable Diffusion model (kind = "sd")' in message


def test_the_tiny_pickscore_requested_as_another_kind_names_both() -> None:
    with pytest.raises(ModelNotFound, match="'tiny-pickscore' is a PickScore model.*kind 'clip'"):
        ModelRegistry.load().entry("tiny-pickscore", kind="clip")
