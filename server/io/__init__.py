"""Image I/O: EXR through OpenImageIO, colour through OpenColorIO, video through PyAV."""
