"""The model registry: names an artist picks, mapped to Stable Diffusion weights on local disk.

Everything here is offline: weights never download at run time (render nodes and artists'
workstations often have no internet, and a silent multi-gigabyte download mid-render is worse
than a clear error). `HF_HUB_OFFLINE=1` is set on import and every loader gets
`local_files_only=True`.

A models file (TOML) maps names to paths. It is found at `--models`, else `$CVGEN_MODELS`,
else `~/.config/cvgen/models.toml`; without one only the built-in `tiny` model exists::

    default = "sd15"                                # optional; else "tiny"

    [models.sd15]
    path = "/models/stable-diffusion-v1-5"          # a diffusers folder (model_index.json, unet/, ...)

    [models.sd21]
    path = "/models/v2-1_768-ema-pruned.safetensors"   # a single-file checkpoint
    config = "/models/stable-diffusion-2-1"         # a diffusers folder of the same architecture:
                                                    # its configs (weights not needed) describe the file
    prediction_type = "v_prediction"                # "epsilon" or "v_prediction" (SD 2.x 768 models)
    device = "cuda:1"                               # optional: "cpu", "cuda", "cuda:N", "mps"
    dtype = "float16"                               # optional: "float16", "bfloat16", "float32"

Relative paths resolve against the models file's folder, and `~` expands. `tiny` is reserved
for the built-in model (seeded random weights, see `tiny.py`): it proves plumbing, never quality.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cvgen.protocol.errors import CvgenError

from ..errors import ModelNotFound
from .tiny import TINY_VERSION, ensure_tiny

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Loading progress bars and import-time notices (optional torchvision, ...) are noise in a
# server log and a farm task's output; errors still surface as ModelNotFound.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

if TYPE_CHECKING:
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

BUILTIN = "tiny"
COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
DTYPES = ("float16", "bfloat16", "float32")
PREDICTION_TYPES = ("epsilon", "v_prediction")
ENTRY_KEYS = ("path", "config", "prediction_type", "device", "dtype")
DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
EXPECTED = ("a diffusers folder with model_index.json and unet/, vae/, text_encoder/, tokenizer/, "
            "scheduler/ or a .safetensors checkpoint")


class DeviceError(CvgenError):
    """A requested device or precision does not exist on this machine or is not supported."""

    code = "bad_request"


def cache_dir() -> Path:
    """Where cvgen keeps files it builds itself (the tiny model): `$CVGEN_CACHE` or ~/.cache/cvgen."""
    return Path(os.environ.get("CVGEN_CACHE") or Path.home() / ".cache" / "cvgen").expanduser()


# -- devices -------------------------------------------------------------------------------


def choose_device(device: str | None = None, dtype: str | None = None) -> tuple[torch.device, torch.dtype]:
    """The device and precision to run on: the first GPU in half precision if there is one, else CPU.

    Explicit choices are checked against this machine so a typo in a job or models file fails
    up front with a sentence, not deep inside torch halfway through a render.
    """
    import torch

    chosen = _device(device)
    name = dtype or ("float16" if chosen.type == "cuda" else "float32")
    if name not in DTYPES:
        raise DeviceError(f"Unknown precision {name!r}: use one of {', '.join(DTYPES)}.")
    if name == "float16" and chosen.type == "cpu":
        raise DeviceError("float16 is not supported on the CPU (too slow and inexact there): "
                          "use float32 or bfloat16, or run on a GPU.")
    return chosen, getattr(torch, name)


def _device(device: str | None) -> torch.device:
    import torch

    if device in (None, "auto"):
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if not DEVICE_PATTERN.fullmatch(device):
        raise DeviceError(f"Unknown device {device!r}: use auto, cpu, cuda, cuda:N or mps.")
    chosen = torch.device(device)
    if chosen.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = chosen.index or 0
        if index >= count:
            found = f"GPUs cuda:0 to cuda:{count - 1}" if count else "no CUDA GPU"
            raise DeviceError(f"Device {device!r} is not on this machine: it has {found}.")
        return torch.device("cuda", index)
    if chosen.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError("Device 'mps' is not available: this machine has no Apple GPU torch can use.")
    return chosen


# -- the registry ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelEntry:
    """One configured model: where its files are and how to load them; nothing is loaded yet."""

    name: str
    path: Path
    kind: str
    config: Path | None = None
    prediction_type: str | None = None
    device: str | None = None
    dtype: str | None = None
    builtin: bool = False

    def describe(self) -> dict[str, Any]:
        """A plain, JSON-able summary for `hello` and `cvgen models list`."""
        return {
            "name": self.name,
            "path": str(self.path),
            "kind": self.kind,
            "config": str(self.config) if self.config else None,
            "prediction_type": self.prediction_type,
            "device": self.device,
            "dtype": self.dtype,
            "builtin": self.builtin,
        }


def _builtin_entry() -> ModelEntry:
    """The tiny model's entry; its folder is built on first load, not here (listing stays cheap)."""
    return ModelEntry(BUILTIN, cache_dir() / "models" / f"tiny-v{TINY_VERSION}", "diffusers", builtin=True)


class ModelRegistry:
    """The models a server or render node can use, by name: the built-in tiny plus a models file."""

    def __init__(self, entries: dict[str, ModelEntry], default: str = BUILTIN, source: Path | None = None) -> None:
        self._entries = {**entries, BUILTIN: _builtin_entry()}
        self._default = default
        self.source = source

    @classmethod
    def load(cls, path: str | Path | None = None) -> ModelRegistry:
        """Read the models file (see the module doc for where it is looked for)."""
        file = _models_file(path)
        if file is None:
            return cls({})
        data = _read_toml(file)
        unknown = sorted(set(data) - {"default", "models"})
        if unknown:
            raise ModelNotFound(f"Models file {file}: unknown setting {unknown[0]!r} "
                                "(the top level may only hold `default` and [models.NAME] tables).")
        tables = data.get("models", {})
        if not isinstance(tables, dict):
            raise ModelNotFound(f"Models file {file}: `models` must be tables like [models.sd15].")
        entries = {name: _parse_entry(file, name, table) for name, table in tables.items()}
        default = data.get("default", BUILTIN)
        if default not in entries and default != BUILTIN:
            raise ModelNotFound(f"Models file {file}: default model {default!r} is not one of its models "
                                f"({', '.join([*entries, BUILTIN])}).")
        return cls(entries, default, file)

    def names(self) -> list[str]:
        return list(self._entries)

    @property
    def default(self) -> str:
        return self._default

    def entry(self, name: str) -> ModelEntry:
        try:
            return self._entries[name]
        except KeyError:
            where = f" in {self.source}" if self.source else " (no models file: set CVGEN_MODELS or pass --models)"
            raise ModelNotFound(f"No model named {name!r}{where}. "
                                f"Configured models: {', '.join(self.names())}.") from None

    def describe(self) -> list[dict[str, Any]]:
        return [{**entry.describe(), "default": name == self._default} for name, entry in self._entries.items()]


def _models_file(path: str | Path | None) -> Path | None:
    """The models file to read: an explicit path must exist; the per-user default may be absent."""
    explicit = path or os.environ.get("CVGEN_MODELS")
    if explicit:
        file = Path(explicit).expanduser()
        if not file.is_file():
            raise ModelNotFound(f"Models file {file} does not exist.")
        return file
    user = Path.home() / ".config" / "cvgen" / "models.toml"
    return user if user.is_file() else None


def _read_toml(file: Path) -> dict[str, Any]:
    try:
        with file.open("rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ModelNotFound(f"Models file {file} is not valid TOML: {exc}.") from exc
    except OSError as exc:
        raise ModelNotFound(f"Models file {file} cannot be read: {exc.strerror}.") from exc


def _parse_entry(file: Path, name: str, table: Any) -> ModelEntry:
    """One [models.NAME] table, checked strictly: a typo'd key would otherwise be silently ignored."""
    where = f"Models file {file}, model {name!r}"
    if name == BUILTIN:
        raise ModelNotFound(f"{where}: the name 'tiny' is reserved for the built-in test model; pick another name.")
    if not isinstance(table, dict):
        raise ModelNotFound(f"{where}: must be a table with at least `path = \"...\"`.")
    unknown = sorted(set(table) - set(ENTRY_KEYS))
    if unknown:
        raise ModelNotFound(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(ENTRY_KEYS)}).")
    for key, value in table.items():
        if not isinstance(value, str):
            raise ModelNotFound(f"{where}: {key} must be a string in quotes.")
    if "path" not in table:
        raise ModelNotFound(f"{where}: has no `path`.")
    _check_choice(where, "prediction_type", table.get("prediction_type"), PREDICTION_TYPES)
    _check_choice(where, "dtype", table.get("dtype"), DTYPES)
    if "device" in table and not DEVICE_PATTERN.fullmatch(table["device"]):
        raise ModelNotFound(f"{where}: unknown device {table['device']!r} (use auto, cpu, cuda, cuda:N or mps).")
    path = _resolve(file, table["path"])
    kind = "single_file" if path.suffix == ".safetensors" else "diffusers"
    if "config" in table and kind != "single_file":
        raise ModelNotFound(f"{where}: `config` is only used with a .safetensors checkpoint, "
                            f"and {path} is not one.")
    config = _resolve(file, table["config"]) if "config" in table else None
    return ModelEntry(name, path, kind, config, table.get("prediction_type"), table.get("device"), table.get("dtype"))


def _check_choice(where: str, key: str, value: str | None, allowed: tuple[str, ...]) -> None:
    if value is not None and value not in allowed:
        raise ModelNotFound(f"{where}: {key} {value!r} is not one of {', '.join(allowed)}.")


def _resolve(file: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else (file.parent / path).resolve()


# -- loading ---------------------------------------------------------------------------------


@dataclass
class SDModel:
    """A loaded Stable Diffusion model, its parts on one device and in one precision, ready for inference."""

    name: str
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler: DDIMScheduler
    device: torch.device
    dtype: torch.dtype
    fingerprint: str
    prediction_type: str

    def encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        """CLIP embeddings (N, 77, dim), computed exactly as diffusers' pipelines do, so ours match theirs."""
        import torch

        tokens = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                                truncation=True, return_tensors="pt")
        use_mask = getattr(self.text_encoder.config, "use_attention_mask", False)
        mask = tokens.attention_mask.to(self.device) if use_mask else None
        with torch.no_grad():
            embeds = self.text_encoder(tokens.input_ids.to(self.device), attention_mask=mask)[0]
        return embeds.to(device=self.device, dtype=self.text_encoder.dtype)


def load_sd_model(entry: ModelEntry, device: str | None = None, dtype: str | None = None) -> SDModel:
    """Load a model's weights from disk onto a device; any problem is one ModelNotFound naming the path."""
    torch_device, torch_dtype = choose_device(device or entry.device, dtype or entry.dtype)
    path = ensure_tiny(entry.path.parent) if entry.builtin else entry.path
    if entry.kind == "single_file":
        parts = _load_single_file(entry, torch_dtype)
        files = {f"checkpoint/{entry.path.name}": entry.path, **_folder_files(entry.config, "config/")}
        fingerprint = _fingerprint(files, entry.prediction_type)
    else:
        parts = _load_diffusers_folder(entry.name, path, torch_dtype)
        fingerprint = _fingerprint(_folder_files(path), entry.prediction_type)
    parts["scheduler"] = _ddim(parts["scheduler"], entry.prediction_type)
    for part in ("unet", "vae", "text_encoder"):
        parts[part] = parts[part].to(torch_device).eval().requires_grad_(False)
    return SDModel(entry.name, device=torch_device, dtype=torch_dtype, fingerprint=fingerprint,
                   prediction_type=parts["scheduler"].config.prediction_type, **parts)


def _load_diffusers_folder(name: str, path: Path, torch_dtype: torch.dtype) -> dict[str, Any]:
    _check_diffusers_folder(name, path)
    parts: dict[str, Any] = {}
    for part in COMPONENTS:
        try:
            parts[part] = _load_part(path, part, torch_dtype)
        except Exception as exc:  # diffusers/transformers raise many types; the artist needs one sentence
            pickled = not any((path / part).glob("*.safetensors")) and any((path / part).glob("*.bin"))
            why = (f"its {part}/ has only pickle (.bin) weights, which cvgen does not load because a pickle can "
                   "run code; convert them to .safetensors" if pickled else f"its {part}/ could not be loaded")
            raise _broken(name, path, why, exc) from exc
    return parts


def _load_part(path: Path, part: str, torch_dtype: torch.dtype) -> Any:
    """One component from its subfolder as diffusers saves it; the scheduler only as its config."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    if part == "scheduler":
        return DDIMScheduler.load_config(path, subfolder=part, local_files_only=True)
    if part == "tokenizer":
        return CLIPTokenizer.from_pretrained(path, subfolder=part, local_files_only=True)
    network = {"unet": UNet2DConditionModel, "vae": AutoencoderKL, "text_encoder": CLIPTextModel}[part]
    # Weights only from safetensors: a .bin is a pickle, which can run code when loaded.
    return network.from_pretrained(path, subfolder=part, local_files_only=True, torch_dtype=torch_dtype,
                                   use_safetensors=True)


def _check_diffusers_folder(name: str, path: Path) -> None:
    if not path.exists():
        raise _broken(name, path, "it does not exist")
    if path.is_file():
        what = ("a .ckpt/.pt pickle checkpoint is not supported (convert it to .safetensors)"
                if path.suffix in (".ckpt", ".pt", ".pth", ".bin") else "it is a file of an unknown type")
        raise _broken(name, path, what)
    if not (path / "model_index.json").is_file():
        raise _broken(name, path, "the folder has no model_index.json")
    missing = [part for part in COMPONENTS if not (path / part).is_dir()]
    if missing:
        raise _broken(name, path, f"the folder lacks {', '.join(part + '/' for part in missing)}")


def _load_single_file(entry: ModelEntry, torch_dtype: torch.dtype) -> dict[str, Any]:
    from diffusers import StableDiffusionPipeline

    if entry.config is None:
        raise _broken(entry.name, entry.path, "offline single-file checkpoints need "
                      "`config = \"<diffusers folder of the same architecture>\"` in the models file")
    if not entry.path.is_file():
        raise _broken(entry.name, entry.path, "it does not exist")
    if not (entry.config / "model_index.json").is_file():
        raise _broken(entry.name, entry.config, "its `config` folder has no model_index.json")
    try:
        pipe = StableDiffusionPipeline.from_single_file(
            str(entry.path), config=str(entry.config), local_files_only=True, torch_dtype=torch_dtype,
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
    except Exception as exc:  # a damaged file or one for another architecture: say which file
        raise _broken(entry.name, entry.path, "it is damaged or does not match the architecture of "
                      f"its config {entry.config}", exc) from exc
    return {**{part: getattr(pipe, part) for part in COMPONENTS}, "scheduler": pipe.scheduler.config}


def _broken(name: str, path: Path, why: str, cause: Exception | None = None) -> ModelNotFound:
    """The one error shape for unusable model files: which model, which path, what is wrong, what was expected."""
    detail = ""
    if cause is not None:
        first = (str(cause).strip().splitlines() or [""])[0][:200]
        detail = f" (details: {type(cause).__name__}: {first})"
    return ModelNotFound(f"Model {name!r} cannot be loaded from {path}: {why}. Expected {EXPECTED}.{detail}")


def _ddim(config: Any, prediction_type: str | None) -> DDIMScheduler:
    """Every op samples and inverts with DDIM, built from the model's own noise schedule.

    Folders ship older configs (Stable Diffusion 1.4's is PNDM's, with no `clip_sample`, which
    DDIM defaults to on): clamping or thresholding the predicted clean latent is meant for pixel
    models, changes every step and cannot be inverted, so both are off whatever the config says.
    `steps_offset` is 1 as diffusers' Stable Diffusion pipelines make it for every config (the
    oldest lack it, and DDIM's default 0 shifts every timestep), so our steps are diffusers' steps.
    """
    from diffusers import DDIMScheduler

    overrides: dict[str, Any] = {"clip_sample": False, "thresholding": False, "steps_offset": 1}
    if prediction_type:
        overrides["prediction_type"] = prediction_type
    return DDIMScheduler.from_config(config, **overrides)


def _folder_files(folder: Path | None, prefix: str = "") -> dict[str, Path]:
    """The files that define a diffusers model (model_index.json and its component folders, not READMEs),
    by their path inside the folder: where the folder sits does not change the model."""
    if folder is None:
        return {}
    found = [folder / "model_index.json"]
    for part in COMPONENTS:
        found.extend(p for p in (folder / part).rglob("*") if p.is_file())
    return {prefix + file.relative_to(folder).as_posix(): file for file in found}


def _fingerprint(files: dict[str, Path], prediction_type: str | None) -> str:
    """A short, stable id of the weights for cache keys: names, sizes and mtimes (hashing gigabytes is too slow).

    The prediction-type override is included because it changes what the UNet's output means.
    """
    digest = hashlib.sha256(f"prediction_type={prediction_type}\n".encode())
    for label, file in sorted(files.items()):
        stat = file.stat()
        digest.update(f"{label}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


# -- the per-worker cache -----------------------------------------------------------------------


class ModelCache:
    """Keeps loaded models per (name, device, dtype) so a worker loads each once; thread-safe."""

    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry
        self._models: dict[tuple[str, str, str], SDModel] = {}
        self._locks: dict[tuple[str, str, str], threading.Lock] = {}
        self._guard = threading.Lock()

    def get(self, name: str, device: str | None = None, dtype: str | None = None) -> SDModel:
        """The loaded model; concurrent callers of one key wait for a single load, other keys load in parallel."""
        entry = self.registry.entry(name)
        torch_device, torch_dtype = choose_device(device or entry.device, dtype or entry.dtype)
        key = (name, str(torch_device), str(torch_dtype).removeprefix("torch."))
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if key not in self._models:
                self._models[key] = load_sd_model(entry, key[1], key[2])
            return self._models[key]
