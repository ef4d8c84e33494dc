"""The `depth` kind against real files: the tiny Depth Anything saved to disk, models files, broken folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from cvgen.server.core.models import ModelEntry, ModelRegistry, ensure_builtin, load
from cvgen.server.core.models.depth import DepthEstimator, tiny_parts
from cvgen.server.errors import ModelNotFound


pytestmark = pytest.mark.usefixtures("no_user_models")


@pytest.fixture
def tiny_copy(tmp_path: Path) -> Path:
    return Path(shutil.copytree(ensure_builtin("depth"), tmp_path / "depth"))


def frame(height: int = 40, width: int = 56, seed: int = 0) -> np.ndarray:
    """An 8-bit RGB frame with structure (a gradient plus noise), so depth varies across it."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 200, width)[None, :, None] + np.linspace(0, 40, height)[:, None, None]
    return np.clip(ramp + rng.integers(0, 50, (height, width, 3)), 0, 255).astype(np.uint8)


def as_tensor(*frames: np.ndarray) -> torch.Tensor:
    return torch.stack([torch.from_numpy(f).permute(2, 0, 1).float() / 255 for f in frames])


def failure(entry: ModelEntry) -> str:
    with pytest.raises(ModelNotFound) as caught:
        load(entry)
    return str(caught.value)


def test_the_saved_tiny_predicts_as_the_one_built_in_memory() -> None:
    model = load(ModelRegistry.load().entry("tiny-depth", kind="depth"))
    built, _ = tiny_parts()
    pixels = torch.rand(2, 3, 42, 56, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = built(pixel_values=pixels).predicted_depth
        got = model.model(pixel_values=pixels).predicted_depth
    assert isinstance(model, DepthEstimator) and expected.std() > 0.01
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    assert not model.model.training and not any(p.requires_grad for p in model.model.parameters())


def test_predict_equals_transformers_documented_usage_at_the_input_size() -> None:
    model = load(ModelRegistry.load().entry("tiny-depth"))
    image = Image.fromarray(frame())
    inputs = model.processor(images=image, return_tensors="pt")
    with torch.no_grad():
        outputs = model.model(**inputs)
    expected = model.processor.post_process_depth_estimation(outputs, target_sizes=[(image.height, image.width)])
    depth = model.predict(as_tensor(frame()))
    assert depth.shape == (1, 40, 56) and depth.dtype == torch.float32
    torch.testing.assert_close(depth[0], expected[0]["predicted_depth"], rtol=1e-5, atol=1e-6)
    bilinear = torch.nn.functional.interpolate(outputs.predicted_depth[None], size=(40, 56), mode="bilinear")
    assert (depth[0] - bilinear[0, 0]).abs().max() > 1e-4  # resized bicubically, not bilinearly


def test_predict_takes_a_batch_and_each_frame_is_its_own() -> None:
    model = load(ModelRegistry.load().entry("tiny-depth"))
    first, second = frame(seed=0), frame(seed=1)[:, ::-1].copy()
    both = model.predict(as_tensor(first, second))
    torch.testing.assert_close(both[0], model.predict(as_tensor(first))[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(both[1], model.predict(as_tensor(second))[0], rtol=1e-5, atol=1e-6)
    assert (both[0] - both[1]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="N, 3, H, W"):
        model.predict(torch.zeros(3, 40, 56))


def test_a_models_file_entry_loads_a_copy_of_the_tiny(tiny_copy: Path, tmp_path: Path) -> None:
    file = tmp_path / "models.toml"
    file.write_text('[models.mine]\nkind = "depth"\npath = "depth"\n')
    registry = ModelRegistry.load(file)
    mine, builtin = load(registry.entry("mine", kind="depth")), load(registry.entry("tiny-depth"))
    assert registry.default_for("depth") == "mine" and mine.name == "mine"
    assert mine.fingerprint == builtin.fingerprint
    image = as_tensor(frame())
    torch.testing.assert_close(mine.predict(image), builtin.predict(image), rtol=1e-6, atol=1e-6)


def test_missing_folder_and_missing_file_are_named(tiny_copy: Path, tmp_path: Path) -> None:
    message = failure(ModelEntry("gone", "depth", tmp_path / "nowhere"))
    assert str(tmp_path / "nowhere") in message and "does not exist" in message
    (tiny_copy / "preprocessor_config.json").unlink()
    message = failure(ModelEntry("m", "depth", tiny_copy))
    assert str(tiny_copy) in message and "lacks preprocessor_config.json" in message


def test_pickle_weights_are_refused(tiny_copy: Path) -> None:
    (tiny_copy / "model.safetensors").rename(tiny_copy / "pytorch_model.bin")
    message = failure(ModelEntry("m", "depth", tiny_copy))
    assert str(tiny_copy) in message and "pickle" in message


def test_weights_missing_a_tensor_are_refused_not_left_random(tiny_copy: Path) -> None:
    weights = load_file(tiny_copy / "model.safetensors")
    dropped = next(name for name in weights if name.startswith("head."))
    del weights[dropped]
    save_file(weights, tiny_copy / "model.safetensors", metadata={"format": "pt"})
    message = failure(ModelEntry("m", "depth", tiny_copy))
    assert str(tiny_copy) in message and "lack 1 tensors" in message


def test_a_segmentation_dpt_is_not_a_depth_estimator(tiny_copy: Path) -> None:
    config = json.loads((tiny_copy / "config.json").read_text())
    (tiny_copy / "config.json").write_text(json.dumps({**config, "model_type": "dpt",
                                                       "architectures": ["DPTForSemanticSegmentation"]}))
    message = failure(ModelEntry("m", "depth", tiny_copy))
    assert "DPTForSemanticSegmentation" in message and "not a depth estimator" in message


def test_a_folder_of_another_kind_says_what_it_looks_like() -> None:
    sd = ensure_builtin("sd")
    message = failure(ModelEntry("m", "depth", sd))
    assert str(sd) in message and 'looks like a Stable Diffusion model (kind = "sd")' in message


def test_the_tiny_depth_requested_as_another_kind_names_both() -> None:
    with pytest.raises(ModelNotFound, match="'tiny-depth' is a depth estimator model.*kind 'sd'"):
        ModelRegistry.load().entry("tiny-depth", kind="sd")
