"""Shared fixtures: the real test data beside the checkout, and real `cvgen serve` processes."""

from __future__ import annotations

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


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built-in tiny Stable Diffusion model, saved in diffusers layout once per test run."""
    from cvgen.server.core.tiny import ensure_tiny

    return ensure_tiny(tmp_path_factory.mktemp("models"))
