"""The cvgen diffusion server: transport, job queue, ops and image I/O."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cvgen")
except PackageNotFoundError:
    __version__ = "0+unknown"
