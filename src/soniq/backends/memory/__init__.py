"""The memory storage backend: the reference semantics in plain Python, and the test double."""

from __future__ import annotations

from soniq.backends.memory.backend import MemoryBackend

__all__ = ["MemoryBackend"]
