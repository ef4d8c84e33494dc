"""A `cvgen serve` child process, for an artist whose machine is the server.

It runs the Python the preferences name (the one cvgen is installed in: Blender's own Python
has no torch), binds the address the preferences name (loopback only), and keeps its jobs and
its log in the add-on's user folder, never in the add-on's own. It is stopped with the button
or when Blender exits.
"""

from __future__ import annotations

import atexit
import os
import socket
import subprocess
from pathlib import Path

from . import SetupError
from .connection import host_of, is_local


class LocalServer:
    """At most one server process per Blender session."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None
        self.address = ""

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, python: str, address: str, folder: Path) -> None:
        """Start serving on `address` with jobs in `folder/jobs` and the log in `folder/server.log`."""
        if self.running:
            raise SetupError(f"a local cvgen server is already running on {self.address}")
        if not python or not os.access(python, os.X_OK) or os.path.isdir(python):
            raise SetupError(
                f"the Python for the local server ({python or 'not set'}) is not an executable file: "
                "set the path of the Python that has cvgen installed, e.g. .venv/bin/python"
            )
        if not is_local(address) or not host_of(address) or address.endswith(":*"):
            raise SetupError(f"a local server needs a loopback address with a port, like tcp://127.0.0.1:5555, not {address}")
        check_port_free(address)
        folder.mkdir(parents=True, exist_ok=True)
        self.log_path = folder / "server.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [python, "-m", "cvgen.server.cli", "serve", "--bind", address, "--jobs-dir", str(folder / "jobs")],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )
        self.address = address
        atexit.register(self.stop)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, so a running job stops cleanly and resumes with the next server on this folder."""
        atexit.unregister(self.stop)
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def status(self) -> str:
        """One line for the preferences: running, stopped (with the log's last line), or not started."""
        if self.proc is None:
            return "not started"
        code = self.proc.poll()
        if code is None:
            return f"running on {self.address} (process {self.proc.pid})"
        last = self.last_log_line()
        return f"stopped (exit code {code})" + (f": {last}" if last else "")

    def last_log_line(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        lines = self.log_path.read_bytes().decode("utf-8", "replace").strip().splitlines()
        return lines[-1] if lines else ""


def check_port_free(address: str) -> None:
    """Refuse a port another program listens on: the child could not bind it and would die, and
    Connect would then talk to that other program as if it were the local server."""
    host, _, port = address.removeprefix("tcp://").rpartition(":")
    host = host.strip("[]")
    if not port.isdigit():
        raise SetupError(f"a local server needs a port number, like tcp://127.0.0.1:5555, not {address}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server's own bind does
        try:
            probe.bind((host, int(port)))
        except OSError as exc:
            raise SetupError(f"port {port} on {host} is already in use by another program ({(exc.strerror or '').lower()}): "
                             "stop it or choose another port for the local server in the cvgen preferences") from None


#: The session's local server, shared by the preferences' Start and Stop buttons.
LOCAL = LocalServer()
