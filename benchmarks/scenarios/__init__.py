"""One module per family of measurements. Each measurement takes a fresh target (the runner
creates and drops it), installs the system's schema itself, and returns a flat dict of metrics."""
