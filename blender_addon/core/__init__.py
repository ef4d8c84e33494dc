"""The add-on's logic, free of bpy: what to send, how to talk to the server, where results go.

Nothing here imports bpy, so it runs (and is tested) in any Python with the cvgen protocol;
the `blender` package beside it reads Blender's data into these plain values and back.
"""


class SetupError(Exception):
    """Something the artist must change before a job can be sent; the message says what."""
