"""Which server to talk to, and whether the add-on may: the address, the network rule, the keys.

Blender's rule for extensions: nothing goes out over the network unless the artist allowed
online access (`bpy.app.online_access`); the loopback interface is not the network, so a local
server always works. A LAN or farm server should be reached with CurveZMQ keys; the key files
are stored now and passed to the client as soon as it accepts them.
"""

from __future__ import annotations

import inspect
import ipaddress
from dataclasses import dataclass
from typing import Any

from . import SetupError
from .protocol import client

LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")


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
    host = host_of(address)
    if host in ("",) + LOCAL_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_allowed(address: str, online_access: bool) -> None:
    """Refuse a non-local server while Blender's "Allow Online Access" is off."""
    if not is_local(address) and not online_access:
        raise SetupError(
            f"the cvgen server {address} is on the network, and Blender's online access is off: "
            "allow it in Preferences > System > Network, or use a local server"
        )


def client_options(settings: ServerSettings) -> dict[str, Any]:
    """Keyword arguments for `Client` besides the address.

    Key files are passed as `server_key`/`client_key` once the client takes them; until then a
    request with keys set fails here rather than going out unencrypted behind the artist's back.
    """
    options: dict[str, Any] = {"timeout": settings.timeout}
    keys = {"server_key": settings.server_key, "client_key": settings.client_key}
    if any(keys.values()):
        accepted = inspect.signature(client.Client).parameters
        if not all(name in accepted for name in keys):
            raise SetupError(
                "CurveZMQ key files are set in the cvgen preferences, but this cvgen client cannot use "
                "keys yet: clear them to connect without encryption (only on a network you trust)"
            )
        options.update({name: path for name, path in keys.items() if path})
    return options


def open_client(settings: ServerSettings, online_access: bool) -> Any:
    """A connected `Client`, after the network rule and the key settings are checked."""
    check_allowed(settings.address, online_access)
    return client.Client(settings.address, **client_options(settings))
