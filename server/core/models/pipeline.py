"""Kinds stored as a diffusers pipeline folder (SD, SVD, text-to-video): one check for all of them.

A pipeline folder is model_index.json plus one subfolder per component; what tells the kinds
apart is the UNet's class. Every network subfolder must hold its config and safetensors weights
before anything loads, so a load never fails halfway through a multi-gigabyte model.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from . import files
from .entry import ModelEntry
from .kind import PICKLE_REFUSAL, Kind


def unet_class(path: Path) -> str | None:
    """The `_class_name` of a pipeline folder's unet/config.json (None when there is none)."""
    return files.read_config(path / "unet" / "config.json").get("_class_name")


class PipelineKind(Kind):
    """A kind whose path is a diffusers pipeline folder; subclasses name its parts and UNet class."""

    #: Every subfolder the pipeline needs.
    components: ClassVar[tuple[str, ...]]
    #: The subfolders that hold network weights (config.json and safetensors).
    networks: ClassVar[tuple[str, ...]]
    unet_class: ClassVar[str]

    def recognise(self, path: Path) -> bool:
        return path.is_dir() and unet_class(path) == self.unet_class

    def check(self, entry: ModelEntry) -> None:
        self.require_folder(entry, ("model_index.json", *(part + "/" for part in self.components)))
        if not self.recognise(entry.path):
            raise self.broken(entry, f"its unet/ is a {unet_class(entry.path)}, not a {self.unet_class}"
                              f"{self._other_kind(entry.path)}")
        for part in self.networks:
            folder = entry.path / part
            self.require_folder(entry, ("config.json",), path=folder)
            if not files.weight_files(folder):
                why = PICKLE_REFUSAL if files.pickle_only(folder) else "the folder has no .safetensors weights"
                raise self.broken(entry, why, path=folder)
