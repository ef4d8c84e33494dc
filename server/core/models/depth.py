"""Depth estimators (kind `depth`): a transformers depth-estimation folder (Depth Anything, DPT).

    [models.depth-anything]
    kind = "depth"
    path = "/models/Depth-Anything-V2-Small-hf"   # config.json, model.safetensors, preprocessor_config.json

Only models that predict relative inverse depth are accepted (`model_type` depth_anything or
dpt, with a depth-estimation head): ops condition depth ControlNets on exactly that quantity,
bigger meaning nearer. Frames reach the model's own image processor as 8-bit RGB (see
`clip.to_uint8`), as in transformers' documented usage, so a prediction here equals the
documented one for the same frame saved as a PNG; the processor is pinned to transformers' PIL
backend for the reason `clip.py` gives.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .clip import model_type, to_uint8, weights_file
from .entry import ModelEntry
from .kind import Kind, LoadedModel, TinyFolder, modules_ready
from .sd import SEED

if TYPE_CHECKING:
    import torch

#: `model_type`s whose depth heads predict relative inverse depth.
DEPTH_TYPES = ("depth_anything", "dpt")
TINY_IMAGE_SIZE = 56


def architectures(path: Path) -> list[str]:
    try:
        return list(json.loads((path / "config.json").read_text()).get("architectures") or [])
    except (OSError, ValueError, AttributeError, TypeError):
        return []


def is_depth_folder(path: Path) -> bool:
    """A config of a depth type whose head estimates depth (a DPT segmentation folder would load with a random head)."""
    found = architectures(path)
    return model_type(path) in DEPTH_TYPES and (not found or any(a.endswith("ForDepthEstimation") for a in found))


@dataclasses.dataclass
class DepthEstimator(LoadedModel):
    """A loaded depth model and its image processor."""

    model: Any
    processor: Any

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """(N, H, W) float32 relative inverse depth (bigger = nearer) of (N, 3, H, W) RGB in [0, 1], on their device.

        The prediction is resized back to the input's size bicubically, as transformers'
        `post_process_depth_estimation` does for these models: smooth surfaces stay smooth (bilinear
        leaves creases at the model's patch grid), and results equal the documented ones.
        """
        import torch

        pixels = self.processor(images=to_uint8(images), return_tensors="pt").pixel_values
        with torch.no_grad():
            depth = self.model(pixel_values=pixels.to(self.device, self.dtype)).predicted_depth
            depth = torch.nn.functional.interpolate(depth.float().unsqueeze(1), size=tuple(images.shape[-2:]),
                                                    mode="bicubic", align_corners=False)
        return depth.squeeze(1).to(images.device)


class Depth(Kind):
    name = "depth"
    label = "depth estimator"
    expected = ("a transformers depth-estimation folder (Depth Anything or DPT): config.json, model.safetensors "
                "and preprocessor_config.json")

    def recognise(self, path: Path) -> bool:
        return path.is_dir() and is_depth_folder(path)

    def check(self, entry: ModelEntry) -> None:
        self.require_folder(entry, ("config.json", weights_file(entry.path), "preprocessor_config.json"))
        if not is_depth_folder(entry.path):
            what = model_type(entry.path) or "unknown"
            heads = ", ".join(architectures(entry.path))
            raise self.broken(entry, f"its config.json is for a {what} model{f' ({heads})' if heads else ''}, "
                              f"not a depth estimator of type {' or '.join(DEPTH_TYPES)}{self._other_kind(entry.path)}")

    def load(self, entry: ModelEntry, device: torch.device, dtype: torch.dtype) -> DepthEstimator:
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation

        try:
            model, info = AutoModelForDepthEstimation.from_pretrained(
                entry.path, local_files_only=True, use_safetensors=True, dtype=dtype, output_loading_info=True)
        except Exception as exc:  # transformers raises many types; the artist needs one sentence
            raise self.load_error(entry, "its depth model", exc) from exc
        if info["missing_keys"]:
            raise self.broken(entry, f"its weights lack {len(info['missing_keys'])} tensors of the architecture in "
                              f"config.json (e.g. {min(info['missing_keys'])}), which would be left random")
        try:
            processor = AutoImageProcessor.from_pretrained(entry.path, local_files_only=True, backend="pil")
        except Exception as exc:
            raise self.load_error(entry, "its preprocessor_config.json", exc) from exc
        modules_ready(model, device=device)
        return DepthEstimator(entry.name, device, dtype, self.fingerprint(entry), model=model, processor=processor)

    def build_tiny(self, folder: Path, tiny: TinyFolder) -> None:
        model, processor = tiny_parts()
        model.save_pretrained(folder)
        processor.save_pretrained(folder)

    def probe(self, model: DepthEstimator) -> str:
        import torch

        ramp = torch.linspace(0, 1, 48).expand(1, 3, 32, 48)
        depth = model.predict(ramp)
        return (f"{model.model.config.model_type} depth estimator; a 48x32 ramp gives {tuple(depth.shape)} "
                f"inverse depth in [{depth.min().item():.3g}, {depth.max().item():.3g}]")


def tiny_parts() -> tuple[Any, Any]:
    """A tiny Depth Anything (Dinov2 backbone, seeded random weights, eval mode) and its DPT image processor."""
    import torch
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessorPil

    torch.manual_seed(SEED)
    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=37,
                            image_size=TINY_IMAGE_SIZE, patch_size=14,
                            out_features=["stage1", "stage2", "stage3", "stage4"], reshape_hidden_states=False)
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=32, patch_size=14,
                                 neck_hidden_sizes=[16, 16, 32, 32], fusion_hidden_size=16, head_hidden_size=16,
                                 depth_estimation_type="relative")
    # Depth Anything's own preprocessing, at the tiny size: keep the aspect ratio, multiples of the patch.
    processor = DPTImageProcessorPil(size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE}, keep_aspect_ratio=True,
                                  ensure_multiple_of=14, resample=3, do_pad=False,
                                  image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    model = DepthAnythingForDepthEstimation(config).eval()
    # At transformers' initial scale (0.02) the head's final ReLU zeroes nearly everything (depth ~1e-8),
    # so no test could tell two predictions apart: redraw the neck's and head's convolutions at PyTorch's
    # scale and lift the last one, which gives depth varying over about 0.4-1.0.
    for module in [*model.neck.modules(), *model.head.modules()]:
        if isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            module.reset_parameters()
    with torch.no_grad():
        model.head.conv3.weight.mul_(20)
        model.head.conv3.bias.fill_(1.0)
    return model, processor


KIND = Depth()
