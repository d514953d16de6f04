"""The installed distribution's version (one place: the package, the CLI and tracing read it)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("soniq")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"
