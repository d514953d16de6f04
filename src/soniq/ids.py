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
_entropy = b""  # the OS's randomness, read 4 KiB at a time (a read costs more than an id)
_used = 0


def _forget_entropy() -> None:
    """A forked child must not hand out the ids its parent's leftover randomness would make."""
    global _entropy, _used
    _entropy, _used = b"", 0


os.register_at_fork(after_in_child=_forget_entropy)


def _random_bytes(count: int) -> bytes:
    """``count`` bytes of the OS's randomness (call with ``_lock`` held)."""
    global _entropy, _used
    if _used + count > len(_entropy):
        _entropy, _used = os.urandom(max(4096, count)), 0
    chunk = _entropy[_used:_used + count]
    _used += count
    return chunk


def new_id() -> str:
    """A new UUIDv7 (RFC 9562) as a string; monotonic within this process."""
    return new_ids(1)[0]


def new_ids(count: int) -> list[str]:
    """``count`` new UUIDv7 strings, each greater than the one before (one lock and one read of
    the clock for the lot: bulk enqueue makes thousands at once)."""
    global _last_ms, _counter
    ids = []
    with _lock:
        ms = time.time_ns() // 1_000_000
        entropy = _random_bytes(8 * count)
        for start in range(0, 8 * count, 8):
            if ms > _last_ms:
                _last_ms = ms
                _counter = int.from_bytes(_random_bytes(2)) & 0x7FF
            else:
                # Same millisecond (or the clock stepped back): keep order with a 12-bit counter,
                # borrowing the next millisecond when it overflows.
                _counter += 1
                if _counter > 0xFFF:
                    _last_ms += 1
                    _counter = 0
            # 48 bits of milliseconds, version 7, the counter, variant 0b10, 62 random bits.
            value = ((_last_ms << 80) | (0x7 << 76) | (_counter << 64) | (0b10 << 62)
                     | (int.from_bytes(entropy[start:start + 8]) & 0x3FFFFFFFFFFFFFFF))
            h = value.to_bytes(16).hex()
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
