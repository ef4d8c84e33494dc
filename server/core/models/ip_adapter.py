"""IP-Adapter (kind `ip_adapter`): an adapter's `.safetensors` weights and the CLIP image encoder it was trained with.

    [models.style]
    kind = "ip_adapter"
    path = "/models/IP-Adapter/models/ip-adapter_sd15.safetensors"   # keys image_proj.*, ip_adapter.*
    image_encoder = "/models/IP-Adapter/models/image_encoder"      # optional: the default, beside the weights

The layout is h94/IP-Adapter's, which diffusers' `load_ip_adapter` reads: the weights file with
flat `image_proj.` and `ip_adapter.` keys, and a transformers `CLIPVisionModelWithProjection`
folder in `image_encoder/` beside it (or wherever `image_encoder` says).

An adapter is not a model of its own: it changes an SD model's UNet while it is applied. Loading
keeps its weights as the state dict `load_ip_adapter` accepts, and `applied` puts them into an SD
model's UNet through diffusers' own loader (so every adapter variant diffusers knows loads the way
diffusers loads it), then takes them out again, leaving the UNet as it was for the next job.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from ...errors import ModelNotFound
from . import files
from .entry import ModelEntry
from .kind import Kind, LoadedModel, TinyFolder, modules_ready
from .sd import SEED, SDModel

if TYPE_CHECKING:
    import torch
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

#: The two parts of an adapter's state dict, by the prefix of their flat keys in the weights file.
PARTS = ("image_proj", "ip_adapter")
ENCODER = "image_encoder"
ENCODER_NEEDS = ("config.json", "model.safetensors")
PROCESSOR = "preprocessor_config.json"
TINY_WEIGHTS = "ip-adapter.safetensors"
#: Small, so the tiny encoder is fast; diffusers' pipeline resizes reference images to it.
TINY_IMAGE_SIZE = 32
#: Image tokens the plain (non-"plus") adapter projects one image embedding into.
TINY_TOKENS = 4

StateDict = dict[str, dict[str, "torch.Tensor"]]


@dataclasses.dataclass
class IPAdapter(LoadedModel):
    """A loaded IP-Adapter: its weights as `load_ip_adapter` takes them, and the image encoder it needs."""

    state_dict: StateDict
    image_encoder: CLIPVisionModelWithProjection
    feature_extractor: CLIPImageProcessor

    def modules(self) -> list[torch.nn.Module]:
        """The image encoder and the adapter's tensors: both sit on the device between uses."""
        import torch

        held = torch.nn.Module()
        for number, tensor in enumerate(t for part in self.state_dict.values() for t in part.values()):
            held.register_buffer(f"t{number}", tensor, persistent=False)
        return [*super().modules(), held]


@dataclasses.dataclass
class AppliedAdapter:
    """What an op needs while an adapter is in an SD model's UNet.

    `pipe` is a `StableDiffusionPipeline` around the SD model's own parts (its scheduler a fresh
    copy), usable for diffusers' `ip_adapter_image=`; ops calling the UNet themselves pass
    `added_cond_kwargs={"image_embeds": applied.image_embeds(...)}`.
    """

    pipe: StableDiffusionPipeline
    device: torch.device

    @property
    def unet(self) -> Any:
        return self.pipe.unet

    def image_embeds(self, images: Any, guidance: bool) -> list[torch.Tensor]:
        """Reference image(s) (PIL, arrays or pixel tensors) as diffusers' pipeline embeds them.

        One tensor per adapter, (2, N, D) with the zero "unconditional" embedding first when
        `guidance` (classifier-free guidance), else (1, N, D).
        """
        import torch

        with torch.no_grad():
            return self.pipe.prepare_ip_adapter_image_embeds(images, None, self.device, 1, guidance)


def encoder_folder(entry: ModelEntry) -> Path:
    """The image encoder's folder: the entry's `image_encoder`, else `image_encoder/` beside the weights."""
    return entry.option(ENCODER) or entry.path.parent / ENCODER


def adapter_keys(path: Path) -> list[str]:
    """The weights file's IP-Adapter tensor names (empty when it is not a safetensors file of one)."""
    try:
        names = files.safetensors_header(path)
    except (OSError, ValueError, UnicodeDecodeError):
        return []
    return [name for name in names if name.split(".", 1)[0] in PARTS]


class IPAdapterKind(Kind):
    name = "ip_adapter"
    label = "IP-Adapter"
    expected = (f"an IP-Adapter .safetensors file (keys image_proj.* and ip_adapter.*) with its CLIP image encoder "
                f"folder ({', '.join(ENCODER_NEEDS)}) in {ENCODER}/ beside it or at `{ENCODER} = \"...\"`")
    options = {ENCODER: "path"}

    def recognise(self, path: Path) -> bool:
        return path.is_file() and path.suffix == ".safetensors" and bool(adapter_keys(path))

    def check(self, entry: ModelEntry) -> None:
        self.require_file(entry)
        keys = adapter_keys(entry.path)
        missing = [part for part in PARTS if not any(key.startswith(part + ".") for key in keys)]
        if missing:
            raise self.broken(entry, f"it holds no {' or '.join(part + '.*' for part in missing)} weights, so it is "
                              f"not an IP-Adapter{self._other_kind(entry.path)}")
        if any("_lora." in key for key in keys):
            raise self.broken(entry, "it is a FaceID adapter (it carries LoRA weights and needs InsightFace face "
                              "embeddings, not a CLIP image encoder), which cvgen does not support")
        encoder = encoder_folder(entry)
        if not encoder.exists():
            raise self.broken(entry, f"its image encoder folder {encoder} does not exist (set `{ENCODER}` in the "
                              "models file if it is elsewhere)")
        self.require_folder(entry, ENCODER_NEEDS, path=encoder)

    def weight_files(self, entry: ModelEntry) -> list[Path]:
        return [entry.path, *files.weight_files(encoder_folder(entry))]

    def defining_files(self, entry: ModelEntry) -> dict[str, Path]:
        return {f"adapter/{entry.path.name}": entry.path, **files.folder_files(encoder_folder(entry), f"{ENCODER}/")}

    def load(self, entry: ModelEntry, device: torch.device, dtype: torch.dtype) -> IPAdapter:
        from safetensors.torch import load_file
        from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

        encoder = encoder_folder(entry)
        try:
            flat = load_file(entry.path, device=str(device))
        except Exception as exc:  # safetensors raises its own types for damaged files
            raise self.load_error(entry, "the adapter weights", exc) from exc
        state_dict: StateDict = {part: {} for part in PARTS}
        for key, tensor in flat.items():
            part, _, rest = key.partition(".")
            if part in state_dict:
                state_dict[part][rest] = tensor.to(dtype) if tensor.is_floating_point() else tensor
        try:
            image_encoder = CLIPVisionModelWithProjection.from_pretrained(encoder, local_files_only=True, dtype=dtype,
                                                                          use_safetensors=True)
        except Exception as exc:  # transformers raises many types; the artist needs one sentence
            raise self.load_error(entry, "the image encoder", exc, path=encoder) from exc
        try:
            feature_extractor = (CLIPImageProcessor.from_pretrained(encoder, local_files_only=True)
                                 if (encoder / PROCESSOR).is_file() else default_feature_extractor(image_encoder))
        except Exception as exc:
            raise self.load_error(entry, f"the image encoder's {PROCESSOR}", exc, path=encoder) from exc
        modules_ready(image_encoder, device=device)
        return IPAdapter(entry.name, device, dtype, self.fingerprint(entry), state_dict=state_dict,
                         image_encoder=image_encoder, feature_extractor=feature_extractor)

    def build_tiny(self, folder: Path, tiny: TinyFolder) -> None:
        from safetensors.torch import save_file

        weights, image_encoder = tiny_parts(tiny("sd"))
        save_file(weights, folder / TINY_WEIGHTS)
        image_encoder.save_pretrained(folder / ENCODER, safe_serialization=True)

    def tiny_entry(self, folder: Path) -> tuple[Path, dict[str, Any]]:
        return folder / TINY_WEIGHTS, {}

    def probe(self, model: IPAdapter) -> str:
        import torch

        size = model.image_encoder.config.image_size
        pixels = torch.zeros(1, 3, size, size, device=model.device, dtype=model.dtype)
        with torch.no_grad():
            embeds = model.image_encoder(pixels).image_embeds
        layers = sum(key.endswith("to_k_ip.weight") for key in model.state_dict["ip_adapter"])
        return (f"image encoder at {size}x{size} px gives embeddings {tuple(embeds.shape)}; "
                f"{layers} cross-attention layers take the image")


def default_feature_extractor(image_encoder: Any) -> CLIPImageProcessor:
    """The processor diffusers makes for an encoder folder without one: CLIP's, at the encoder's image size."""
    from transformers import CLIPImageProcessor

    size = image_encoder.config.image_size
    return CLIPImageProcessor(size=size, crop_size=size)


@contextlib.contextmanager
def applied(sd_model: SDModel, adapter: IPAdapter, scale: float) -> Iterator[AppliedAdapter]:
    """The adapter loaded into the SD model's UNet at `scale` for the `with` block, then taken out.

    Loading goes through diffusers' `load_ip_adapter`, on a pipeline around the SD model's parts.
    Its `unload_ip_adapter` re-creates every attention processor from its class, which would drop
    the state of any processor an op installed: the UNet's own processors, image projection and
    config are put back as they were instead, so the SD model is the same object it was.
    The UNet is changed in place: one job at a time may use an SD model with an adapter applied.
    """
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    if (adapter.device, adapter.dtype) != (sd_model.device, sd_model.dtype):
        raise ValueError(f"IP-Adapter {adapter.name!r} is loaded on {adapter.device} in {adapter.dtype}, and "
                         f"{sd_model.name!r} on {sd_model.device} in {sd_model.dtype}: load both alike")
    unet = sd_model.unet
    processors = dict(unet.attn_processors)
    projection, projection_type = unet.encoder_hid_proj, unet.config.encoder_hid_dim_type
    pipe = StableDiffusionPipeline(
        vae=sd_model.vae, text_encoder=sd_model.text_encoder, tokenizer=sd_model.tokenizer, unet=unet,
        scheduler=DDIMScheduler.from_config(sd_model.scheduler.config), safety_checker=None,
        feature_extractor=adapter.feature_extractor, image_encoder=adapter.image_encoder,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    try:
        try:
            pipe.load_ip_adapter(adapter.state_dict, subfolder=None, weight_name=None)
        except Exception as exc:  # shapes that do not match this UNet: an adapter for another base model
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            raise ModelNotFound(f"IP-Adapter {adapter.name!r} does not fit the Stable Diffusion model "
                                f"{sd_model.name!r} (an adapter works only with the base model it was trained "
                                f"for; details: {type(exc).__name__}: {first}).") from exc
        pipe.set_ip_adapter_scale(scale)
        yield AppliedAdapter(pipe, sd_model.device)
    finally:
        pipe.unload_ip_adapter()
        unet.set_attn_processor(processors)
        unet.encoder_hid_proj = projection
        unet.config.encoder_hid_dim_type = projection_type


def tiny_parts(sd_folder: Path) -> tuple[dict[str, torch.Tensor], CLIPVisionModelWithProjection]:
    """The tiny adapter's flat weights (as saved) and its image encoder, seeded, sized for the tiny SD in `sd_folder`.

    A plain IP-Adapter: one image embedding projected into 4 tokens of the UNet's cross-attention
    width, and a key and value projection for them in every cross-attention layer, numbered as
    `load_ip_adapter` counts them (1, 3, 5, ... over the cross-attention processors, in
    `unet.attn_processors` order: down blocks, up blocks, then the mid block).
    """
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    unet = UNet2DConditionModel.from_pretrained(sd_folder, subfolder="unet", local_files_only=True,
                                                use_safetensors=True)
    cross = unet.config.cross_attention_dim
    widths = [unet.get_submodule(name.removesuffix(".processor")).to_k.out_features
              for name in unet.attn_processors if name.endswith("attn2.processor")]
    torch.manual_seed(SEED)
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, projection_dim=32, num_hidden_layers=2, num_attention_heads=4, image_size=TINY_IMAGE_SIZE,
        intermediate_size=37, patch_size=4,
    )).eval()
    image_dim = image_encoder.config.projection_dim
    weights = {
        "image_proj.proj.weight": torch.randn(TINY_TOKENS * cross, image_dim) * 0.1,
        "image_proj.proj.bias": torch.randn(TINY_TOKENS * cross) * 0.1,
        "image_proj.norm.weight": 1 + torch.randn(cross) * 0.1,
        "image_proj.norm.bias": torch.randn(cross) * 0.1,
    }
    for number, hidden in enumerate(widths):
        for projection in ("to_k_ip", "to_v_ip"):
            weights[f"ip_adapter.{2 * number + 1}.{projection}.weight"] = torch.randn(hidden, cross) * 0.1
    return weights, image_encoder


KIND = IPAdapterKind()
