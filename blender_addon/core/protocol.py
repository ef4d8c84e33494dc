"""cvgen.protocol for the add-on: the bundled copy, else the environment's, else the repository's.

The built extension carries a vendored copy (`_vendor/cvgen_protocol`, made by build.py) so an
artist installs nothing but the zip. A development checkout loaded as a plain add-on folder uses
the `cvgen` package of the Python it runs in, or the `protocol/` folder of the repository it sits
in (the package uses only relative imports, so it loads under any name).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

#: Where the protocol package sits in a development checkout (blender_addon/ is beside it).
REPO_PROTOCOL = Path(__file__).resolve().parents[2] / "protocol"


def _load() -> ModuleType:
    addon = (__package__ or "").rpartition(".")[0]
    if addon and importlib.util.find_spec(f"{addon}._vendor") is not None:
        return importlib.import_module(f"{addon}._vendor.cvgen_protocol")
    try:
        return importlib.import_module("cvgen.protocol")
    except ModuleNotFoundError as exc:
        if exc.name not in ("cvgen", "cvgen.protocol"):
            raise  # cvgen is there but pyzmq, msgpack or numpy is not: say so
    return _load_repository_copy()


def _load_repository_copy() -> ModuleType:
    init = REPO_PROTOCOL / "__init__.py"
    if not init.is_file():
        raise ModuleNotFoundError(
            "cvgen's protocol package was not found: install the built extension zip "
            "(blender_addon/build.py), or install cvgen into Blender's Python"
        )
    name = "cvgen_protocol"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(REPO_PROTOCOL)])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


protocol = _load()
addresses = importlib.import_module(f"{protocol.__name__}.addresses")
client = importlib.import_module(f"{protocol.__name__}.client")
errors = importlib.import_module(f"{protocol.__name__}.errors")
schema = importlib.import_module(f"{protocol.__name__}.schema")
