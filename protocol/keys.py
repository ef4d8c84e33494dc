"""CurveZMQ key files as `cvgen keys generate` writes them (pyzmq's certificate format).

A host needs two files: the server's public key (to know it talks to the right server) and its
own secret key file (which also holds its public key, the one the server's allow-list names).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Union

from .errors import KeyFileError

PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class ClientKeys:
    server_public: bytes
    public: bytes
    secret: bytes


def read_key_file(path: PathLike, what: str, secret: bool) -> tuple[bytes, Optional[bytes]]:
    """(public, secret) from a key file, with errors that say which file and what was expected."""
    from zmq.auth import load_certificate

    path = os.path.expanduser(os.fspath(path))
    if not os.path.isfile(path):
        raise KeyFileError(f"{what} {path} does not exist; `cvgen keys generate` makes key files")
    try:
        public, secret_key = load_certificate(path)
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"{what} {path} is not a CurveZMQ key file: {exc}") from None
    if not public or len(public) != 40:
        raise KeyFileError(f"{what} {path} holds no valid public key")
    if secret and not secret_key:
        raise KeyFileError(f"{what} {path} is a public key; use the matching .key_secret file")
    return public, secret_key


def load_client_keys(server_key: Optional[PathLike], client_key: Optional[PathLike]) -> Optional[ClientKeys]:
    """Both files, or neither (no encryption, for a server on this machine)."""
    if not server_key and not client_key:
        return None
    if not server_key or not client_key:
        raise KeyFileError("encryption needs both key files: the server's public key (server.key) and this "
                           "workstation's secret key (NAME.key_secret)")
    server_public, _ = read_key_file(server_key, "server key", secret=False)
    public, secret = read_key_file(client_key, "client key", secret=True)
    assert secret is not None
    return ClientKeys(server_public, public, secret)
