"""Shared fixtures: the real test data beside the checkout, and real `cvgen serve` processes."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Iterator

import pytest
from support import ServerProcess

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    assert SHARED_DATA.is_dir(), f"test data missing: {SHARED_DATA} (the shared data folder sits beside the checkout)"
    return SHARED_DATA


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path / "jobs").start()
    yield srv
    if srv.proc and srv.proc.poll() is None:
        srv.stop(signal.SIGKILL)


@pytest.fixture
def no_user_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the built-in models and a test's own models file: never the user's ~/.config/cvgen/models.toml
    or $CVGEN_MODELS."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("CVGEN_MODELS", raising=False)


@pytest.fixture(scope="session", autouse=True)
def cvgen_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A cache folder of the test run's own (the tiny model, inverted latents), for this process
    and the servers it starts, so tests never read or write the user's ~/.cache/cvgen."""
    folder = tmp_path_factory.mktemp("cvgen-cache")
    before = os.environ.get("CVGEN_CACHE")
    os.environ["CVGEN_CACHE"] = str(folder)
    yield folder
    if before is None:
        del os.environ["CVGEN_CACHE"]
    else:
        os.environ["CVGEN_CACHE"] = before


@pytest.fixture(scope="session")
def tiny_model_path(cvgen_cache: Path) -> Path:
    """The built-in tiny Stable Diffusion model, saved in diffusers layout once per test run."""
    from cvgen.server.core.models import ensure_builtin

    return ensure_builtin("sd")
