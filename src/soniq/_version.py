"""The version (one place: the build reads it from here, and the package, the CLI and tracing
import it). A constant rather than ``importlib.metadata.version()``, which costs ~30 ms per
process start (``import soniq``, ``soniq --help``)."""

from __future__ import annotations

__version__ = "0.1.0.dev0"
