"""Which ZeroMQ endpoints stay on this machine: the server's rule for binding without keys, and
the hosts' rules for sending paths (not pixels) and for Blender's online-access setting."""

from __future__ import annotations

import ipaddress


def is_loopback(endpoint: str) -> bool:
    """ipc:// and inproc://, and tcp:// on localhost or a loopback address (127/8, ::1)."""
    scheme, _, rest = endpoint.partition("://")
    if scheme in ("ipc", "inproc"):
        return True
    host = rest.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
