"""Preferences: which server, the CurveZMQ key files for a LAN or farm server, a local server, the
cvgen command for farm submissions."""

from __future__ import annotations

from pathlib import Path

import bpy
from bpy.props import FloatProperty, StringProperty
from bpy.types import AddonPreferences, Context

from ..core.connection import ServerSettings
from ..core.local_server import LOCAL
from ..core.protocol import client

#: The add-on's module name: `bl_ext.<repository>.cvgen` as an extension, the folder's name in development.
ADDON = __package__.rpartition(".")[0]


class CvgenPreferences(AddonPreferences):
    bl_idname = ADDON

    address: StringProperty(  # type: ignore[valid-type]
        name="Server", default=client.DEFAULT_ADDRESS,
        description="ZeroMQ address of the cvgen server, e.g. tcp://127.0.0.1:5555 or tcp://gpu-box:5555",
    )
    timeout: FloatProperty(  # type: ignore[valid-type]
        name="Timeout", default=10.0, min=0.5, max=600.0, unit="TIME_ABSOLUTE",
        description="seconds of silence after which the server is taken to be gone",
    )
    server_key: StringProperty(  # type: ignore[valid-type]
        name="Server Public Key", subtype="FILE_PATH",
        description="the server's public key file (server.key from `cvgen keys generate`), for a LAN or farm "
                    "server; set it with the Client Key Pair, or leave both empty for a server on this machine",
    )
    client_key: StringProperty(  # type: ignore[valid-type]
        name="Client Key Pair", subtype="FILE_PATH",
        description="this workstation's secret key file (clients/NAME.key_secret from `cvgen keys generate`); "
                    "its public half must be in the server's authorized/ folder",
    )
    server_python: StringProperty(  # type: ignore[valid-type]
        name="Python with cvgen", subtype="FILE_PATH",
        description="the Python in which cvgen is installed (e.g. .venv/bin/python), to start a local server",
    )

    cvgen_command: StringProperty(  # type: ignore[valid-type]
        name="cvgen Command", subtype="FILE_PATH",
        description="the cvgen executable that writes farm jobs; empty: cvgen beside the local server's Python, "
                    "else on PATH",
    )

    def draw(self, context: Context) -> None:
        layout = self.layout
        layout.prop(self, "address")
        layout.prop(self, "timeout")
        keys = layout.column(heading="Encryption")
        keys.prop(self, "server_key")
        keys.prop(self, "client_key")
        box = layout.box()
        box.label(text="Local Server")
        box.prop(self, "server_python")
        row = box.row()
        row.operator("cvgen.server_start", icon="PLAY")
        row.operator("cvgen.server_stop", icon="PAUSE")
        box.label(text=f"Status: {LOCAL.status()}", icon="CHECKMARK" if LOCAL.running else "DOT")
        box = layout.box()
        box.label(text="Render Farm")
        box.prop(self, "cvgen_command")


def preferences(context: Context) -> CvgenPreferences:
    return context.preferences.addons[ADDON].preferences


def server_settings(context: Context) -> ServerSettings:
    prefs = preferences(context)
    return ServerSettings(prefs.address.strip(), prefs.timeout, bpy.path.abspath(prefs.server_key),
                          bpy.path.abspath(prefs.client_key))


def local_server_folder() -> Path:
    """The add-on's own user folder (never its install folder) for the local server's jobs and log."""
    return Path(bpy.utils.extension_path_user(ADDON, create=True)) / "local-server"


classes = (CvgenPreferences,)
