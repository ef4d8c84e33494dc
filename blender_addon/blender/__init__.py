"""The Blender side: properties, preferences, operators and the panel. Thin: it reads Blender's
data into the plain values of `core`, calls `core`, and writes the results back into Blender."""
