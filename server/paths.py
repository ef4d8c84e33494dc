"""Which files a request may name: inputs under the input roots, outputs under the output roots.

Paths are resolved (symlinks followed, `..` collapsed) before the check, so neither a `..` nor a
symlink can lead outside a root. Input frames are checked again when each is read, which also
catches a symlinked frame file inside an allowed folder that points elsewhere.

A check on a name is only good until the name changes, so where roots restrict anything files are
not opened by the checked name: the root is opened and each folder of the resolved path is opened
from its parent without following symlinks (`dir_fd`, `O_NOFOLLOW`). A folder or file swapped for a
symlink after the check is then refused, naming it, instead of followed, and readers and writers
get the opened file itself (`/proc/self/fd/N`; the server runs on Linux). Symlinks that lead
somewhere allowed when the path is checked keep working, since the resolved path is what is walked.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from cvgen.protocol.errors import ProtocolError
from cvgen.protocol.jobs import JobSpec

from .errors import InputError


def _resolved(paths: Iterable[str | os.PathLike[str]]) -> tuple[Path, ...]:
    return tuple(Path(os.path.realpath(os.path.expanduser(p))) for p in paths)


@dataclass(frozen=True)
class PathPolicy:
    """`None` roots mean anywhere: only for a server that nobody else can reach."""

    input_roots: Optional[tuple[Path, ...]] = None
    output_roots: Optional[tuple[Path, ...]] = None
    #: The jobs folder, where inline frames are staged: readable, but not a place to name in messages.
    staging: tuple[Path, ...] = ()
    #: The jobs folder, of which a job reads only its `job_folders` (`for_job`), even where an
    #: input root holds it or the server reads anywhere: not another client's inputs or frames.
    jobs: tuple[Path, ...] = ()
    job_folders: Optional[Callable[[Any], Iterable[Path]]] = None

    @classmethod
    def roots(cls, inputs: Optional[Iterable[str | os.PathLike[str]]],
              outputs: Optional[Iterable[str | os.PathLike[str]]]) -> "PathPolicy":
        return cls(None if inputs is None else _resolved(inputs), None if outputs is None else _resolved(outputs))

    @property
    def _readable(self) -> tuple[Path, ...]:
        return (self.input_roots or ()) + self.staging

    def with_input_root(self, root: Path) -> "PathPolicy":
        """Also allow reading under `root` (the jobs folder, where inline inputs are staged)."""
        return replace(self, staging=self.staging + _resolved([root]))

    def with_jobs(self, root: Path, job_folders: Callable[[Any], Iterable[Path]]) -> "PathPolicy":
        """Fence the jobs folder `root`: a job (a `JobRecord`) reads there only `job_folders(job)`."""
        return replace(self, jobs=_resolved([root]), job_folders=job_folders)

    def for_job(self, job: Any) -> "PathPolicy":
        """The policy `job` reads its frames under: of the jobs folder, only its own `job_folders`."""
        if self.job_folders is None:
            return self
        return replace(self, staging=_resolved(self.job_folders(job)))

    def check_input(self, role: str, template: str) -> None:
        """A frame-sequence path from a request: absolute, its folder under an input root."""
        folder = self._absolute(template, f"input {role}")
        if self.input_roots is not None and not _under(folder, self._readable):
            raise ProtocolError(f"input {role} {template} is outside the folders this server reads "
                                f"({_names(self.input_roots)})")

    def open_input_file(self, role: str, path: str) -> Optional[int]:
        """One frame file, checked and opened for reading by its resolved path under its root,
        no step of it followed as a symlink: the caller reads (and closes) this descriptor, so a
        name swapped after the check cannot lead elsewhere. Only plain files open (a FIFO would
        hold the worker). None where the server reads anywhere: read `path` itself."""
        real = self.check_input_file(role, path)
        if self.input_roots is None:
            return None
        root = _root_of(real, self._readable)
        shown = f"{role} frame {path}"
        folder = _open_beneath(root, real.relative_to(root).parts[:-1], shown)
        try:
            fd = os.open(real.name, _FILE, dir_fd=folder)
        except FileNotFoundError:
            raise InputError(f"cannot read {path}: no such file") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise _changed(shown, real, "a symlink") from None
            raise InputError(f"cannot read {path}: {exc.strerror}") from None
        finally:
            os.close(folder)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise InputError(f"{shown} is not a plain file (a folder, FIFO or device); frames are read "
                             "only from plain files")
        return fd

    def output_folder(self, folder: Path, named: bool) -> Optional["CheckedFolder"]:
        """A job's output folder, checked against the roots in force now; None where the server
        writes anywhere. `named`: the request named it (only the output roots may hold it), else
        it is the job's own frames folder, in the jobs folder."""
        if self.output_roots is None:
            return None
        if named:
            self.check_output(str(folder))
        real = Path(os.path.realpath(folder))
        roots = self.output_roots if named else self.staging
        if not _under(real, roots):
            raise ProtocolError(f"output folder {folder} is outside the folders this server writes "
                                f"({_names(self.output_roots)})")
        root = _root_of(real, roots)
        return CheckedFolder(f"output folder {folder}", root, real.relative_to(root).parts)

    def check_spec(self, spec: JobSpec) -> None:
        """A stored job's inputs and output against the roots in force: when the server resumes it
        after a restart (roots may have narrowed since it was submitted) and when a worker starts it."""
        for role, template in spec.inputs.items():
            self.check_input(role, template)
        if spec.output:
            self.check_output(spec.output)

    def check_input_file(self, role: str, path: str) -> Path:
        """One frame file, just before it is read: a symlink must not point outside the roots.
        Returns the path resolved, which `open_input_file` opens."""
        real = Path(os.path.realpath(path))
        if _under(real, self.jobs) and not _under(real, self.staging):
            raise ProtocolError(f"{role} frame {path} leads into the jobs folder outside any job of yours")
        if self.input_roots is not None and not _under(real, self._readable):
            raise ProtocolError(f"{role} frame {path} leads outside the folders this server reads "
                                f"({_names(self.input_roots)})")
        return real

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


_FOLDER = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


@dataclass(frozen=True)
class CheckedFolder:
    """A folder checked against the roots, as its root and the resolved path from there; opened
    again from the root, following no symlink, each time it is used."""

    shown: str
    root: Path
    parts: tuple[str, ...]

    def create(self) -> None:
        """Make the folders of the path that are missing, each inside its opened parent."""
        os.close(_open_beneath(self.root, self.parts, self.shown, create=True))

    @contextmanager
    def opened(self) -> Iterator[int]:
        """The folder, open, as it is now: refused if a step of it changed since the check."""
        fd = _open_beneath(self.root, self.parts, self.shown)
        try:
            yield fd
        finally:
            os.close(fd)


def _open_beneath(root: Path, parts: Sequence[str], shown: str, create: bool = False) -> int:
    """The folder `root/parts...` opened one step at a time from the root, following no symlink
    (`shown` says what it is, for messages); `create` makes missing steps with mkdir in their parent."""
    here = root
    try:
        fd = os.open(root, _FOLDER)
    except FileNotFoundError:
        raise ProtocolError(f"cannot open {shown}: {root}, a folder this server works under, is gone") from None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise _changed(shown, root, "a symlink or not a folder") from None
        raise
    try:
        for part in parts:
            here = here / part
            try:
                child = os.open(part, _FOLDER, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise ProtocolError(f"cannot open {shown}: {here} no longer exists") from None
                try:
                    os.mkdir(part, 0o777, dir_fd=fd)
                except FileExistsError:
                    pass
                child = os.open(part, _FOLDER, dir_fd=fd)
            os.close(fd)
            fd = child
    except OSError as exc:
        changed = exc.errno in (errno.ELOOP, errno.ENOTDIR)
        kind = "a symlink" if changed and _is_symlink(here.name, fd) else "not a folder"
        os.close(fd)
        if changed:
            raise _changed(shown, here, kind) from None
        raise
    except BaseException:
        os.close(fd)
        raise
    return fd


def _is_symlink(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _changed(shown: str, step: Path, kind: str) -> ProtocolError:
    return ProtocolError(f"{shown} changed after it was checked: {step} is now {kind}, which this server "
                         "does not follow; nothing is read or written through it")


def _root_of(path: Path, roots: tuple[Path, ...]) -> Path:
    """The deepest root holding `path` (which was checked to lie under one)."""
    return max((r for r in roots if _under(path, (r,))), key=lambda r: len(r.parts))
