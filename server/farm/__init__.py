"""Job descriptions for real render-farm engines: Open Job Description bundles and OpenCue jobs."""
