"""Which files a request may name: inputs under the input roots, outputs under the output roots.

Paths are resolved (symlinks followed, `..` collapsed) before the check, so neither a `..` nor a
symlink can lead outside a root. Input frames are checked again when each is read, which also
catches a symlinked frame file inside an allowed folder that points elsewhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from cvgen.protocol.errors import ProtocolError


def _resolved(paths: Iterable[str | os.PathLike[str]]) -> tuple[Path, ...]:
    return tuple(Path(os.path.realpath(os.path.expanduser(p))) for p in paths)


@dataclass(frozen=True)
class PathPolicy:
    """`None` roots mean anywhere: only for a server that nobody else can reach."""

    input_roots: Optional[tuple[Path, ...]] = None
    output_roots: Optional[tuple[Path, ...]] = None
    #: The jobs folder, where inline frames are staged: readable, but not a place to name in messages.
    staging: tuple[Path, ...] = ()

    @classmethod
    def roots(cls, inputs: Optional[Iterable[str | os.PathLike[str]]],
              outputs: Optional[Iterable[str | os.PathLike[str]]]) -> "PathPolicy":
        return cls(None if inputs is None else _resolved(inputs), None if outputs is None else _resolved(outputs))

    @property
    def _readable(self) -> tuple[Path, ...]:
        return (self.input_roots or ()) + self.staging

    def with_input_root(self, root: Path) -> "PathPolicy":
        """Also allow reading under `root` (the jobs folder, where inline inputs are staged)."""
        return PathPolicy(self.input_roots, self.output_roots, self.staging + _resolved([root]))

    def check_input(self, role: str, template: str) -> None:
        """A frame-sequence path from a request: absolute, its folder under an input root."""
        folder = self._absolute(template, f"input {role}")
        if self.input_roots is not None and not _under(folder, self._readable):
            raise ProtocolError(f"input {role} {template} is outside the folders this server reads "
                                f"({_names(self.input_roots)})")

    def check_input_file(self, role: str, path: str) -> None:
        """One frame file, just before it is read: a symlink must not point outside the roots."""
        if self.input_roots is not None and not _under(Path(os.path.realpath(path)), self._readable):
            raise ProtocolError(f"{role} frame {path} leads outside the folders this server reads "
                                f"({_names(self.input_roots)})")

    def check_output(self, folder: str) -> None:
        resolved = self._absolute(os.path.join(folder, "frame"), "output")
        if self.output_roots is not None and not _under(resolved, self.output_roots):
            raise ProtocolError(f"output folder {folder} is outside the folders this server writes "
                                f"({_names(self.output_roots)}); leave output empty to get results in the job folder")

    @staticmethod
    def _absolute(path: str, what: str) -> Path:
        if "\x00" in path:
            raise ProtocolError(f"{what} path {path!r} contains a NUL character")
        if not os.path.isabs(path):
            raise ProtocolError(f"{what} path {path!r} must be absolute: the server does not share the host's "
                                "working folder")
        return Path(os.path.realpath(os.path.dirname(path)))


def _under(path: Path, roots: tuple[Path, ...]) -> bool:
    return any(path == root or root in path.parents for root in roots)


def _names(roots: tuple[Path, ...]) -> str:
    return ", ".join(str(r) for r in roots) if roots else "none: send frames inline"
