"""LoRA weights for a UNet (kind `lora`): one `.safetensors` file in diffusers' format.

    [models.claymation]
    kind = "lora"
    path = "/models/loras/claymation.safetensors"   # `unet.`-prefixed keys, as `save_lora_weights` writes
    applies_to = "sd"                               # "sd" (default) or "t2v": the kind of model it is for

A LoRA is not a model of its own: ops apply it to a loaded SD or text-to-video model for one job
with `applied(model, [(lora, scale), ...])`, which adds its layers to the model's UNet with peft as
diffusers' LoRA loader does, sets the scales, and on exit removes every LoRA layer again,
so the cached model the next job gets is the plain one, bit for bit. Kohya/A1111 files (`lora_unet_*`
keys) are converted by diffusers' own `lora_state_dict`. Only UNet layers are applied: text-encoder
layers in a file are ignored, and prompts are encoded by the model's plain text encoder.

Before any layer is added, every LoRA layer is checked against the UNet (the module exists, the
shapes fit), so a LoRA for another architecture is a clear error naming its file rather than
peft's warning and a silently partial LoRA. `applies_to` is checked too: an SD 1.5 LoRA can have
layer names and shapes that fit a ZeroScope UNet (its spatial layers are SD's), yet it was not trained
for it.

The tiny built-in is a rank-4 LoRA with random non-zero A and B for the tiny t2v UNet's attention
projections (spatial and temporal), so applying it visibly changes the UNet's output.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from ...errors import ModelNotFound
from . import files
from .entry import ModelEntry
from .kind import Kind, LoadedModel, TinyFolder

if TYPE_CHECKING:
    import torch

APPLIES_TO = ("sd", "t2v")
TINY_FILE = "lora.safetensors"
TINY_RANK = 4
#: The attention projections LoRA trainers target (diffusers' own SD and text-to-video LoRA scripts).
ATTENTION_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")
_UNET_PREFIX = "unet."
_LORA_MARKERS = ("lora_A", "lora_B", "lora.down", "lora.up", "lora_down", "lora_up")


@dataclasses.dataclass
class LoraWeights(LoadedModel):
    """A LoRA's UNet layers in peft's naming (`<module>.lora_A.weight`, ...), on the CPU until applied.

    `network_alphas` come only from Kohya files (diffusers' conversion gives them), by the same names.
    """

    path: Path
    applies_to: str
    state_dict: dict[str, torch.Tensor]
    network_alphas: dict[str, float] | None

    @property
    def rank(self) -> int:
        return max((t.shape[0] for k, t in self.state_dict.items() if "lora_A" in k), default=0)


class Lora(Kind):
    name = "lora"
    label = "LoRA"
    expected = ("a LoRA .safetensors file in diffusers' format (keys like unet.<module>.lora_A.weight) "
                "or Kohya's (lora_unet_* keys)")
    options = {"applies_to": APPLIES_TO}

    def recognise(self, path: Path) -> bool:
        if not (path.is_file() and path.suffix == ".safetensors"):
            return False
        try:
            return any(marker in key for key in files.safetensors_header(path) for marker in _LORA_MARKERS)
        except (OSError, ValueError, UnicodeDecodeError):
            return False

    def check(self, entry: ModelEntry) -> None:
        self.require_file(entry)
        try:
            keys = list(files.safetensors_header(entry.path))
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            raise self.broken(entry, "it is not a readable safetensors file", exc) from exc
        if not any(marker in key for key in keys for marker in _LORA_MARKERS):
            raise self.broken(entry, f"it holds no LoRA layers (its {len(keys)} tensors have no lora_A/lora_B "
                              "or lora.down/lora.up names)")

    def load(self, entry: ModelEntry, device: torch.device, dtype: torch.dtype) -> LoraWeights:
        from diffusers.loaders import StableDiffusionLoraLoaderMixin
        from diffusers.utils import convert_unet_state_dict_to_peft
        from safetensors.torch import load_file

        try:
            raw = load_file(entry.path, device="cpu")
            converted, alphas = StableDiffusionLoraLoaderMixin.lora_state_dict(raw)
        except Exception as exc:  # safetensors/diffusers raise many types; the artist needs one sentence
            raise self.load_error(entry, "the file", exc) from exc
        unet = {key.removeprefix(_UNET_PREFIX): value for key, value in converted.items()
                if key.startswith(_UNET_PREFIX)}
        if not unet:
            raise self.broken(entry, "it holds no UNet layers (no keys start with `unet.`)")
        if not any("lora_A" in key for key in unet):
            unet = convert_unet_state_dict_to_peft(unet)
        if alphas:
            alphas = {key.removeprefix(_UNET_PREFIX): value for key, value in alphas.items()
                      if key.startswith(_UNET_PREFIX)}
        applies_to = entry.option("applies_to") or "sd"
        return LoraWeights(entry.name, device, dtype, self.fingerprint(entry, f"applies_to={applies_to}"),
                           path=entry.path, applies_to=applies_to, state_dict=unet, network_alphas=alphas or None)

    def build_tiny(self, folder: Path, tiny: TinyFolder) -> None:
        from diffusers.loaders import StableDiffusionLoraLoaderMixin

        from .t2v import tiny_unet

        StableDiffusionLoraLoaderMixin.save_lora_weights(
            folder, unet_lora_layers=tiny_lora(tiny_unet()), weight_name=TINY_FILE, safe_serialization=True)

    def tiny_entry(self, folder: Path) -> tuple[Path, dict[str, Any]]:
        return folder / TINY_FILE, {"applies_to": "t2v"}

    def probe(self, model: LoraWeights) -> str:
        import torch

        pairs = [key.removesuffix(".lora_A.weight") for key in model.state_dict if key.endswith(".lora_A.weight")]
        largest = 0.0
        for module in pairs:
            down = model.state_dict[f"{module}.lora_A.weight"].float().flatten(1)
            up = model.state_dict[f"{module}.lora_B.weight"].float().flatten(1)
            largest = max(largest, float((up @ (down @ torch.ones(down.shape[1]))).abs().max()))
        return (f"rank {model.rank} LoRA for {model.applies_to} models: {len(pairs)} layers; "
                f"largest change of a layer's output for an all-ones input: {largest:.3g}")


def tiny_lora(unet: Any, rank: int = TINY_RANK) -> dict[str, torch.Tensor]:
    """Random non-zero LoRA layers (peft naming, no `unet.` prefix) for every attention projection of `unet`.

    Seeded, so the same UNet config gives the same LoRA; B is non-zero (a freshly initialised LoRA
    has B = 0 and changes nothing), so applying it changes the UNet's output.
    """
    import torch

    from .sd import SEED

    torch.manual_seed(SEED)
    layers: dict[str, torch.Tensor] = {}
    for name, module in unet.named_modules():
        if isinstance(module, torch.nn.Linear) and name.endswith(tuple("." + p for p in ATTENTION_PROJECTIONS)):
            layers[f"{name}.lora_A.weight"] = torch.randn(rank, module.in_features) / module.in_features ** 0.5
            layers[f"{name}.lora_B.weight"] = torch.randn(module.out_features, rank) * 0.1
    return layers


def model_kind(model: Any) -> str | None:
    """The kind of a loaded model a LoRA can be applied to ("sd" or "t2v"), else None."""
    from .sd import SDModel
    from .t2v import T2VModel

    return "sd" if isinstance(model, SDModel) else "t2v" if isinstance(model, T2VModel) else None


@contextlib.contextmanager
def applied(model: Any, loras: list[tuple[LoraWeights, float]]) -> Iterator[Any]:
    """Run the `with` block with the LoRAs in the model's UNet at their scales; the plain UNet afterwards.

    Every LoRA is checked before any is added. Layers are added with peft as diffusers' own
    `load_lora_adapter` does (same config from the same helper), because diffusers gives
    `UNet3DConditionModel` no LoRA methods; scales are set with diffusers' helper behind
    `set_adapters`. On exit, and on any error, every LoRA layer is removed (diffusers'
    `recurse_remove_peft_layers` puts the original modules back, untouched), so the model cache can
    hand the same model to the next job. Not for two jobs on one model at once: the UNet is changed
    in place while the block runs.
    """
    from diffusers.utils.peft_utils import (
        get_peft_kwargs,
        recurse_remove_peft_layers,
        set_weights_and_activate_adapters,
    )
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict

    if not loras:
        yield model
        return
    for lora, _ in loras:
        check_fits(lora, model)
    unet = model.unet
    names = [f"cvgen_lora_{index}" for index in range(len(loras))]
    try:
        for name, (lora, _) in zip(names, loras):
            ranks = {f"^{key}": value.shape[1] for key, value in lora.state_dict.items()
                     if "lora_B" in key and value.ndim > 1}
            try:
                config = LoraConfig(**get_peft_kwargs(ranks, lora.network_alphas, lora.state_dict, is_unet=True))
                with warnings.catch_warnings():  # "multiple adapters in the model": that is the point
                    warnings.filterwarnings("ignore", message="Already found a `peft_config`")
                    inject_adapter_in_model(config, unet, adapter_name=name, state_dict=lora.state_dict)
                set_peft_model_state_dict(unet, lora.state_dict, name)
            except Exception as exc:  # peft raises many types; name the file
                raise _unusable(lora, f"peft could not add it to the UNet ({type(exc).__name__}: "
                                f"{(str(exc).strip().splitlines() or [''])[0][:200]})") from exc
        set_weights_and_activate_adapters(unet, names, [float(scale) for _, scale in loras])
        yield model
    finally:
        recurse_remove_peft_layers(unet)
        for attribute in ("peft_config", "_hf_peft_config_loaded"):
            if attribute in vars(unet):
                delattr(unet, attribute)


def check_fits(lora: LoraWeights, model: Any) -> None:
    """Refuse a LoRA meant for another kind of model, or one whose layers are not the model's UNet's, naming its file.

    `applied` calls it first; an op may call it earlier to refuse a job before any work.
    """
    import torch

    kind = model_kind(model)
    if kind is None:
        raise _unusable(lora, f"LoRAs apply to Stable Diffusion or text-to-video models, not a {type(model).__name__}")
    if lora.applies_to != kind:
        raise _unusable(lora, f"it is for {lora.applies_to!r} models (applies_to = {lora.applies_to!r}) and this is "
                        f"a {kind!r} model; set applies_to in the models file if it really fits")
    unet = model.unet
    modules = dict(unet.named_modules())
    for key, tensor in lora.state_dict.items():
        if ".lora_A." not in key and ".lora_B." not in key:
            continue
        name, side = key.rsplit(".lora_", 1)
        module = modules.get(name)
        if not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            raise _unusable(lora, f"its layer {name!r} is not a linear or convolution layer of this "
                            f"{type(unet).__name__}")
        width = module.in_features if isinstance(module, torch.nn.Linear) else module.in_channels
        height = module.out_features if isinstance(module, torch.nn.Linear) else module.out_channels
        fits = tensor.shape[1] == width if side.startswith("A") else tensor.shape[0] == height
        if not fits:
            raise _unusable(lora, f"its layer {name!r} has shape {tuple(tensor.shape)}, which does not fit this "
                            f"UNet's {tuple(module.weight.shape)} (a LoRA for another architecture?)")


def _unusable(lora: LoraWeights, why: str) -> ModelNotFound:
    return ModelNotFound(f"LoRA {lora.name!r} ({lora.path}) cannot be applied: {why}.")


KIND = Lora()
