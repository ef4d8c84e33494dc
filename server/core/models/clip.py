"""CLIP (kind `clip`): a transformers `CLIPModel` folder with its processor, for CLIP scores and guidance.

    [models.clip-l]
    kind = "clip"
    path = "/models/clip-vit-large-patch14"   # config.json, model.safetensors, processor files

The processor files are what `CLIPProcessor.save_pretrained` writes: the image processor's
`preprocessor_config.json` (older folders) or `processor_config.json` (transformers 5), and the
tokenizer's `tokenizer.json` or `vocab.json` + `merges.txt`. Both are checked before loading: a
folder with `tokenizer_config.json` alone loads a tokenizer that silently maps text to unknown tokens.

Images reach the processor as 8-bit RGB (`to_uint8`): the official CLIP-score and PickScore
scripts feed PIL images or uint8 tensors, so a frame scores here exactly as the same frame saved
as a PNG scores there. Processors load with transformers' PIL backend (`backend="pil"`): it is the
resampling those scripts used (transformers 4's default), and without pinning it a node that
happens to have torchvision would resize differently and score the same frame differently.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING

from .entry import ModelEntry
from .kind import Kind, LoadedModel, TinyFolder, modules_ready
from .sd import SEED
from .tokenizer import tiny_clip_tokenizer

if TYPE_CHECKING:
    import numpy as np
    import torch
    from transformers import CLIPModel, CLIPProcessor

IMAGE_PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
TINY_IMAGE_SIZE = 32


def to_uint8(images: torch.Tensor) -> list[np.ndarray]:
    """(N, 3, H, W) display-referred RGB in [0, 1], on any device, as the 8-bit HWC arrays processors expect.

    Values outside [0, 1] are clipped and the rest rounded, as saving the frame to an 8-bit file would.
    """
    import torch

    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (N, 3, H, W) RGB, got shape {tuple(images.shape)}")
    quantised = (images.detach().float().clamp(0, 1) * 255).round().to("cpu", torch.uint8)
    return list(quantised.permute(0, 2, 3, 1).numpy())


def model_type(path: Path) -> str | None:
    """The `model_type` of a transformers folder's config.json (None when there is none)."""
    try:
        return json.loads((path / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


def weights_file(path: Path) -> str:
    """The transformers weights a folder must hold: one file, or the index of a sharded set."""
    index = "model.safetensors.index.json"
    return index if (path / index).is_file() else "model.safetensors"


def processor_missing(path: Path) -> list[str]:
    """What a CLIP processor folder lacks, in words (empty when it is complete)."""
    gone = []
    if not any((path / name).is_file() for name in IMAGE_PROCESSOR_FILES):
        gone.append(" or ".join(IMAGE_PROCESSOR_FILES))
    bpe = (path / "vocab.json").is_file() and (path / "merges.txt").is_file()
    if not (path / "tokenizer.json").is_file() and not bpe:
        gone.append("tokenizer.json (or vocab.json and merges.txt)")
    return gone


@dataclasses.dataclass
class Clip(LoadedModel):
    """A loaded CLIP model and its processor: embeddings for images and texts, L2-normalised."""

    model: CLIPModel
    processor: CLIPProcessor

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, D) unit embeddings of (N, 3, H, W) RGB in [0, 1], preprocessed as the official scripts do."""
        import torch

        pixels = self.processor(images=to_uint8(images), return_tensors="pt").pixel_values
        with torch.no_grad():
            embeds = self.model.get_image_features(pixel_values=pixels.to(self.device, self.dtype)).pooler_output
        return torch.nn.functional.normalize(embeds.float(), dim=-1)

    def text_features(self, texts: list[str]) -> torch.Tensor:
        """(N, D) unit embeddings of texts, cut to the model's context length (77 tokens) as PickScore does."""
        import torch

        tokens = self.processor(text=texts, padding=True, truncation=True,
                                max_length=self.model.config.text_config.max_position_embeddings, return_tensors="pt")
        with torch.no_grad():
            embeds = self.model.get_text_features(input_ids=tokens.input_ids.to(self.device),
                                                  attention_mask=tokens.attention_mask.to(self.device)).pooler_output
        return torch.nn.functional.normalize(embeds.float(), dim=-1)


class ClipKind(Kind):
    name = "clip"
    label = "CLIP"
    expected = ("a transformers CLIPModel folder: config.json, model.safetensors and the processor files "
                "(preprocessor_config.json or processor_config.json, tokenizer.json or vocab.json + merges.txt)")

    def recognise(self, path: Path) -> bool:
        return path.is_dir() and model_type(path) == "clip" and not processor_missing(path)

    def check(self, entry: ModelEntry) -> None:
        self.check_model(entry, entry.path)
        self.check_processor(entry, entry.path)

    def check_model(self, entry: ModelEntry, path: Path) -> None:
        """A CLIPModel's config and safetensors weights are in `path`."""
        self.require_folder(entry, ("config.json", weights_file(path)), path=path)
        found = model_type(path)
        if found != "clip":
            raise self.broken(entry, f"its config.json is for a {found or 'unknown'} model, not a CLIP one"
                              f"{self._other_kind(path)}", path=path)

    def check_processor(self, entry: ModelEntry, path: Path) -> None:
        """The CLIP processor's image and tokenizer files are in `path`."""
        if not path.is_dir():
            raise self.broken(entry, "the processor folder does not exist", path=path)
        gone = processor_missing(path)
        if gone:
            raise self.broken(entry, f"it lacks the processor's {'; '.join(gone)}{self._other_kind(path)}", path=path)

    def load(self, entry: ModelEntry, device: torch.device, dtype: torch.dtype) -> Clip:
        model, processor = self.load_parts(entry, entry.path, entry.path, device, dtype)
        return Clip(entry.name, device, dtype, self.fingerprint(entry), model=model, processor=processor)

    def load_parts(self, entry: ModelEntry, model_path: Path, processor_path: Path,
                   device: torch.device, dtype: torch.dtype) -> tuple[CLIPModel, CLIPProcessor]:
        """The CLIPModel (every weight from the file, none left random) and its processor, ready for inference."""
        from transformers import CLIPModel, CLIPProcessor

        try:
            model, info = CLIPModel.from_pretrained(model_path, local_files_only=True, use_safetensors=True,
                                                    dtype=dtype, output_loading_info=True)
        except Exception as exc:  # transformers raises many types; the artist needs one sentence
            raise self.load_error(entry, "its CLIP model", exc, path=model_path) from exc
        if info["missing_keys"]:
            raise self.broken(entry, f"its weights lack {len(info['missing_keys'])} tensors of the architecture in "
                              f"config.json (e.g. {min(info['missing_keys'])}), which would be left random",
                              path=model_path)
        try:
            processor = CLIPProcessor.from_pretrained(processor_path, local_files_only=True, backend="pil")
        except Exception as exc:
            raise self.load_error(entry, "its CLIP processor", exc, path=processor_path) from exc
        modules_ready(model, device=device)
        return model, processor

    def build_tiny(self, folder: Path, tiny: TinyFolder) -> None:
        model, processor = tiny_parts()
        model.save_pretrained(folder)
        processor.save_pretrained(folder)

    def probe(self, model: Clip) -> str:
        import torch

        images = torch.rand(2, 3, 24, 40, generator=torch.Generator().manual_seed(0))
        image = model.image_features(images)
        text = model.text_features(["a photo", "a drawing"])
        similarity = (image @ text.T).diagonal().tolist()
        return (f"CLIP {model.model.config.projection_dim}-d embeddings, image size "
                f"{model.model.config.vision_config.image_size}; two noise images vs two prompts: cosine "
                f"{similarity[0]:.3f}, {similarity[1]:.3f}")


def tiny_parts() -> tuple[CLIPModel, CLIPProcessor]:
    """The tiny CLIP model (seeded random weights, in eval mode) and its processor."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor

    torch.manual_seed(SEED)
    config = CLIPConfig(
        text_config={"bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1, "hidden_size": 32,
                     "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 2,
                     "vocab_size": 1000, "max_position_embeddings": 77},
        vision_config={"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 2,
                       "image_size": TINY_IMAGE_SIZE, "patch_size": 8},
        projection_dim=16,
    )
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": TINY_IMAGE_SIZE},
                                         crop_size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE})
    return CLIPModel(config).eval(), CLIPProcessor(image_processor=image_processor, tokenizer=tiny_clip_tokenizer())


KIND = ClipKind()
