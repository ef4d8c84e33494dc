"""Who may talk to the server: loopback without keys, anything else only over CurveZMQ with an
allow-list of client public keys, checked by ZeroMQ's ZAP handler (`zmq.auth`).

Key folder layout, as `cvgen keys generate` writes it:

    KEYS/server.key          server public key: every workstation needs a copy
    KEYS/server.key_secret   server secret key: stays on the server
    KEYS/authorized/         allow-list: public keys of the clients the server accepts
    KEYS/clients/NAME.key_secret, NAME.key   one pair per workstation (or farm), handed to it
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

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


class InsecureBind(CvgenError):
    code = "insecure"


@dataclass(frozen=True)
class ServerKeys:
    public: bytes
    secret: bytes
    authorized: Path

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> "ServerKeys":
        root = Path(folder).expanduser()
        public, secret = read_key_file(root / SERVER_SECRET, "server secret key", secret=True)
        assert secret is not None
        authorized = root / AUTHORIZED
        if not authorized.is_dir() or not any(authorized.glob("*.key")):
            raise KeyFileError(f"{authorized} holds no client public keys (*.key), so no one could connect; "
                               f"`cvgen keys generate {root} --client NAME` adds one")
        return cls(public, secret, authorized)


def check_bind(endpoint: str, keys: ServerKeys | None) -> None:
    if keys is None and not is_loopback(endpoint):
        raise InsecureBind(
            f"refusing to serve on {endpoint} without encryption: anyone who can reach it could submit jobs "
            "and read results. Make keys with `cvgen keys generate KEYS --client NAME`, start with "
            "`cvgen serve --keys KEYS`, and give each workstation KEYS/server.key and its "
            "KEYS/clients/NAME.key_secret. (Bind 127.0.0.1 to serve this machine alone.)")


def secure(socket: zmq.Socket, keys: ServerKeys) -> ThreadAuthenticator:
    """Make `socket` a CurveZMQ server that admits only the allow-listed clients; returns the
    authenticator thread, which the caller stops after closing the socket."""
    auth = ThreadAuthenticator(socket.context)
    auth.start()
    allow_listed(auth, keys)
    socket.curve_server = True
    socket.curve_secretkey = keys.secret
    socket.curve_publickey = keys.public
    return auth


def allow_listed(auth: ThreadAuthenticator, keys: ServerKeys) -> int:
    """(Re)read the allow-list folder; connections made from now on are checked against it.
    Returns how many client keys it holds."""
    auth.configure_curve(domain="*", location=str(keys.authorized))
    return len(list(keys.authorized.glob("*.key")))


def generate_keys(folder: str | os.PathLike[str], clients: list[str]) -> list[Path]:
    """Create the server pair (unless it exists) and a pair per new client, allow-listing each.

    Existing files are never overwritten: a regenerated server key would lock out every
    workstation that has the old one.
    """
    root = Path(folder).expanduser()
    for name in clients:
        if not name or not name.replace("-", "").replace("_", "").replace(".", "").isalnum() or name.startswith("."):
            raise KeyFileError(f"client name {name!r} must be letters, digits, '-', '_' or '.'")
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


def _create_pair(folder: Path, name: str) -> tuple[Path, Path]:
    public, secret = (Path(p) for p in zmq.auth.create_certificates(folder, name))
    os.chmod(secret, 0o600)
    return public, secret
