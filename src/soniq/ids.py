"""Job and worker ids: UUIDv7 strings (time-ordered, so index inserts stay local and ids break
FIFO ties)."""

from __future__ import annotations

import os
import re
import threading
import time
import uuid

__all__ = ["canonical_uuid", "is_uuid", "new_id", "new_ids"]

_CANONICAL = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_lock = threading.Lock()
_last_ms = 0
_counter = 0


def new_id() -> str:
    """A new UUIDv7 (RFC 9562) as a string; monotonic within this process."""
    return new_ids(1)[0]


def new_ids(count: int) -> list[str]:
    """``count`` new UUIDv7 strings, each greater than the one before (one lock, one read of the
    clock and of the OS's randomness for the lot: bulk enqueue makes thousands at once)."""
    global _last_ms, _counter
    stamps = []
    with _lock:
        ms = time.time_ns() // 1_000_000
        for _ in range(count):
            if ms > _last_ms:
                _last_ms = ms
                _counter = int.from_bytes(os.urandom(2), "big") & 0x7FF
            else:
                # Same millisecond (or the clock stepped back): keep order with a 12-bit counter,
                # borrowing the next millisecond when it overflows.
                _counter += 1
                if _counter > 0xFFF:
                    _last_ms += 1
                    _counter = 0
            stamps.append((_last_ms << 80) | (0x7 << 76) | (_counter << 64) | (0b10 << 62))
    entropy = os.urandom(8 * count)
    ids = []
    for index, stamp in enumerate(stamps):
        rand = int.from_bytes(entropy[8 * index:8 * index + 8], "big") & 0x3FFFFFFFFFFFFFFF
        h = f"{stamp | rand:032x}"
        ids.append(f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}")  # str(UUID), no object
    return ids


def is_uuid(value: object) -> bool:
    """True when ``value`` is a string holding a UUID (any version)."""
    if not isinstance(value, str) or len(value) != 36:
        return False
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def canonical_uuid(value: object) -> str | None:
    """``value`` as a lower-case hyphenated UUID string, or None when it holds no UUID. Ids Soniq
    made itself are already canonical and pass without building a ``uuid.UUID``."""
    if not isinstance(value, str):
        return None
    if _CANONICAL.fullmatch(value):
        return value
    return str(uuid.UUID(value)) if is_uuid(value) else None
