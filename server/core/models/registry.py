"""The models file: names an artist picks, mapped to model files on local disk, by kind.

A models file (TOML) is found at `--models`, else `$CVGEN_MODELS`, else
`~/.config/cvgen/models.toml`; without one only the built-in tiny models exist::

    default = "sd15"                      # the default `sd` model (also `default_sd`)
    default_controlnet = "depth"          # `default_<kind>` for every other kind

    [models.sd15]
    path = "/models/stable-diffusion-v1-5"
    device = "cuda:1"                     # optional: "cpu", "cuda", "cuda:N", "mps"
    dtype = "float16"                     # optional: "float16", "bfloat16", "float32"

    [models.depth]
    kind = "controlnet"                   # `sd` when absent, so older files read unchanged
    path = "/models/control_v11f1p_sd15_depth"

Each kind's module documents its own keys. Relative paths resolve against the models file's
folder, and `~` expands. A kind without a `default_<kind>` defaults to its one configured entry
when there is exactly one, else to its built-in tiny model. The built-ins' names (`tiny`,
`tiny-controlnet`, ...) are reserved.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from ...errors import ModelNotFound
from .builtin import builtin_entries
from .devices import DEVICE_PATTERN, DTYPES
from .entry import ModelEntry
from .kinds import KINDS

COMMON_KEYS = ("kind", "path", "device", "dtype")


class ModelRegistry:
    """The models a server or render node can use, by name: the built-in tiny ones plus a models file."""

    def __init__(self, entries: dict[str, ModelEntry], defaults: dict[str, str] | None = None,
                 source: Path | None = None) -> None:
        builtins = builtin_entries()
        self._entries = {**entries, **builtins}
        self._defaults = {kind: _default_for(kind, entries, builtins, (defaults or {}).get(kind)) for kind in KINDS}
        self.source = source

    @classmethod
    def load(cls, path: str | Path | None = None) -> ModelRegistry:
        """Read the models file (see the module doc for where it is looked for)."""
        file = _models_file(path)
        if file is None:
            return cls({})
        data = _read_toml(file)
        default_keys = {"default", *(f"default_{kind}" for kind in KINDS)}
        unknown = sorted(set(data) - default_keys - {"models"})
        if unknown:
            raise ModelNotFound(f"Models file {file}: unknown setting {unknown[0]!r} (the top level may only hold "
                                "`default`, `default_<kind>` and [models.NAME] tables; kinds: "
                                f"{', '.join(KINDS)}).")
        tables = data.get("models", {})
        if not isinstance(tables, dict):
            raise ModelNotFound(f"Models file {file}: `models` must be tables like [models.sd15].")
        entries = {name: _parse_entry(file, name, table) for name, table in tables.items()}
        if "default" in data and "default_sd" in data:
            raise ModelNotFound(f"Models file {file}: `default` and `default_sd` say the same; keep one.")
        defaults = {}
        for key in sorted(default_keys & set(data)):
            kind = "sd" if key == "default" else key.removeprefix("default_")
            name = data[key]
            builtin = KINDS[kind].builtin_name
            if not isinstance(name, str) or (name not in entries and name != builtin):
                raise ModelNotFound(f"Models file {file}: {key} {name!r} is not one of its models "
                                    f"({', '.join([*entries, builtin])}).")
            if name in entries and entries[name].kind != kind:
                raise ModelNotFound(f"Models file {file}: {key} names {name!r}, which is a "
                                    f"{KINDS[entries[name].kind].label} model, not a {KINDS[kind].label} one.")
            defaults[kind] = name
        return cls(entries, defaults, file)

    def names(self) -> list[str]:
        return list(self._entries)

    @property
    def default(self) -> str:
        """The default Stable Diffusion model."""
        return self._defaults["sd"]

    def default_for(self, kind: str) -> str:
        return self._defaults[kind]

    def entry(self, name: str, kind: str | None = None) -> ModelEntry:
        """The entry called `name` (or the default of `kind` when `name` is empty), of `kind` when given."""
        if not name and kind is not None:
            name = self._defaults[kind]
        try:
            found = self._entries[name]
        except KeyError:
            where = f" in {self.source}" if self.source else " (no models file: set CVGEN_MODELS or pass --models)"
            choices = [n for n, e in self._entries.items() if kind is None or e.kind == kind]
            raise ModelNotFound(f"No {KINDS[kind].label + ' ' if kind else ''}model named {name!r}{where}. "
                                f"Configured: {', '.join(choices)}.") from None
        if kind is not None and found.kind != kind:
            raise ModelNotFound(f"Model {name!r} is a {KINDS[found.kind].label} model (kind {found.kind!r}); "
                                f"a {KINDS[kind].label} model (kind {kind!r}) is needed here.")
        return found

    def describe(self) -> list[dict[str, Any]]:
        return [{**entry.describe(), "default": self._defaults[entry.kind] == name}
                for name, entry in self._entries.items()]


def _default_for(kind: str, entries: dict[str, ModelEntry], builtins: dict[str, ModelEntry], named: str | None) -> str:
    if named:
        return named
    configured = [name for name, entry in entries.items() if entry.kind == kind]
    if len(configured) == 1 and kind != "sd":
        return configured[0]
    return next(name for name, entry in builtins.items() if entry.kind == kind)


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
    reserved = {kind.builtin_name for kind in KINDS.values()}
    if name in reserved:
        raise ModelNotFound(f"{where}: the name {name!r} is reserved for a built-in test model; pick another name.")
    if not isinstance(table, dict):
        raise ModelNotFound(f"{where}: must be a table with at least `path = \"...\"`.")
    for key, value in table.items():
        if not isinstance(value, str):
            raise ModelNotFound(f"{where}: {key} must be a string in quotes.")
    kind_name = table.get("kind", "sd")
    if kind_name not in KINDS:
        raise ModelNotFound(f"{where}: unknown kind {kind_name!r} (kinds: {', '.join(KINDS)}).")
    kind = KINDS[kind_name]
    allowed = (*COMMON_KEYS, *kind.options)
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise ModelNotFound(f"{where}: unknown key {unknown[0]!r} for a {kind.label} model "
                            f"(allowed: {', '.join(allowed)}).")
    if "path" not in table:
        raise ModelNotFound(f"{where}: has no `path`.")
    _check_choice(where, "dtype", table.get("dtype"), DTYPES)
    if "device" in table and not DEVICE_PATTERN.fullmatch(table["device"]):
        raise ModelNotFound(f"{where}: unknown device {table['device']!r} (use auto, cpu, cuda, cuda:N or mps).")
    options: dict[str, Any] = {}
    for key, rule in kind.options.items():
        if key not in table:
            continue
        if rule == "path":
            options[key] = _resolve(file, table[key])
        else:
            _check_choice(where, key, table[key], rule)
            options[key] = table[key]
    path = _resolve(file, table["path"])
    kind.validate(where, path, options)
    return ModelEntry(name, kind_name, path, table.get("device"), table.get("dtype"), options)


def _check_choice(where: str, key: str, value: str | None, allowed: tuple[str, ...]) -> None:
    if value is not None and value not in allowed:
        raise ModelNotFound(f"{where}: {key} {value!r} is not one of {', '.join(allowed)}.")


def _resolve(file: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else (file.parent / path).resolve()
