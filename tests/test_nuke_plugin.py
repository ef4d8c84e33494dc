"""The Nuke plugin as a studio installs it: its imports, its Python version, its start-up,
how it finds cvgen.protocol, and the adapter's types against the types-nuke stubs."""

from __future__ import annotations

import ast
import importlib.util
import logging
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

PLUGIN = Path(__file__).resolve().parents[1] / "nuke_plugin"
sys.path.insert(0, str(PLUGIN))

from cvgen_nuke import deps  # noqa: E402

PACKAGE = PLUGIN / "cvgen_nuke"
ADAPTER = PACKAGE / "nuke_adapter.py"
ALL_FILES = sorted(PLUGIN.rglob("*.py"))


def imported(path: Path) -> set[str]:
    """Absolute module names a file imports (anywhere in it, functions included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def allowed(name: str, extra: tuple[str, ...]) -> bool:
    top = name.split(".")[0]
    return (top in sys.stdlib_module_names or name == "cvgen.protocol" or name.startswith("cvgen.protocol.")
            or top == "cvgen_nuke" or top in extra)


@pytest.mark.parametrize("path", sorted(PACKAGE.glob("*.py")), ids=lambda p: p.name)
def test_plugin_modules_import_only_the_stdlib_and_cvgen_protocol(path):
    # The adapter alone may import nuke; the EXR codec works on numpy arrays, as cvgen.protocol's
    # Image holds pixels (numpy comes with cvgen.protocol); nothing imports pyzmq or msgpack directly.
    extra = {"nuke_adapter.py": ("nuke",), "exr.py": ("numpy",)}.get(path.name, ())
    names = imported(path)
    assert not [n for n in names if not allowed(n, extra)], f"{path.name} imports {sorted(names)}"
    assert ("nuke" in names) == (path.name == "nuke_adapter.py")


def test_entry_points_and_scripts_import_only_what_nuke_has():
    assert imported(PLUGIN / "init.py") == {"cvgen_nuke"} == imported(PLUGIN / "menu.py")
    assert all(allowed(n, ()) for n in imported(PLUGIN / "copy_protocol.py"))
    assert all(allowed(n, ("nuke",)) for n in imported(PLUGIN / "tests" / "run_in_nuke.py"))


def test_init_and_menu_are_two_lines_calling_setup_functions():
    assert (PLUGIN / "init.py").read_text().splitlines() == ["import cvgen_nuke", "cvgen_nuke.setup_init()"]
    assert (PLUGIN / "menu.py").read_text().splitlines() == ["import cvgen_nuke", "cvgen_nuke.setup_menu()"]


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: str(p.relative_to(PLUGIN)))
def test_plugin_code_is_python_3_9_syntax(path):
    # Nuke 14 runs Python 3.9: no match statements, no parenthesised context managers, ...
    tree = ast.parse(path.read_text(), feature_version=(3, 9))
    # ... and annotations such as `str | None` only where they are never evaluated.
    if any(isinstance(n, ast.AnnAssign) or getattr(n, "returns", None) for n in ast.walk(tree)):
        assert "from __future__ import annotations" in path.read_text(), path.name


def test_a_broken_plugin_never_stops_nuke_from_starting(caplog):
    # Here there is no `nuke` module at all: the worst breakage start-up can meet.
    with caplog.at_level(logging.WARNING, logger="cvgen.nuke"):
        runpy.run_path(str(PLUGIN / "init.py"))
        runpy.run_path(str(PLUGIN / "menu.py"))
    assert "could not be set up; Nuke starts without it" in caplog.text
    assert "menu could not be added" in caplog.text
    assert "No module named 'nuke'" in caplog.text


def test_missing_dependencies_are_named_with_how_to_install_them(tmp_path):
    path: list[str] = []
    absent = deps.add_site_folders({deps.SITE_VARIABLE: os.pathsep.join([str(tmp_path), "/no/such/site"])}, path)
    assert path == [str(tmp_path)] and absent == ["/no/such/site"]
    hint = deps.install_hint(["pyzmq", "msgpack"], absent)
    assert "pyzmq, msgpack cannot be imported" in hint and "/no/such/site" in hint and "pip install --target" in hint
    assert deps.missing() == []  # this test environment has everything


def plugin_python(site: Path | None, code: str, endpoint: str = "") -> subprocess.CompletedProcess[str]:
    """A Python like Nuke's: the plugin folder and pyzmq/msgpack/numpy on its path, but cvgen
    itself only where $CVGEN_NUKE_SITE says (-S skips site-packages and the editable install)."""
    env = {"PYTHONPATH": os.pathsep.join([str(PLUGIN), _folder_of("zmq"), _folder_of("msgpack"), _folder_of("numpy")]),
           "PATH": os.environ.get("PATH", "")}
    if site is not None:
        env[deps.SITE_VARIABLE] = str(site)
    return subprocess.run([sys.executable, "-S", "-c", code, endpoint], env=env, capture_output=True, text=True,
                          timeout=60)


def _folder_of(module: str) -> str:
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None
    return str(Path(spec.origin).parent.parent)


FIND_AND_TALK = """
import os, sys
import cvgen_nuke
from cvgen_nuke import deps
deps.add_site_folders(os.environ, sys.path)
print("missing:", deps.missing())
import cvgen.protocol
print("protocol:", cvgen.protocol.__file__)
from cvgen_nuke import session
print("server speaks:", session.hello(sys.argv[1])["protocol_version"])
"""


def test_the_site_folder_is_how_the_plugin_finds_cvgen_protocol(server, tmp_path):
    site = tmp_path / "nuke-site"
    copied = subprocess.run([sys.executable, str(PLUGIN / "copy_protocol.py"), str(site)],
                            capture_output=True, text=True, timeout=60)
    assert copied.returncode == 0, copied.stderr
    target = site / "cvgen" / "protocol"
    assert (target / "client.py").read_text() == (PLUGIN.parent / "protocol" / "client.py").read_text()
    assert not list(target.rglob("__pycache__"))

    run = plugin_python(site, FIND_AND_TALK, server.endpoint)
    assert run.returncode == 0, run.stderr
    assert "missing: []" in run.stdout
    assert f"protocol: {target}" in run.stdout
    assert "server speaks: 1." in run.stdout

    without = plugin_python(None, FIND_AND_TALK)
    assert "missing: ['cvgen.protocol']" in without.stdout and without.returncode != 0


def test_copy_protocol_replaces_an_older_copy(tmp_path):
    stale = tmp_path / "cvgen" / "protocol" / "old_module.py"
    stale.parent.mkdir(parents=True)
    stale.write_text("")
    from copy_protocol import copy_protocol

    assert copy_protocol(tmp_path) == tmp_path / "cvgen" / "protocol"
    assert not stale.exists() and (tmp_path / "cvgen" / "protocol" / "jobs.py").exists()


HAS_MYPY = importlib.util.find_spec("mypy") is not None and any((Path(p) / "nuke-stubs").is_dir() for p in sys.path)


@pytest.mark.skipif(not HAS_MYPY, reason="mypy and types-nuke are not installed (pip install mypy types-nuke)")
def test_the_adapter_type_checks_against_the_types_nuke_stubs(tmp_path):
    from copy_protocol import copy_protocol

    copy_protocol(tmp_path)
    run = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(PLUGIN / "mypy.ini"), "--cache-dir", str(tmp_path / "cache"),
         str(ADAPTER)],
        env={**os.environ, "MYPYPATH": str(tmp_path)}, capture_output=True, text=True, timeout=300, cwd=PLUGIN.parent)
    assert run.returncode == 0 and "Success" in run.stdout, run.stdout + run.stderr
