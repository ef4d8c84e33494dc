"""ControlNet (kind `controlnet`): a diffusers ControlNetModel folder, as `save_pretrained` writes it.

    [models.depth]
    kind = "controlnet"
    path = "/models/control_v11f1p_sd15_depth"     # config.json, diffusion_pytorch_model.safetensors

A ControlNet is a copy of its base model's UNet encoder, so it only works with the SD model it
was trained for; nothing in its folder names that model, so pairing them is the artist's choice.
The tiny built-in is made from the tiny SD's UNet (`ControlNetModel.from_unet`) for that reason,
with a conditioning embedding that downsamples as much as the tiny SD's VAE (8x, four levels), so
a control image at the picture's size lines up with the latents.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING

from .entry import ModelEntry
from .kind import Kind, LoadedModel, TinyFolder, modules_ready
from .sd import SEED

if TYPE_CHECKING:
    import torch
    from diffusers import ControlNetModel

CONFIG = "config.json"
WEIGHTS = "diffusion_pytorch_model.safetensors"
#: Four levels: the conditioning embedding then downsamples 2**3 = 8x, as SD's VAE (and the tiny one) does.
TINY_CONDITIONING_CHANNELS = (16, 16, 16, 16)


@dataclasses.dataclass
class ControlNet(LoadedModel):
    """A loaded ControlNet, ready to run beside the SD model whose UNet it was made from."""

    model: ControlNetModel

    @property
    def downscale(self) -> int:
        """How much smaller the latents are than the control image it takes (SD's VAE factor, 8)."""
        return 2 ** (len(self.model.config.conditioning_embedding_out_channels) - 1)


def model_class(path: Path) -> str | None:
    """The `_class_name` of a diffusers model folder's config.json (None when there is none)."""
    try:
        return json.loads((path / CONFIG).read_text()).get("_class_name")
    except (OSError, ValueError, AttributeError):
        return None


class ControlNetKind(Kind):
    name = "controlnet"
    tiny_version = "2"
    label = "ControlNet"
    expected = f"a diffusers ControlNet folder with {CONFIG} and {WEIGHTS}"

    def recognise(self, path: Path) -> bool:
        return path.is_dir() and model_class(path) == "ControlNetModel"

    def check(self, entry: ModelEntry) -> None:
        self.require_folder(entry, (CONFIG, WEIGHTS))
        if not self.recognise(entry.path):
            found = model_class(entry.path)
            what = f"a {found}" if found else "not a diffusers model config"
            raise self.broken(entry, f"its {CONFIG} is {what}, not a ControlNetModel{self._other_kind(entry.path)}")

    def load(self, entry: ModelEntry, device: torch.device, dtype: torch.dtype) -> ControlNet:
        from diffusers import ControlNetModel

        try:
            model = ControlNetModel.from_pretrained(entry.path, local_files_only=True, torch_dtype=dtype,
                                                    use_safetensors=True)
        except Exception as exc:  # diffusers raises many types; the artist needs one sentence
            raise self.load_error(entry, "the ControlNet", exc) from exc
        modules_ready(model, device=device)
        return ControlNet(entry.name, device, dtype, self.fingerprint(entry), model=model)

    def build_tiny(self, folder: Path, tiny: TinyFolder) -> None:
        tiny_parts(tiny("sd")).save_pretrained(folder, safe_serialization=True)

    def probe(self, model: ControlNet) -> str:
        import torch

        net = model.model
        latents = torch.zeros(1, net.config.in_channels, 8, 8, device=model.device, dtype=model.dtype)
        control = torch.zeros(1, net.config.conditioning_channels, 8 * model.downscale, 8 * model.downscale,
                              device=model.device, dtype=model.dtype)
        embeds = torch.zeros(1, 77, net.config.cross_attention_dim, device=model.device, dtype=model.dtype)
        with torch.no_grad():
            down, mid = net(latents, 10, encoder_hidden_states=embeds, controlnet_cond=control, return_dict=False)
        return (f"{len(down)} down residuals and a mid residual {tuple(mid.shape)} for 8x8 latents and a "
                f"{8 * model.downscale}x{8 * model.downscale} control image (cross-attention dim "
                f"{net.config.cross_attention_dim})")


def tiny_parts(sd_folder: Path) -> ControlNetModel:
    """The tiny ControlNet, made from the UNet of the tiny SD saved in `sd_folder`, seeded.

    `from_unet` copies the UNet's encoder and zeroes the layers that feed the UNet (a trained
    ControlNet's starting point), so it would change nothing; random weights there make the
    tiny one's effect visible, which is what tests need to prove it is wired in. The conditioning
    embedding's own layers are re-initialised for ReLU (He): with PyTorch's default initialisation
    the control image's signal shrank about 4x per layer, and the tiny ControlNet all but ignored
    the depth it was given (a blank vs a square control image moved its prediction by 1e-5).
    """
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(sd_folder, subfolder="unet", local_files_only=True,
                                                use_safetensors=True)
    torch.manual_seed(SEED)  # the conditioning embedding's first layers are freshly initialised
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=TINY_CONDITIONING_CHANNELS)
    zeroed = [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block,
              controlnet.controlnet_cond_embedding.conv_out]
    embedding = controlnet.controlnet_cond_embedding
    with torch.no_grad():
        for layer in zeroed:
            for tensor in layer.parameters():
                tensor.copy_(torch.randn(tensor.shape) * 0.1)
        for layer in [embedding.conv_in, *embedding.blocks]:
            torch.nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
    return controlnet.eval()


KIND = ControlNetKind()
