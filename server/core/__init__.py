"""Diffusion building blocks shared by the ops: models, latents, inversion, mattes, attention."""
