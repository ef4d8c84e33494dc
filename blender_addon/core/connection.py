"""Which server to talk to, and whether the add-on may: the address, the network rule, the keys.

Blender's rule for extensions: nothing goes out over the network unless the artist allowed
online access (`bpy.app.online_access`); the loopback interface is not the network, so a local
server always works. A LAN or farm server is reached with CurveZMQ keys (`cvgen keys generate`):
the server's public key file and this workstation's secret key file, both or neither.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import SetupError
from .protocol import addresses, client


@dataclass(frozen=True)
class ServerSettings:
    """The preferences that say how to reach the server (see `blender.prefs`)."""

    address: str = client.DEFAULT_ADDRESS
    timeout: float = 10.0
    server_key: str = ""
    client_key: str = ""


def host_of(address: str) -> str:
    """The host part of a ZeroMQ endpoint, "" for ipc:// and inproc:// (which never leave the machine)."""
    scheme, sep, rest = address.partition("://")
    if not sep or scheme not in ("tcp", "ipc", "inproc"):
        raise SetupError(f"server address {address!r} must look like tcp://HOST:PORT")
    if scheme != "tcp":
        return ""
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port:
        raise SetupError(f"server address {address!r} needs a host and a port, e.g. tcp://127.0.0.1:5555")
    return host.strip("[]")


def is_local(address: str) -> bool:
    """Whether `address` stays on this machine; an address that is not a ZeroMQ endpoint is refused."""
    host_of(address)
    return addresses.is_loopback(address)


def check_allowed(address: str, online_access: bool) -> None:
    """Refuse a non-local server while Blender's "Allow Online Access" is off."""
    if not is_local(address) and not online_access:
        raise SetupError(
            f"the cvgen server {address} is on the network, and Blender's online access is off: "
            "allow it in Preferences > System > Network, or use a local server"
        )


def client_options(settings: ServerSettings) -> dict[str, Any]:
    """Keyword arguments for `Client` besides the address: the timeout, and the key files when set.

    Both key files or neither: one alone is refused here, naming the missing one, rather than
    left to fail (or to go out unencrypted) at the server.
    """
    options: dict[str, Any] = {"timeout": settings.timeout}
    server_key, client_key = settings.server_key.strip(), settings.client_key.strip()
    if server_key or client_key:
        if not server_key:
            raise SetupError(
                "the cvgen preferences set a Client Key Pair but no Server Public Key: set both (the server's "
                "server.key and this workstation's NAME.key_secret from `cvgen keys generate`), or clear both "
                "for a server on this machine")
        if not client_key:
            raise SetupError(
                "the cvgen preferences set a Server Public Key but no Client Key Pair: set both (the server's "
                "server.key and this workstation's NAME.key_secret from `cvgen keys generate`), or clear both "
                "for a server on this machine")
        options.update(server_key=server_key, client_key=client_key)
    return options


def open_client(settings: ServerSettings, online_access: bool) -> Any:
    """A connected `Client`, after the network rule and the key settings are checked."""
    check_allowed(settings.address, online_access)
    return client.Client(settings.address, **client_options(settings))
