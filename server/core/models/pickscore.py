"""PickScore (kind `pickscore`): a CLIPModel fine-tuned to predict which image people prefer for a prompt.

    [models.pickscore]
    kind = "pickscore"
    path = "/models/PickScore_v1"                            # config.json, model.safetensors
    processor = "/models/CLIP-ViT-H-14-laion2B-s32B-b79K"    # its processor's files (default: `path` itself)

PickScore ships without a processor and its reference code borrows
laion/CLIP-ViT-H-14-laion2B-s32B-b79K's, hence the `processor` key; only that folder's processor
files are read (its own weights are not PickScore's). Scores follow the reference code:
`logit_scale.exp() * text_emb @ image_emb.T` with unit embeddings, images as 8-bit RGB and the
prompt cut to 77 tokens; loading and embeddings are `clip.py`'s.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import TYPE_CHECKING

from . import files
from .clip import Clip, ClipKind, model_type
from .clip import tiny_parts as tiny_clip_parts
from .entry import ModelEntry
from .kind import TinyFolder

if TYPE_CHECKING:
    import torch
    from transformers import CLIPModel, CLIPProcessor

#: PickScore_v1's learned temperature: logit_scale.exp() is 100, as in CLIP.
TINY_LOGIT_SCALE = math.log(100.0)


@dataclasses.dataclass
class PickScore(Clip):
    """A loaded PickScore model: CLIP embeddings plus the preference score."""

    def score(self, images: torch.Tensor, prompt: str) -> torch.Tensor:
        """(N,) float32 scores of (N, 3, H, W) RGB images in [0, 1] for one prompt; higher is preferred.

        A softmax over the scores of several candidates gives PickScore's preference probabilities.
        """
        text = self.text_features([prompt])
        image = self.image_features(images)
        return self.model.logit_scale.exp().float() * (text @ image.T)[0]


class PickScoreKind(ClipKind):
    name = "pickscore"
    label = "PickScore"
    expected = ("a transformers CLIPModel folder (config.json, model.safetensors) and, in it or in the folder "
                "`processor` names, the CLIP processor files (preprocessor_config.json or processor_config.json, "
                "tokenizer.json or vocab.json + merges.txt)")
    options = {"processor": "path"}

    def recognise(self, path: Path) -> bool:
        return path.is_dir() and model_type(path) == "clip"

    def check(self, entry: ModelEntry) -> None:
        self.check_model(entry, entry.path)
        self.check_processor(entry, processor_path(entry))

    def defining_files(self, entry: ModelEntry) -> dict[str, Path]:
        found = files.folder_files(entry.path)
        processor = processor_path(entry)
        if processor != entry.path and processor.is_dir():
            found.update({name: file for name, file in files.folder_files(processor, "processor/").items()
                          if file.suffix != ".safetensors"})
        return found

    def load(self, entry: ModelEntry, device: torch.device, dtype: torch.dtype) -> PickScore:
        model, processor = self.load_parts(entry, entry.path, processor_path(entry), device, dtype)
        return PickScore(entry.name, device, dtype, self.fingerprint(entry), model=model, processor=processor)

    def build_tiny(self, folder: Path, tiny: TinyFolder) -> None:
        model, processor = tiny_parts()
        model.save_pretrained(folder / "model")
        processor.save_pretrained(folder / "processor")

    def tiny_entry(self, folder: Path) -> tuple[Path, dict[str, Path]]:
        return folder / "model", {"processor": folder / "processor"}

    def probe(self, model: PickScore) -> str:
        import torch

        images = torch.rand(2, 3, 24, 40, generator=torch.Generator().manual_seed(0))
        scores = model.score(images, "a photo")
        return (f"PickScore on CLIP {model.model.config.projection_dim}-d embeddings, logit scale "
                f"{model.model.logit_scale.exp().item():.1f}; two noise images score "
                f"{scores[0].item():.3f}, {scores[1].item():.3f}")


def processor_path(entry: ModelEntry) -> Path:
    return entry.option("processor") or entry.path


def tiny_parts() -> tuple[CLIPModel, CLIPProcessor]:
    """The tiny CLIP (same seed and configs as the tiny `clip`) with PickScore's temperature, and its processor."""
    import torch

    model, processor = tiny_clip_parts()
    with torch.no_grad():
        model.logit_scale.fill_(TINY_LOGIT_SCALE)
    return model, processor


KIND = PickScoreKind()
