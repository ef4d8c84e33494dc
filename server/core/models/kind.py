"""What a kind of model is to the registry: one subclass per kind, in a module of its own.

A kind says what its path must hold (checked before anything loads, with an error naming the
path and what is missing), how it loads into the objects the ops use, how its tiny built-in is
made, and what one tiny forward pass looks like for `cvgen models check`. Adding a kind is one
new module and one line in `kinds.py`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from ...errors import ModelNotFound
from . import files
from .entry import ModelEntry

if TYPE_CHECKING:
    import torch

#: A kind's extra key in a models file: "path" (resolved against the file's folder) or its allowed values.
OptionRule = str | tuple[str, ...]
PICKLE_REFUSAL = ("its weights are pickles (.bin/.ckpt/.pt), which cvgen does not load because a pickle can run "
                  "code; convert them to .safetensors")
#: Gives the folder of another built-in kind's tiny model, building it first if needed.
TinyFolder = Callable[[str], Path]


@dataclasses.dataclass
class LoadedModel:
    """A model loaded on one device in one precision; subclasses add the kind's parts as fields.

    Every `torch.nn.Module` field counts towards the model cache's memory budget.
    """

    name: str
    device: torch.device
    dtype: torch.dtype
    fingerprint: str

    def modules(self) -> list[torch.nn.Module]:
        import torch

        found = [getattr(self, f.name) for f in dataclasses.fields(self)]
        return [value for value in found if isinstance(value, torch.nn.Module)]


class Kind:
    """The rules of one kind of model; subclasses fill the class attributes and override the methods."""

    #: The `kind` value in a models file ("controlnet").
    name: ClassVar[str]
    #: How an artist calls it in a sentence ("ControlNet").
    label: ClassVar[str]
    #: What the path must be, said to the person whose entry is wrong.
    expected: ClassVar[str]
    #: The kind's own keys in a models-file entry.
    options: ClassVar[dict[str, OptionRule]] = {}
    #: Bumped whenever the tiny built-in's configs change, so a stale saved copy is rebuilt.
    tiny_version: ClassVar[str] = "1"

    @property
    def builtin_name(self) -> str:
        return "tiny" if self.name == "sd" else f"tiny-{self.name.replace('_', '-')}"

    def validate(self, where: str, path: Path, options: dict[str, Any]) -> None:
        """Refuse option combinations that cannot work, as the models file is read (`where` names the entry)."""

    def check(self, entry: ModelEntry) -> None:
        """Raise `self.broken(...)` naming what is missing or wrong; called before every load."""
        raise NotImplementedError

    def recognise(self, path: Path) -> bool:
        """Whether `path` looks like a model of this kind (to tell "a folder of another kind")."""
        raise NotImplementedError

    def load(self, entry: ModelEntry, device: torch.device, dtype: torch.dtype) -> Any:
        """The loaded model (a `LoadedModel`), its modules in eval mode without gradients."""
        raise NotImplementedError

    def build_tiny(self, folder: Path, tiny: TinyFolder) -> None:
        """Write the tiny built-in into the empty `folder`, in the real on-disk format of the kind."""
        raise NotImplementedError

    def tiny_entry(self, folder: Path) -> tuple[Path, dict[str, Any]]:
        """The built-in's `path` and options, given the folder `build_tiny` wrote."""
        return folder, {}

    def probe(self, model: Any) -> str:
        """Run one tiny forward pass of a loaded model; a one-line summary of what came out."""
        raise NotImplementedError

    def weight_files(self, entry: ModelEntry) -> list[Path]:
        """The safetensors files whose tensors are loaded (for sizes and parameter counts)."""
        return files.weight_files(entry.path)

    def defining_files(self, entry: ModelEntry) -> dict[str, Path]:
        """The files whose change changes the model (for the fingerprint)."""
        found = files.folder_files(entry.path)
        for key, rule in self.options.items():
            value = entry.option(key)
            if rule == "path" and value is not None and Path(value).exists():
                found.update(files.folder_files(Path(value), f"{key}/"))
        return found

    def fingerprint(self, entry: ModelEntry, extra: str = "") -> str:
        return files.fingerprint(self.defining_files(entry), extra)

    def broken(self, entry: ModelEntry, why: str, cause: BaseException | None = None,
               path: Path | None = None) -> ModelNotFound:
        """The one error shape for unusable model files: which model, which path, what is wrong, what was expected."""
        detail = ""
        if cause is not None:
            first = (str(cause).strip().splitlines() or [""])[0][:200]
            detail = f" (details: {type(cause).__name__}: {first})"
        return ModelNotFound(f"Model {entry.name!r} ({self.label}) cannot be loaded from {path or entry.path}: "
                             f"{why}. Expected {self.expected}.{detail}")

    def require_folder(self, entry: ModelEntry, needed: tuple[str, ...], path: Path | None = None) -> None:
        """The folder exists and holds `needed`; else the error says which, or that it holds pickles only."""
        folder = path or entry.path
        if not folder.exists():
            raise self.broken(entry, "it does not exist", path=folder)
        if not folder.is_dir():
            raise self.broken(entry, self._file_instead(folder), path=folder)
        gone = files.missing(folder, needed)
        if gone and files.pickle_only(folder):
            raise self.broken(entry, PICKLE_REFUSAL, path=folder)
        if gone:
            raise self.broken(entry, f"the folder lacks {', '.join(gone)}{self._other_kind(folder)}", path=folder)

    def require_file(self, entry: ModelEntry, path: Path | None = None) -> None:
        """A single `.safetensors` file exists; a pickle or a folder is named as such."""
        file = path or entry.path
        if not file.exists():
            raise self.broken(entry, "it does not exist", path=file)
        if file.is_dir():
            raise self.broken(entry, f"it is a folder, not a .safetensors file{self._other_kind(file)}", path=file)
        if file.suffix != ".safetensors":
            raise self.broken(entry, self._file_instead(file), path=file)

    @staticmethod
    def _file_instead(path: Path) -> str:
        if path.suffix in files.PICKLE_SUFFIXES:
            return "it is a pickle checkpoint, which cvgen does not load because a pickle can run code (convert it to .safetensors)"
        return f"it is a file of an unknown type ({path.suffix or 'no extension'})"

    def _other_kind(self, path: Path) -> str:
        from .kinds import KINDS

        for other in KINDS.values():
            if other.name != self.name and other.recognise(path):
                return f"; it looks like a {other.label} model (kind = \"{other.name}\")"
        return ""

    def load_error(self, entry: ModelEntry, what: str, cause: BaseException, path: Path | None = None) -> ModelNotFound:
        """An exception from diffusers/transformers while loading `what`, as one sentence about the files."""
        return self.broken(entry, f"{what} could not be loaded (damaged, or not the architecture its config says)",
                           cause, path)


def modules_ready(*modules: Any, device: torch.device, dtype: torch.dtype | None = None) -> None:
    """Move modules to the device (and precision) in eval mode without gradients: inference only."""
    for module in modules:
        if dtype is not None:
            module.to(device=device, dtype=dtype)
        else:
            module.to(device)
        module.eval().requires_grad_(False)
