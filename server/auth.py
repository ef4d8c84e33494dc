"""Who may talk to the server: loopback without keys, anything else only over CurveZMQ with an
allow-list of client public keys, checked by ZeroMQ's ZAP handler (`zmq.auth`) when a host
connects and by the server on every request, so a key removed from the list stops working at
once, open connections included.

Key folder layout, as `cvgen keys generate` writes it:

    KEYS/server.key          server public key: every workstation needs a copy
    KEYS/server.key_secret   server secret key: stays on the server
    KEYS/authorized/         allow-list: public keys of the clients the server accepts
    KEYS/clients/NAME.key_secret, NAME.key   one pair per workstation (or farm), handed to it

cvgen reads the allow-list itself rather than through `zmq.auth`'s folder loader, which keeps
its previous list when any one file fails to load: here an unreadable file is skipped and
named in the log, and the list is exactly the readable keys.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from cvgen.protocol.addresses import is_loopback
from cvgen.protocol.errors import CvgenError, KeyFileError
from cvgen.protocol.keys import read_key_file

SERVER_PUBLIC = "server.key"
SERVER_SECRET = "server.key_secret"
AUTHORIZED = "authorized"
CLIENTS = "clients"
#: Owner of the jobs of a server without keys: the one local user.
LOCAL_OWNER = "local"
#: How often the serving loop looks for an edited key file in authorized/ (a key added, removed
#: or renamed there is noticed by the next request already).
RECHECK_S = 0.5

log = logging.getLogger("cvgen.server")


class InsecureBind(CvgenError):
    code = "insecure"


class Revoked(CvgenError):
    """A request on a connection whose key was removed from the allow-list after it connected."""

    code = "bad_request"


@dataclass(frozen=True)
class ServerKeys:
    public: bytes
    secret: bytes
    authorized: Path
    #: Client names (authorized/NAME.key) that see and may cancel every client's jobs.
    admins: tuple[str, ...] = ()

    @classmethod
    def load(cls, folder: str | os.PathLike[str], admins: Sequence[str] = ()) -> "ServerKeys":
        root = Path(folder).expanduser()
        public, secret = read_key_file(root / SERVER_SECRET, "server secret key", secret=True)
        assert secret is not None
        authorized = root / AUTHORIZED
        names, _ = read_allow_list(authorized)
        if not names:
            raise KeyFileError(f"{authorized} holds no client public keys (*.key) that can be read, so no one "
                               f"could connect; `cvgen keys generate {root} --client NAME` adds one")
        for name in admins:
            check_client_name(name)
            if name not in names:
                raise KeyFileError(f"admin {name} has no readable key {authorized / name}.key; "
                                   f"`cvgen keys generate {root} --client {name}` makes one")
        return cls(public, secret, authorized, tuple(admins))


@dataclass(frozen=True)
class Requester:
    """Who sent a request: `key` is the client's public key (z85), None on a server without keys."""

    key: str | None
    admin: bool = False

    @property
    def owner(self) -> str:
        """What a job this client submits records as its owner."""
        return self.key or LOCAL_OWNER

    def may_use(self, owner: str | None) -> bool:
        """Whether this client may see, attach to, cancel and read the files of a job with this
        `owner` (None: a job from before owners were recorded, which only admins see)."""
        return self.key is None or self.admin or owner == self.key


#: Every request on a server without keys: on loopback all jobs are the one local user's.
LOCAL = Requester(None)


def read_allow_list(folder: Path) -> tuple[dict[str, str], list[str]]:
    """({client name: z85 public key}, unreadable files) of the NAME.key files in `folder`."""
    keys: dict[str, str] = {}
    unreadable = []
    for path in sorted(folder.glob("*.key")) if folder.is_dir() else ():
        try:
            keys[path.stem] = read_key_file(path, "client key", secret=False)[0].decode("ascii")
        except KeyFileError as exc:
            unreadable.append(str(exc))
    return keys, unreadable


class AllowList:
    """The client keys the server admits, and which of them are admins. Read again whenever
    authorized/ changes: `refresh` notices it with one stat of the folder (a key file added,
    removed or renamed), `refresh(thorough=True)` also notices a file edited in place. Only the
    serving thread reads it again; ZAP's thread only looks up `keys`, replaced whole."""

    def __init__(self, keys: ServerKeys) -> None:
        self.folder = keys.authorized
        self.admin_names = keys.admins
        self.keys: frozenset[str] = frozenset()
        self.admins: frozenset[str] = frozenset()
        self._folder_stamp: tuple[int, ...] | None = None
        self._listing: tuple[tuple[Any, ...], ...] = ()
        self.reload(quiet=True)

    def callback(self, domain: str, key: bytes) -> bool:
        """ZAP's question for a connecting client (`configure_curve_callback`)."""
        return key.decode("ascii", "replace") in self.keys

    def requester(self, user_id: str) -> Requester:
        """The sender of a request, by the ZAP User-Id of its connection (the z85 public key),
        checked against the list as it is now."""
        if user_id not in self.keys:
            raise Revoked("this workstation's key is no longer in this server's allow-list (authorized/), so "
                          "the server refuses its requests; ask the server's administrator to admit it again")
        return Requester(user_id, user_id in self.admins)

    def refresh(self, thorough: bool = False) -> None:
        """Re-read the list if authorized/ changed since it was read."""
        if self._stamp() != self._folder_stamp or (thorough and self._list() != self._listing):
            self.reload()

    def reload(self, quiet: bool = False) -> None:
        """Read authorized/ now: the list becomes exactly its readable keys."""
        self._folder_stamp, self._listing = self._stamp(), self._list()
        names, unreadable = read_allow_list(self.folder)
        self.keys = frozenset(names.values())
        self.admins = frozenset(names[n] for n in self.admin_names if n in names)
        for problem in unreadable:
            log.error("not admitting a key: %s", problem)
        for name in self.admin_names:
            if name not in names:
                log.warning("admin %s has no readable key %s/%s.key: not an admin until it has", name,
                            self.folder, name)
        if not quiet:
            log.info("re-read %s: %d client key(s) admitted from now on", self.folder, len(self.keys))

    def _stamp(self) -> tuple[int, ...] | None:
        try:
            st = os.stat(self.folder)
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_ctime_ns

    def _list(self) -> tuple[tuple[Any, ...], ...]:
        try:
            entries = list(os.scandir(self.folder))
        except OSError:
            return ()
        listing = []
        for entry in entries:
            try:
                st = entry.stat()
            except OSError:
                continue
            listing.append((entry.name, st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size))
        return tuple(sorted(listing))


def check_bind(endpoint: str, keys: ServerKeys | None) -> None:
    if keys is None and not is_loopback(endpoint):
        raise InsecureBind(
            f"refusing to serve on {endpoint} without encryption: anyone who can reach it could submit jobs "
            "and read results. Make keys with `cvgen keys generate KEYS --client NAME`, start with "
            "`cvgen serve --keys KEYS`, and give each workstation KEYS/server.key and its "
            "KEYS/clients/NAME.key_secret. (Bind 127.0.0.1 to serve this machine alone.)")


def secure(socket: zmq.Socket, keys: ServerKeys, allow: AllowList) -> ThreadAuthenticator:
    """Make `socket` a CurveZMQ server that admits only the clients in `allow`; returns the
    authenticator thread, which the caller stops after closing the socket."""
    auth = ThreadAuthenticator(socket.context)
    auth.start()
    auth.configure_curve_callback(domain="*", credentials_provider=allow)
    socket.curve_server = True
    socket.curve_secretkey = keys.secret
    socket.curve_publickey = keys.public
    return auth


def generate_keys(folder: str | os.PathLike[str], clients: list[str]) -> list[Path]:
    """Create the server pair (unless it exists) and a pair per new client, allow-listing each.

    Existing files are never overwritten: a regenerated server key would lock out every
    workstation that has the old one.
    """
    root = Path(folder).expanduser()
    for name in clients:
        check_client_name(name)
        if (root / CLIENTS / f"{name}.key").exists():
            raise KeyFileError(f"client {name!r} already has keys in {root / CLIENTS}; pick another name")
    written = []
    for sub in ("", AUTHORIZED, CLIENTS):
        (root / sub).mkdir(parents=True, exist_ok=True)
    if not (root / SERVER_SECRET).exists():
        written += _create_pair(root, "server")
    for name in clients:
        public, _ = pair = _create_pair(root / CLIENTS, name)
        written += pair
        shutil.copyfile(public, root / AUTHORIZED / public.name)
        written.append(root / AUTHORIZED / public.name)
    return written


def revoke_key(folder: str | os.PathLike[str], name: str) -> list[Path]:
    """Remove client `name` from the allow-list: authorized/NAME.key and any other file there
    with the same public key (a copy under another name would still admit it). Returns the
    files removed; the client's pair in clients/ stays, to admit it again by copying it back."""
    authorized = Path(folder).expanduser() / AUTHORIZED
    check_client_name(name)
    target = authorized / f"{name}.key"
    if not target.is_file():
        present = sorted(p.stem for p in authorized.glob("*.key"))
        raise KeyFileError(f"no client {name} in {authorized} (it holds: {', '.join(present) or 'no keys'})")
    names, _ = read_allow_list(authorized)
    public = names.get(name)
    removed = [target, *(authorized / f"{other}.key" for other, key in names.items()
                         if key == public and other != name)]
    for path in removed:
        path.unlink()
    return removed


def check_client_name(name: str) -> None:
    """A client name is a file name in authorized/ and clients/: no path, no hidden file."""
    if not name or not name.replace("-", "").replace("_", "").replace(".", "").isalnum() or name.startswith("."):
        raise KeyFileError(f"client name {name!r} must be letters, digits, '-', '_' or '.'")


def _create_pair(folder: Path, name: str) -> tuple[Path, Path]:
    public, secret = (Path(p) for p in zmq.auth.create_certificates(folder, name))
    os.chmod(secret, 0o600)
    return public, secret
