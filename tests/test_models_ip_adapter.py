"""The `ip_adapter` kind against real files, and applying an adapter to the tiny SD model and taking it out.

The tiny adapter (weights file plus `image_encoder/`) is built once per test run in the session's
cache, sized for the tiny SD's UNet; every test reads no user models file.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from cvgen.server.core.models import KINDS, ModelRegistry, SDModel, ensure_builtin, load
from cvgen.server.core.models.ip_adapter import TINY_WEIGHTS, IPAdapter, applied, tiny_parts
from cvgen.server.core.models.loading import model_bytes
from cvgen.server.errors import ModelNotFound


pytestmark = pytest.mark.usefixtures("no_user_models")


@pytest.fixture(scope="module")
def tiny_folder() -> Path:
    return ensure_builtin("ip_adapter")


@pytest.fixture(scope="module")
def adapter() -> IPAdapter:
    return load(ModelRegistry.load().entry("tiny-ip-adapter"))


@pytest.fixture
def sd() -> SDModel:
    return load(ModelRegistry.load().entry("tiny"))


def reference_image() -> Image.Image:
    return Image.fromarray((np.random.default_rng(0).random((40, 48, 3)) * 255).astype("uint8"))


def encoder_output(encoder: torch.nn.Module) -> torch.Tensor:
    pixels = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return encoder(pixels).image_embeds


def unet_output(sd: SDModel, **kwargs) -> torch.Tensor:
    """The UNet's prediction on a fixed input: equal outputs mean an unchanged UNet."""
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, 8, 8, generator=generator)
    embeds = torch.randn(1, 77, 32, generator=generator)
    with torch.no_grad():
        return sd.unet(latents, 10, encoder_hidden_states=embeds, **kwargs).sample


def registry_with(folder: Path, body: str) -> ModelRegistry:
    file = folder / "models.toml"
    file.write_text(f'[models.style]\nkind = "ip_adapter"\n{body}')
    return ModelRegistry.load(file)


def entry_for(tmp_path: Path, path: Path, encoder: Path | None = None):
    extra = f'image_encoder = "{encoder}"\n' if encoder else ""
    return registry_with(tmp_path, f'path = "{path}"\n{extra}').entry("style", kind="ip_adapter")


def test_the_loaded_tiny_matches_the_one_built_in_memory(adapter: IPAdapter) -> None:
    weights, encoder = tiny_parts(ensure_builtin("sd"))
    loaded = {f"{part}.{key}": tensor for part, tensors in adapter.state_dict.items() for key, tensor in tensors.items()}
    assert loaded.keys() == weights.keys() and all(torch.equal(loaded[k], weights[k]) for k in weights)
    assert torch.equal(encoder_output(adapter.image_encoder), encoder_output(encoder))
    assert set(adapter.state_dict) == {"image_proj", "ip_adapter"}
    assert adapter.feature_extractor.crop_size == {"height": 32, "width": 32}
    assert not adapter.image_encoder.training and not any(p.requires_grad for p in adapter.image_encoder.parameters())
    adapter_bytes = sum(t.numel() * 4 for t in weights.values())
    encoder_bytes = sum(t.numel() * t.element_size() for t in [*adapter.image_encoder.parameters(),
                                                                *adapter.image_encoder.buffers()])
    assert model_bytes(adapter) == encoder_bytes + adapter_bytes  # the adapter's tensors count too


def test_a_models_file_entry_with_the_encoder_elsewhere(tiny_folder: Path, adapter: IPAdapter, tmp_path: Path) -> None:
    shutil.copy2(tiny_folder / TINY_WEIGHTS, tmp_path / "style.safetensors")
    shutil.copytree(tiny_folder / "image_encoder", tmp_path / "encoders" / "vit")
    registry = registry_with(tmp_path, 'path = "style.safetensors"\nimage_encoder = "encoders/vit"\ndtype = "bfloat16"\n')
    entry = registry.entry("", kind="ip_adapter")
    assert entry.name == "style" and entry.option("image_encoder") == tmp_path / "encoders" / "vit"
    model = load(entry)
    assert isinstance(model, IPAdapter) and model.dtype == model.image_encoder.dtype == torch.bfloat16
    assert all(t.dtype == torch.bfloat16 for part in model.state_dict.values() for t in part.values())
    with pytest.raises(ValueError, match="load both alike"):
        with applied(load(ModelRegistry.load().entry("tiny")), model, 1.0):
            pytest.fail("the block must not run")
    as_float = load(entry, dtype="float32")
    assert torch.equal(encoder_output(as_float.image_encoder), encoder_output(adapter.image_encoder))
    assert KINDS["ip_adapter"].weight_files(entry) == [tmp_path / "style.safetensors",
                                                       tmp_path / "encoders" / "vit" / "model.safetensors"]


def test_the_default_encoder_is_beside_the_weights_and_its_processor_config_is_used(tiny_folder: Path,
                                                                                    tmp_path: Path) -> None:
    from transformers import CLIPImageProcessor

    copy = shutil.copytree(tiny_folder, tmp_path / "adapter")
    entry = entry_for(tmp_path, copy / TINY_WEIGHTS)
    plain = load(entry)
    CLIPImageProcessor(size=48, crop_size=40).save_pretrained(copy / "image_encoder")
    model = load(entry)
    assert model.feature_extractor.crop_size == {"height": 40, "width": 40}
    assert model.fingerprint != plain.fingerprint  # the processor changes what the model sees


def test_probe_runs_one_forward_pass(adapter: IPAdapter) -> None:
    assert KINDS["ip_adapter"].probe(adapter) == ("image encoder at 32x32 px gives embeddings (1, 32); "
                                                  "7 cross-attention layers take the image")


def test_recognise_reads_the_weights_keys(tiny_folder: Path) -> None:
    kind = KINDS["ip_adapter"]
    assert kind.recognise(tiny_folder / TINY_WEIGHTS)
    assert not kind.recognise(tiny_folder)
    assert not kind.recognise(tiny_folder / "image_encoder" / "model.safetensors")
    assert not kind.recognise(ensure_builtin("sd"))


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    gone = tmp_path / "gone.safetensors"
    with pytest.raises(ModelNotFound, match=f"{gone}: it does not exist"):
        load(entry_for(tmp_path, gone))


def test_a_missing_image_encoder_folder_is_named(tiny_folder: Path, tmp_path: Path) -> None:
    shutil.copy2(tiny_folder / TINY_WEIGHTS, tmp_path / "style.safetensors")
    with pytest.raises(ModelNotFound, match=f"its image encoder folder {tmp_path / 'image_encoder'} does not exist"):
        load(entry_for(tmp_path, tmp_path / "style.safetensors"))
    elsewhere = tmp_path / "other encoder"
    with pytest.raises(ModelNotFound, match=f"its image encoder folder {elsewhere} does not exist"):
        load(entry_for(tmp_path, tmp_path / "style.safetensors", elsewhere))


def test_missing_encoder_weights_are_named(tiny_folder: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(tiny_folder, tmp_path / "adapter")
    (copy / "image_encoder" / "model.safetensors").unlink()
    with pytest.raises(ModelNotFound, match=f"{copy / 'image_encoder'}: the folder lacks model.safetensors"):
        load(entry_for(tmp_path, copy / TINY_WEIGHTS))


def test_pickles_are_refused(tiny_folder: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(tiny_folder, tmp_path / "adapter")
    (copy / TINY_WEIGHTS).rename(copy / "ip-adapter.bin")
    with pytest.raises(ModelNotFound, match=f"{copy / 'ip-adapter.bin'}: it is a pickle checkpoint"):
        load(entry_for(tmp_path, copy / "ip-adapter.bin"))
    (copy / "ip-adapter.bin").rename(copy / TINY_WEIGHTS)
    (copy / "image_encoder" / "model.safetensors").rename(copy / "image_encoder" / "pytorch_model.bin")
    with pytest.raises(ModelNotFound, match=f"{copy / 'image_encoder'}: its weights are pickles"):
        load(entry_for(tmp_path, copy / TINY_WEIGHTS))


def test_a_folder_of_another_kind_is_named(tmp_path: Path) -> None:
    sd = ensure_builtin("sd")
    with pytest.raises(ModelNotFound, match=f"{sd}: it is a folder, not a .safetensors file; "
                                            "it looks like a Stable Diffusion model"):
        load(entry_for(tmp_path, sd))


def test_a_safetensors_file_of_another_kind_is_refused(tmp_path: Path) -> None:
    unet = ensure_builtin("sd") / "unet" / "diffusion_pytorch_model.safetensors"
    with pytest.raises(ModelNotFound, match=f"{unet}: it holds no image_proj.* or ip_adapter.* weights"):
        load(entry_for(tmp_path, unet))


def test_a_faceid_adapter_is_refused(tiny_folder: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(tiny_folder, tmp_path / "adapter")
    weights = load_file(copy / TINY_WEIGHTS)
    weights["ip_adapter.1.to_k_lora.down.weight"] = torch.zeros(4, 32)
    save_file(weights, copy / TINY_WEIGHTS)
    with pytest.raises(ModelNotFound, match=f"{copy / TINY_WEIGHTS}: it is a FaceID adapter"):
        load(entry_for(tmp_path, copy / TINY_WEIGHTS))


def test_damaged_weights_are_one_sentence(tiny_folder: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(tiny_folder, tmp_path / "adapter")
    data = (copy / TINY_WEIGHTS).read_bytes()
    (copy / TINY_WEIGHTS).write_bytes(data[:-100])
    with pytest.raises(ModelNotFound, match="the adapter weights could not be loaded"):
        load(entry_for(tmp_path, copy / TINY_WEIGHTS))


def test_a_wrong_kind_is_named() -> None:
    registry = ModelRegistry.load()
    with pytest.raises(ModelNotFound, match="'tiny-ip-adapter' is a IP-Adapter model.*Stable Diffusion model"):
        registry.entry("tiny-ip-adapter", kind="sd")


def test_applied_loads_through_diffusers_and_changes_the_unet(sd: SDModel, adapter: IPAdapter,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from diffusers import StableDiffusionPipeline
    from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0

    calls = []
    original = StableDiffusionPipeline.load_ip_adapter

    def spy(self, *args, **kwargs):
        calls.append(args[0])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(StableDiffusionPipeline, "load_ip_adapter", spy)
    before = unet_output(sd)
    with applied(sd, adapter, 1.0) as active:
        assert calls == [adapter.state_dict] and active.unet is sd.unet
        ip = [p for p in sd.unet.attn_processors.values() if isinstance(p, IPAdapterAttnProcessor2_0)]
        assert len(ip) == 7 and all(p.scale == [1.0] for p in ip)
        assert torch.equal(ip[0].to_k_ip[0].weight, adapter.state_dict["ip_adapter"]["1.to_k_ip.weight"])
        projection = sd.unet.encoder_hid_proj.image_projection_layers[0]
        assert torch.equal(projection.image_embeds.weight, adapter.state_dict["image_proj"]["proj.weight"])
        embeds = active.image_embeds(reference_image(), guidance=True)
        assert len(embeds) == 1 and embeds[0].shape == (2, 1, 32) and not embeds[0][0].any()
        during = unet_output(sd, added_cond_kwargs={"image_embeds": [embeds[0][1:]]})
    assert not torch.allclose(during, before, atol=1e-4)


def test_applied_changes_the_pipeline_output(sd: SDModel, adapter: IPAdapter) -> None:
    from diffusers import StableDiffusionPipeline

    def run(pipe, **kwargs) -> torch.Tensor:
        return pipe("a house", height=32, width=32, num_inference_steps=2, output_type="latent",
                    generator=torch.Generator().manual_seed(0), **kwargs).images

    with applied(sd, adapter, 1.0) as active:
        with_adapter = run(active.pipe, ip_adapter_image=reference_image())
    with applied(sd, adapter, 0.0) as active:
        at_zero = run(active.pipe, ip_adapter_image=reference_image())
    plain = StableDiffusionPipeline(vae=sd.vae, text_encoder=sd.text_encoder, tokenizer=sd.tokenizer, unet=sd.unet,
                                    scheduler=sd.scheduler, safety_checker=None, feature_extractor=None,
                                    requires_safety_checker=False)
    plain.set_progress_bar_config(disable=True)
    without = run(plain)
    assert with_adapter.shape == without.shape == (1, 4, 4, 4)
    assert not torch.allclose(with_adapter, without, atol=1e-4)
    assert torch.allclose(at_zero, without, atol=1e-5)  # scale 0: the adapter's attention adds nothing


def test_the_unet_is_exactly_as_before_after_the_block(sd: SDModel, adapter: IPAdapter) -> None:
    from diffusers.models.attention_processor import AttnProcessor

    custom = AttnProcessor()  # an op's own processor, which diffusers' unload would re-create
    name = next(n for n in sd.unet.attn_processors if n.endswith("attn2.processor"))
    sd.unet.set_attn_processor({**sd.unet.attn_processors, name: custom})
    processors = dict(sd.unet.attn_processors)
    config = dict(sd.unet.config)
    scheduler = dict(sd.scheduler.config)
    before = unet_output(sd)
    with pytest.raises(RuntimeError, match="the op failed"):
        with applied(sd, adapter, 1.0):
            assert sd.unet.encoder_hid_proj is not None
            raise RuntimeError("the op failed")
    after = unet_output(sd)
    assert torch.equal(after, before)
    assert sd.unet.attn_processors == processors and sd.unet.attn_processors[name] is custom
    assert sd.unet.encoder_hid_proj is None and sd.unet.config.encoder_hid_dim_type is None
    assert dict(sd.unet.config) == config and dict(sd.scheduler.config) == scheduler


def test_an_adapter_for_another_base_model_is_refused_and_the_unet_kept(sd: SDModel, adapter: IPAdapter,
                                                                        tmp_path: Path, tiny_folder: Path) -> None:
    weights = load_file(tiny_folder / TINY_WEIGHTS)
    weights["ip_adapter.3.to_k_ip.weight"] = torch.zeros(16, 32)
    save_file(weights, tmp_path / "other.safetensors")
    shutil.copytree(tiny_folder / "image_encoder", tmp_path / "image_encoder")
    other = load(entry_for(tmp_path, tmp_path / "other.safetensors"))
    processors = dict(sd.unet.attn_processors)
    before = unet_output(sd)
    with pytest.raises(ModelNotFound, match="IP-Adapter 'style' does not fit the Stable Diffusion model 'tiny'"):
        with applied(sd, other, 1.0):
            pytest.fail("the block must not run")
    assert sd.unet.attn_processors == processors and torch.equal(unet_output(sd), before)
