"""The cvgen diffusion server: transport, job queue, ops and image I/O."""
