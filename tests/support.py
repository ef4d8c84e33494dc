"""Helpers for tests: real `cvgen serve` subprocesses and small EXR shots on disk."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from cvgen.protocol.images import Image
from cvgen.server.io.exr import write_exr


class ServerProcess:
    """A `cvgen serve` subprocess on a free loopback port; `args` are more `cvgen serve` options.
    `extra_op` serves the test op `still` too (tests/extra_op_server.py), an op no host knows."""

    def __init__(self, jobs_dir: Path, *args: str, bind: str = "tcp://127.0.0.1:*", extra_op: bool = False) -> None:
        self.jobs_dir = jobs_dir
        self.extra_op = extra_op
        self.args = args
        self.bind = bind
        self.proc: subprocess.Popen[str] | None = None
        self.endpoint = ""

    def start(self, wrapper: Sequence[str] = (), preexec_fn: Callable[[], None] | None = None) -> "ServerProcess":
        """Start and wait for the "listening on" line; `wrapper` is a command the server runs
        under (it gets the serve command as its arguments), `preexec_fn` runs in the child first."""
        self.proc = subprocess.Popen(
            [*wrapper, sys.executable, *self.launcher, "serve", "--bind", self.bind,
             "--jobs-dir", str(self.jobs_dir), *self.args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=preexec_fn,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert "listening on" in line, f"server did not start: {line!r} {self.proc.stderr.read() if self.proc.stderr else ''}"
        self.endpoint = line.split("listening on ", 1)[1].split()[0].replace("0.0.0.0", "127.0.0.1")
        return self

    @property
    def launcher(self) -> list[str]:
        """What the Python runs: cvgen's command, or the launcher that adds the test op."""
        return [str(Path(__file__).with_name("extra_op_server.py"))] if self.extra_op else ["-m", "cvgen.server.cli"]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        rc = self.proc.wait(timeout=timeout)
        return rc


def make_shot(folder: Path, frames: range, size: tuple[int, int] = (48, 64), seed: int = 0) -> dict[str, str]:
    """A small plate + foreground sequence on disk: a plate with HDR highlights and a
    warm, bright foreground under a soft disc matte (its alpha)."""
    rng = np.random.default_rng(seed)
    h, w = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    for f in frames:
        plate = rng.uniform(0.02, 0.5, (h, w, 3)).astype(np.float32)
        plate[0, 0] = 40.0
        alpha = np.clip(1.2 - np.hypot(x - w / 2, y - h / 2) / (0.3 * min(h, w)), 0, 1)
        fg = rng.uniform(0.5, 2.0, (h, w, 3)).astype(np.float32) * alpha[..., None]
        write_exr(folder / f"plate.{f:04d}.exr", Image(np.dstack([plate, np.ones((h, w))]).astype(np.float16),
                                                    ("R", "G", "B", "A")))
        write_exr(folder / f"fg.{f:04d}.exr", Image(np.dstack([fg, alpha]).astype(np.float16), ("R", "G", "B", "A")))
    return {"plate": str(folder / "plate.####.exr"), "fg": str(folder / "fg.####.exr")}



def models_file(folder: Path, kind: str, path: Path, extra: str = "", name: str = "mine") -> Path:
    """A models file naming one model `name` of `kind` at `path` (`extra`: more lines of its table)."""
    file = folder / "models.toml"
    file.write_text(f'[models.{name}]\nkind = "{kind}"\npath = "{path}"\n{extra}')
    return file


def load_error(folder: Path, kind: str, path: Path) -> str:
    """What loading the `kind` model at `path` through a models file says: the one sentence the artist reads."""
    import pytest

    from cvgen.server.core.models import ModelRegistry, load
    from cvgen.server.errors import ModelNotFound

    with pytest.raises(ModelNotFound) as error:
        load(ModelRegistry.load(models_file(folder, kind, path)).entry("mine", kind=kind))
    return str(error.value)
